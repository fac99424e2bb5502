# A project written for FEDn runs unchanged: fedn.yaml, `python` (not python3) commands,
# python_env.yaml, numpyhelper-style parameter files, "-metadata" files and .fednignore.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
mkdir -p proj/client proj/data
cat > proj/fedn.yaml <<'YAML'
python_env: python_env.yaml
entry_points:
  build:
    command: python model.py
  startup:
    command: python client/data.py
  train:
    command: python client/train.py
  validate:
    command: python client/validate.py
YAML
cat > proj/python_env.yaml <<'YAML'
name: fedn-style
build_dependencies:
  - pip
dependencies:
  - numpy
YAML
cat > proj/.fednignore <<'IGN'
data
*.npz
IGN
echo "local data" > proj/data/local.csv
# FEDn's numpyhelper conventions: keys "0".."N-1", metadata written to OUT-metadata.
cat > proj/helper.py <<'PY'
import json
import numpy as np
def save(weights, path):
    np.savez_compressed(path, **{str(i): w for i, w in enumerate(weights)})
def load(path):
    a = np.load(path)
    return [a[str(i)] for i in range(len(a.files))]
def save_metadata(metadata, filename):
    with open(filename + "-metadata", "w") as outfile:
        json.dump(metadata, outfile)
PY
cat > proj/model.py <<'PY'
import sys
import numpy as np
from helper import save
# FEDn's build writes its seed next to the project; fedcli passes the output path.
save([np.ones((4, 3), np.float32), np.zeros(3, np.float32)], sys.argv[1] if len(sys.argv) > 1 else "seed.npz")
PY
cat > proj/client/data.py <<'PY'
import os
print("data split", os.environ.get("FEDN_DATA_PATH"), os.environ.get("FEDN_NUM_DATA_SPLITS"))
PY
cat > proj/client/train.py <<'PY'
import os, sys
sys.path.insert(0, os.getcwd())
import json
from helper import load, save, save_metadata
in_path, out_path = sys.argv[1], sys.argv[2]
settings = json.load(open(in_path + "-metadata"))
weights = [w * 0.5 for w in load(in_path)]
save(weights, out_path)
save_metadata({"num_examples": 42, "training_metadata": {"epochs": settings.get("epochs", 1)}}, out_path)
PY
cat > proj/client/validate.py <<'PY'
import os, sys, json
sys.path.insert(0, os.getcwd())
from helper import load
w = load(sys.argv[1])
json.dump({"training_loss": float(w[0].mean()), "test_accuracy": 0.5}, open(sys.argv[2], "w"))
PY

run_fedcli project validate --path proj
expect_rc 0
expect_in out "fedn.yaml"

export FEDCLI_CACHE_DIR="$WORK/cache"
run_fedcli run build --path proj
expect_rc 0
run_fedcli run startup --path proj --client-index 0 --num-clients 3 --data-path proj/data
expect_rc 0
expect_in out "data split $WORK/proj/data 3"
run_fedcli run train --path proj --input proj/seed.npz --output update.npz --settings '{"epochs": 3}'
expect_rc 0
expect_in out "examples   42"
"$PYTHON" -c 'import numpy as np,sys; f=np.load(sys.argv[1]); assert f.files==["0","1"] and (f["0"]==0.5).all()' update.npz \
    || fail "update content"
run_fedcli run validate --path proj --input update.npz --output val.json
expect_rc 0
expect_in out "training_loss"
# The venv was made once, from Debian's python, and reused.
[[ -n $(ls "$WORK/cache") ]] || fail "python_env venv was not created under FEDCLI_CACHE_DIR"

run_fedcli package create --path proj -o fedn.tgz
expect_rc 0
run_fedcli package inspect fedn.tgz
expect_rc 0
expect_in out "client/train.py"
if grep -qE ' data/| seed\.npz$' "$WORK/out"; then fail ".fednignore not honoured: $(cat "$WORK/out")"; fi
