# write_toy_project DIR: a small numpy project for the federation tests. train.py adds
# (client number + 1) to every value and reports 100 * (client number + 1) examples; what
# it does besides is chosen per client through the environment (--env MODE=...):
#   MODE=slow   sleeps 600 s before training      MODE=fail   exits with code 3
#   MODE=shape  writes an array of another shape  MODE=nan    writes a NaN
#   MODE=bigmeta  writes 2 MiB of metadata
# CLIENT_NUMBER (default FEDCLI_CLIENT_INDEX, else 0) sets the client's number; SLEEP=S sleeps S seconds before
# training (rounds that last a while).
write_toy_project() {
    mkdir -p "$1"
    cat >"$1/fedcli.yaml" <<'YAML'
name: toy
entry_points:
  build:
    command: python3 build.py
  train:
    command: python3 train.py
  validate:
    command: python3 validate.py
YAML
    cat >"$1/build.py" <<'PY'
import sys
import numpy as np
np.savez(sys.argv[1], **{"0": np.zeros((4, 3), np.float32), "1": np.zeros(3, np.float32)})
PY
    cat >"$1/train.py" <<'PY'
import json, os, sys, time
import numpy as np
mode = os.environ.get("MODE", "good")
number = int(os.environ.get("CLIENT_NUMBER", os.environ.get("FEDCLI_CLIENT_INDEX", "0")))
print("train: mode %s, client %d" % (mode, number), flush=True)
if mode == "slow":
    time.sleep(600)
time.sleep(float(os.environ.get("SLEEP", "0")))
if mode == "fail":
    print("about to fail on purpose", flush=True)
    sys.exit(3)
model = np.load(sys.argv[1])
arrays = {k: model[k] + (number + 1) for k in model.files}
if mode == "shape":
    arrays["0"] = np.zeros((5, 3), np.float32)
if mode == "nan":
    arrays["1"][1] = np.nan
np.savez(sys.argv[2], **arrays)
metadata = {"num_examples": 100 * (number + 1)}
if mode == "bigmeta":
    metadata["padding"] = "x" * (2 << 20)
json.dump(metadata, open(sys.argv[2] + "-metadata", "w"))
PY
    cat >"$1/validate.py" <<'PY'
import json, sys
import numpy as np
model = np.load(sys.argv[1])
json.dump({"mean": float(np.mean(model["0"]))}, open(sys.argv[2], "w"))
PY
}

# Writes the toy project into ./proj, builds its seed, starts a combiner (fast heartbeats)
# and makes the seed its model: what every toy-project federation test starts with.
start_toy_federation() {
    write_toy_project proj
    run_fedcli run build --path proj
    expect_rc 0
    start_combiner --heartbeat-interval 0.5
    run_fedcli model push proj/seed.npz
    expect_rc 0
}
