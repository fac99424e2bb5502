# The entry-point contract both Fashion-MNIST examples keep, sourced by test_example_*.sh
# after lib.sh. Expects, in $WORK: seed.npz (the CNN) and mlp.npz (the MLP) built with
# FEDCLI_SEED=3, FEDCLI_PARTITION=dirichlet, FEDCLI_ALPHA=0.5, FEDCLI_MAX_EXAMPLES=600, and
# the array `flags` (--path ... --client-index 1 --num-clients 4 ...).
# Leaves seed-update.npz and mlp-update.npz (round 2) for the caller.
check_example_contract() {
    run_fedcli run startup "${flags[@]}"
    expect_rc 0
    expect_in out "client 1/4 (dirichlet alpha 0.5, seed 3): 600 training examples"

    # train + validate on the subset, for each model.
    local model
    for model in seed mlp; do
        run_fedcli run train "${flags[@]}" --input $model.npz --output $model-update.npz \
            --round 2 --settings '{"epochs": 1, "batch_size": 32}'
        expect_rc 0
        expect_in out "examples   600"
        run_fedcli run validate "${flags[@]}" --input $model-update.npz --output $model-metrics.json
        expect_rc 0
        "$PYTHON" -c 'import json, sys
m = json.load(open(sys.argv[1]))
for key in ("training_loss", "training_accuracy", "test_loss", "test_accuracy"):
    assert isinstance(m[key], float), (key, m)
assert m["training_examples"] == 600 and m["test_examples"] == 600, m
assert m["training_accuracy"] > 0.15 and 0 < m["test_accuracy"] <= 1, m' $model-metrics.json ||
            fail "validate metrics: $(cat $model-metrics.json)"
    done
    "$PYTHON" -c 'import json
cnn, mlp = (json.load(open(f + "-update.npz-metadata")) for f in ("seed", "mlp"))
assert cnn["model"] == "cnn" and cnn["optimizer"] == "sgd" and cnn["learning_rate"] == 0.02, cnn
assert mlp["model"] == "mlp" and mlp["optimizer"] == "adam" and mlp["learning_rate"] == 0.002, mlp
# Round 2: the learning rates have shrunk once (x0.8).
assert cnn["lr_decay"] == 0.8 and abs(cnn["round_learning_rate"] - 0.016) < 1e-12, cnn
assert mlp["lr_decay"] == 0.8 and abs(mlp["round_learning_rate"] - 0.0016) < 1e-12, mlp
assert cnn["num_examples"] == 600 and cnn["round"] == 2 and cnn["steps"] == 19, cnn' ||
        fail "train metadata: $(cat seed-update.npz-metadata mlp-update.npz-metadata)"

    # Reproducible bit for bit; another round shuffles differently.
    run_fedcli run train "${flags[@]}" --input seed.npz --output again.npz --round 2 \
        --settings '{"epochs": 1, "batch_size": 32}'
    expect_rc 0
    run_fedcli model diff again.npz seed-update.npz
    expect_rc 0
    expect_in out "identical: 0 of 206,922 values differ"
    run_fedcli run train "${flags[@]}" --input seed.npz --output round3.npz --round 3
    expect_rc 0
    run_fedcli model diff round3.npz seed-update.npz
    expect_rc 0
    if grep -q "identical: 0 of" "$WORK/out"; then fail "round 3 trained exactly like round 2"; fi

    # The learning-rate schedule counts the session's rounds, which the combiner sends as
    # session_round (round ids count on across sessions).
    run_fedcli run train "${flags[@]}" --input mlp.npz --output first.npz --round 12 \
        --settings '{"session_round": 1}'
    expect_rc 0
    "$PYTHON" -c 'import json, sys
m = json.load(open(sys.argv[1]))
assert m["round"] == 12 and m["round_learning_rate"] == 0.002, m' first.npz-metadata ||
        fail "session_round: $(cat first.npz-metadata)"
    run_fedcli run train "${flags[@]}" --input mlp.npz --output decay.npz \
        --settings '{"lr_decay": 1.5}'
    expect_rc 1
    expect_in err "0 < lr_decay <= 1"
}
