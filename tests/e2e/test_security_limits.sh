# The combiner's limits: a model upload above --max-model-size is refused before a byte
# is stored (an oversized seed at once; an oversized client update fails that client's
# task while the round commits with the other client), and connection attempts above
# --max-connects-per-second are refused until the clients' backoff lets them in.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/federation_project.sh"
cd "$WORK"
write_toy_project proj
# A model of 20,000 float32 values: 80 KB stored plainly, a few hundred bytes deflated.
# The "big" client saves its update uncompressed, the others compressed.
cat >proj/build.py <<'PY'
import sys
import numpy as np
np.savez_compressed(sys.argv[1], **{"0": np.zeros(20000, np.float32)})
PY
cat >proj/train.py <<'PY'
import json, os, sys
import numpy as np
model = np.load(sys.argv[1])
arrays = {k: model[k] + 1 for k in model.files}
save = np.savez if os.environ.get("MODE") == "big" else np.savez_compressed
save(sys.argv[2], **arrays)
json.dump({"num_examples": 100}, open(sys.argv[2] + "-metadata", "w"))
PY
run_fedcli run build --path proj
expect_rc 0
"$PYTHON" -c 'import numpy as np; np.savez("big.npz", a=np.zeros(20000, np.float32))'

start_combiner --heartbeat-interval 0.5 --max-model-size 64K --max-connects-per-second 1
run_fedcli model push big.npz
expect_rc 1
expect_in err "is above the combiner's limit of 64 KiB for a model (--max-model-size)"
run_fedcli model push proj/seed.npz
expect_rc 0

# Three clients dial at once; the bucket holds two attempts, then one per second.
start_client good1 --path proj
start_client good2 --path proj
start_client big --path proj --env MODE=big
wait_clients_idle 3 60
grep -q "refused: more than 1 per second" "$WORK/combiner.log" ||
    fail "no connection attempt was refused by the rate limit"

run_fedcli session start --rounds 1 --min-clients 2 --round-timeout 60
expect_rc 0
expect_in out "2 updates (200 examples), 1 rejected"
check_status '
r = s["rounds"][-1]
assert r["state"] == "committed", r
reasons = {x["client_name"]: x["reason"] for x in r["rejected"]}
assert list(reasons) == ["big"], reasons
assert "above the combiner" in reasons["big"] and "64 KiB" in reasons["big"], reasons
'
