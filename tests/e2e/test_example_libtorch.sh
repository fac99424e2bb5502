# examples/fashion-mnist-libtorch through the real CLI: entry.sh compiles the program once
# into the cache (with fedcli_torch taken from the fedcli under test), then build (both
# models), startup, train on a small subset, validate, predict; reruns are bit-identical;
# the partition's promises; the PyTorch example gives the same seed model and the same
# updates bit for bit; a model of another architecture is refused with the array named;
# and a 2-client `fedcli local` federation runs it through the daemons.
# Skipped (exit 77) where Debian's dataset-fashion-mnist is missing; CMake disables it where
# LibTorch is missing.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/fashion_mnist.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
EXAMPLE=$ROOT/examples/fashion-mnist-libtorch
DATASET=${FEDCLI_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
for file in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz \
    t10k-labels-idx1-ubyte.gz; do
    if [[ ! -f $DATASET/$file ]]; then
        echo "SKIP: $DATASET/$file is missing (Debian package dataset-fashion-mnist)"
        exit 77
    fi
done

cd "$WORK"
cp -r "$EXAMPLE" p
rm -rf p/data p/.fedcli p/seed.npz
export FEDCLI_CACHE_DIR=$WORK/cache
export FEDCLI_PARTITION=dirichlet FEDCLI_ALPHA=0.5 FEDCLI_SEED=3 FEDCLI_MAX_EXAMPLES=600
flags=(--path p --client-index 1 --num-clients 4)

# build: the first entry point compiles the program into the cache, once.
run_fedcli run build "${flags[@]}" --output seed.npz
expect_rc 0
expect_in err "entry.sh: compiling the entry points into $WORK/cache/libtorch-entry/"
expect_in out "cnn, 206922 parameters, seed 3"
[[ $(ls "$WORK/cache/libtorch-entry" | wc -l) -eq 1 ]] || fail "one compiled program expected"
FEDCLI_MODEL=mlp run_fedcli run build "${flags[@]}" --output mlp.npz
expect_rc 0
expect_in out "mlp, 52650 parameters"
if grep -q "compiling" "$WORK/err"; then fail "the second run compiled again: $(cat "$WORK/err")"; fi
FEDCLI_MODEL=resnet run_fedcli run build "${flags[@]}" --output x.npz
expect_rc 1
expect_in err "FEDCLI_MODEL=resnet: expected cnn or mlp"

check_example_contract

run_fedcli run predict "${flags[@]}" --input seed-update.npz --output predictions.json
expect_rc 0
"$PYTHON" -c 'import json, sys
p = json.load(open(sys.argv[1]))
assert p["count"] == 100 and len(p["predictions"]) == 100 and set(p["predictions"]) <= set(range(10)), p' \
    predictions.json || fail "predictions: $(cat predictions.json)"

# A model of another architecture is refused: the file and what differs are named.
run_fedcli project init other --template numpy
run_fedcli run build --path other --python "$PYTHON" --output other.npz
expect_rc 0
run_fedcli run validate "${flags[@]}" --input other.npz --output other.json
expect_rc 1
expect_in err "other.npz: the parameter file has 2 arrays, the model has 6"
"$PYTHON" -c 'import numpy as np
f = np.load("mlp.npz")
arrays = {k: f[k] for k in f.files}
arrays["2"] = np.zeros((32, 60), np.float32)
np.savez("bad.npz", **arrays)'
run_fedcli run validate "${flags[@]}" --input bad.npz --output bad.json
expect_rc 1
expect_in err 'bad.npz: array "2" (fc2.weight) has shape [32, 60], the model has [32, 64]'

# The partition: every client computes the same split; the shares are disjoint and cover
# the training set; Dirichlet skews the labels, IID does not.
unset FEDCLI_MAX_EXAMPLES
for scheme in iid dirichlet; do
    for index in 0 1 2 3; do
        FEDCLI_PARTITION=$scheme run_fedcli run startup --path p --client-index $index \
            --num-clients 4 --data-path "shares-$scheme"
        expect_rc 0
    done
done
"$PYTHON" - <<'PY' || fail "partition properties"
import glob
import numpy as np
skews = {}
for scheme in ("iid", "dirichlet"):
    files = sorted(glob.glob("shares-%s/client-*-of-4-*.npz" % scheme))
    assert len(files) == 4, files
    shares = [np.load(f)["index"] for f in files]
    counts = np.array([np.load(f)["label_counts"] for f in files])
    joined = np.concatenate(shares)
    assert len(joined) == 60000 and np.array_equal(np.sort(joined), np.arange(60000)), scheme
    assert (counts.sum(axis=0) == 6000).all(), counts  # Fashion-MNIST: 6,000 per class
    mix = counts / counts.sum(axis=1, keepdims=True)
    skews[scheme] = np.mean(0.5 * np.abs(mix - 0.1).sum(axis=1))
assert skews["iid"] < 0.02 and skews["dirichlet"] > 0.2, skews
print("partition ok: label skew %s" % skews)
PY
FEDCLI_PARTITION=dirichlet run_fedcli run startup --path p --client-index 0 --num-clients 4 \
    --data-path again
cmp -s again/client-0-of-4-dirichlet-alpha0.5-seed3.npz \
    shares-dirichlet/client-0-of-4-dirichlet-alpha0.5-seed3.npz || fail "the split is not deterministic"
FEDCLI_SEED=4 FEDCLI_PARTITION=dirichlet run_fedcli run startup --path p --client-index 0 \
    --num-clients 4 --data-path again
cmp -s again/client-0-of-4-dirichlet-alpha0.5-seed4.npz \
    shares-dirichlet/client-0-of-4-dirichlet-alpha0.5-seed3.npz && fail "the seed does not change the split"
export FEDCLI_MAX_EXAMPLES=600

# The PyTorch example computes the same split and trains the same way: the same seed model,
# and the same update bit for bit from the same settings. (Needs torch for $PYTHON.)
if "$PYTHON" -c 'import torch' 2>/dev/null; then
    cp -r "$ROOT/examples/fashion-mnist-pytorch" py
    rm -rf py/data py/.fedcli
    pyflags=(--path py --python "$PYTHON" --client-index 1 --num-clients 4)
    run_fedcli run build "${pyflags[@]}" --output py-seed.npz
    expect_rc 0
    run_fedcli model diff py-seed.npz seed.npz
    expect_rc 0
    expect_in out "identical: 0 of 206,922 values differ"
    for model in seed mlp; do
        run_fedcli run train "${pyflags[@]}" --input $model.npz --output py-$model-update.npz \
            --round 2 --settings '{"epochs": 1, "batch_size": 32}'
        expect_rc 0
        run_fedcli model diff py-$model-update.npz $model-update.npz
        expect_rc 0
        expect_in out "identical: 0 of"
    done
else
    echo "note: $PYTHON has no torch; the comparison with the PyTorch example is skipped"
fi

# Through the daemons: fedcli local packages the project (without the compiled program),
# and each client compiles nothing new: the program is in the shared cache already.
run_fedcli local --path p --clients 2 --rounds 2 --partition dirichlet --alpha 0.5 --seed 3 \
    --env FEDCLI_MAX_EXAMPLES=600 --out fl
expect_rc 0
"$PYTHON" -c 'import csv
rows = [r for r in csv.DictReader(open("fl/metrics.csv")) if r["metric"] == "test_accuracy"]
assert [(r["session_round"], r["clients"]) for r in rows] == [("1", "2"), ("2", "2")], rows
assert all(0.1 < float(r["weighted_mean"]) <= 1 for r in rows), rows' ||
    fail "fedcli local metrics: $(cat fl/metrics.csv)"
[[ $(ls "$WORK/cache/libtorch-entry" | wc -l) -eq 1 ]] || fail "a client compiled its own program"
