# A 512 MiB model (float32) through a combiner and 2 clients for one round with an "echo"
# train (copies its input, no ML): the round commits, the result equals the seed, and the
# combiner's peak resident memory (VmHWM) stays within 2 x model + 64 MiB. Prints the figure.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
mkdir echo
cat >echo/fedcli.yaml <<'YAML'
name: echo
entry_points:
  train:
    command: python3 echo.py
YAML
cat >echo/echo.py <<'PY'
import json, shutil, sys
shutil.copyfile(sys.argv[1], sys.argv[2])
json.dump({"num_examples": 10}, open(sys.argv[2] + "-metadata", "w"))
PY
"$PYTHON" -c '
import numpy as np
np.savez("seed.npz", **{"0": np.full(128 * 1024 * 1024, 0.5, np.float32), "1": np.arange(10, dtype=np.float32)})'
model_bytes=$(stat -c %s seed.npz)
((model_bytes >= 500 * 1000 * 1000)) || fail "seed is only $model_bytes bytes"

start_combiner
run_fedcli model push seed.npz
expect_rc 0
start_client e1 --path echo
start_client e2 --path echo
wait_clients_idle 2
run_fedcli session start --rounds 1 --min-clients 2 --round-timeout 300
expect_rc 0
expect_in out "2 updates (20 examples), 0 rejected"
peak_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$COMBINER_PID/status")
run_fedcli model pull latest -o latest.npz
expect_rc 0
run_fedcli model diff seed.npz latest.npz
expect_rc 0
expect_in out "identical"

limit_kb=$((2 * model_bytes / 1024 + 64 * 1024))
echo "combiner peak RSS (VmHWM) $((peak_kb / 1024)) MiB for a $((model_bytes / 1024 / 1024)) MiB model; limit $((limit_kb / 1024)) MiB"
((peak_kb <= limit_kb)) || fail "combiner VmHWM ${peak_kb} kB exceeds 2 x model + 64 MiB = ${limit_kb} kB"
