# The pytorch template runs as generated: build, startup, train, validate on Fashion-MNIST.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
run_fedcli project init p --template pytorch
expect_rc 0
run_fedcli run build --path p
expect_rc 0
# Four clients: this one trains on a quarter of the training set.
run_fedcli run startup --path p --client-index 2 --num-clients 4
expect_rc 0
expect_in out "15000 training"
run_fedcli run train --path p --input p/seed.npz --output u.npz --client-index 2 --num-clients 4
expect_rc 0
expect_in out "examples   15,000"
run_fedcli run validate --path p --input u.npz --output m.json --client-index 2 --num-clients 4
expect_rc 0
"$PYTHON" -c 'import json,sys; m=json.load(open(sys.argv[1])); assert m["test_accuracy"] > 0.4, m' m.json \
    || fail "one epoch should beat 0.4 test accuracy: $(cat m.json)"
