# The libtorch template runs as generated: the first entry point compiles main.cpp against
# LibTorch, then build, train and validate run as C++ programs.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
run_fedcli project init p --template libtorch
expect_rc 0
run_fedcli run build --path p
expect_rc 0
expect_in out "build: ok"
run_fedcli run train --path p --input p/seed.npz --output u.npz --client-index 0 --num-clients 4
expect_rc 0
expect_in out "examples   15,000"
run_fedcli run validate --path p --input u.npz --output m.json --client-index 0 --num-clients 4
expect_rc 0
"$PYTHON" -c 'import json,sys; m=json.load(open(sys.argv[1])); assert m["test_accuracy"] > 0.4, m' m.json \
    || fail "one epoch should beat 0.4 test accuracy: $(cat m.json)"
# The seed model is an ordinary numpy-readable npz in state_dict order.
"$PYTHON" -c 'import numpy as np,sys; f=np.load(sys.argv[1]); assert [f[k].shape for k in f.files]==[(64,784),(64,),(32,64),(32,),(10,32),(10,)], [f[k].shape for k in f.files]' p/seed.npz \
    || fail "seed layout"
