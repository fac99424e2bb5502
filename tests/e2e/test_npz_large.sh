# zip64 for real: a parameter file over 4 GiB with a member over 4 GiB, written by numpy,
# inspected and verified by fedcli, pushed through `model aggregate` (read + write), and
# the result read back by numpy. Needs ~13 GB of disk and ~10 GB of memory; labelled
# "large" and left out of `make test` (run it with `make test-large`).
source "$(dirname "$0")/lib.sh"
cd "$WORK"
"$PYTHON" - <<'PY'
import numpy as np
big = np.zeros((4 << 30) + 4096, dtype=np.uint8)   # one member over 4 GiB
big[::1 << 20] = 7
big[-1] = 9
np.savez("big.npz", **{"0": big, "1": np.arange(10, dtype=np.float32)})
PY
[[ $(stat -c %s big.npz) -gt 4294967296 ]] || fail "fixture is not over 4 GiB"

run_fedcli model inspect big.npz --json
expect_rc 0
"$PYTHON" -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["arrays"][0]["bytes"] == (4 << 30) + 4096, d
assert d["arrays"][1]["shape"] == [10], d
' "$WORK/out" || fail "inspect of the large file: $(cat "$WORK/out")"

run_fedcli model aggregate --global big.npz --output out.npz big.npz:1
expect_rc 0
rm -f big.npz
"$PYTHON" -c '
import numpy as np
f = np.load("out.npz")
a = f["0"]
assert a.shape == ((4 << 30) + 4096,) and a[0] == 7 and a[1 << 20] == 7 and a[1] == 0 and a[-1] == 9
assert (f["1"] == np.arange(10, dtype=np.float32)).all()
' || fail "numpy cannot read fedcli's zip64 output"
