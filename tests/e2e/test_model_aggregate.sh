# Offline aggregation through the real binary: FedAvg weighted by num_examples (from FILE:N
# and from FILE-metadata), a mismatched and a NaN update rejected while the rest is used,
# server state for FedAdam, and model diff.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
"$PYTHON" - <<'PY'
import json, numpy as np
g = {"0": np.zeros((2, 3), np.float32), "1": np.zeros(3, np.float32), "2": np.array(5, np.int64)}
np.savez("global.npz", **g)
np.savez("u1.npz", **{"0": np.full((2, 3), 1.0, np.float32), "1": np.full(3, 2.0, np.float32), "2": np.array(7, np.int64)})
np.savez("u2.npz", **{"0": np.full((2, 3), 4.0, np.float32), "1": np.full(3, 8.0, np.float32), "2": np.array(6, np.int64)})
json.dump({"num_examples": 300}, open("u2.npz-metadata", "w"))
np.savez("wrong_shape.npz", **{"0": np.ones((3, 2), np.float32), "1": np.ones(3, np.float32), "2": np.array(1, np.int64)})
bad = np.ones((2, 3), np.float32); bad[1, 2] = np.nan
np.savez("nan.npz", **{"0": bad, "1": np.ones(3, np.float32), "2": np.array(1, np.int64)})
PY

run_fedcli model aggregate --global global.npz --output new.npz u1.npz:100 u2.npz wrong_shape.npz:50 nan.npz:10
expect_rc 0
expect_in out "2 used, 2 rejected; 400 examples"
expect_in out "[3, 2]"
expect_in out "NaN"
"$PYTHON" -c '
import numpy as np
f = np.load("new.npz")
assert np.allclose(f["0"], (100 * 1 + 300 * 4) / 400), f["0"]
assert np.allclose(f["1"], (100 * 2 + 300 * 8) / 400), f["1"]
assert f["2"] == 7, f["2"]  # integer counters: elementwise max, never averaged
' || fail "fedavg result is wrong"

run_fedcli model aggregate --global global.npz --output none.npz wrong_shape.npz nan.npz
expect_rc 1
expect_in err "fedcli: error:"
[[ ! -e none.npz ]] || fail "an aggregation with no usable update wrote an output"

run_fedcli model aggregate --aggregator fedadam --config lr=0.1 --global global.npz \
    --output adam.npz --state-out state.npz u1.npz:1 u2.npz:1 --json
expect_rc 0
"$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["used"]==2 and d["aggregator"]=="fedadam", d' "$WORK/out" \
    || fail "json summary: $(cat "$WORK/out")"
[[ -s state.npz ]] || fail "no server state written"

run_fedcli model aggregate --aggregator fedavg --config lr=0.1 --global global.npz --output x.npz u1.npz
expect_rc 1
expect_in err "fedavg has no setting 'learning_rate'"

run_fedcli model diff global.npz new.npz --json
expect_rc 0
"$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert not d["identical"] and d["differing"]==10, d' "$WORK/out" \
    || fail "diff json: $(cat "$WORK/out")"
run_fedcli model diff new.npz new.npz
expect_rc 0
expect_in out "identical"
