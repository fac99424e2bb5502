# The local workflow a data scientist starts with, on the numpy template:
# init -> run build -> run train -> run validate -> run predict -> package create/inspect/extract.
source "$(dirname "$0")/lib.sh"
cd "$WORK"

run_fedcli project init p --template numpy
expect_rc 0

run_fedcli run build --path p
expect_rc 0
expect_in out "build: ok"
[[ -f p/seed.npz ]] || fail "build did not write p/seed.npz"

# Paths with spaces, round settings passed to the entry point through INPUT-metadata.
mkdir "out dir"
run_fedcli run train --path p --input p/seed.npz --output "out dir/update 1.npz" \
    --settings '{"epochs": 2, "learning_rate": 0.05}' --client-index 1 --num-clients 2
expect_rc 0
expect_in out "examples   3,000"
[[ -f "out dir/update 1.npz-metadata" ]] || fail "no metadata next to the update"
"$PYTHON" - "$WORK/p/seed.npz" "$WORK/out dir/update 1.npz" <<'PY' || fail "update does not match the seed's layout"
import json, sys, numpy as np
seed, update = np.load(sys.argv[1]), np.load(sys.argv[2])
assert seed.files == update.files == ["0", "1"], (seed.files, update.files)
for k in seed.files:
    assert seed[k].shape == update[k].shape and seed[k].dtype == update[k].dtype
    assert not np.array_equal(seed[k], update[k]) or k == "1"
meta = json.load(open(sys.argv[2] + "-metadata"))
assert meta["num_examples"] == 3000 and meta["epochs"] == 2, meta
assert json.load(open(sys.argv[1] + "-metadata")) == {"epochs": 2, "learning_rate": 0.05}
PY

run_fedcli run validate --path p --input "out dir/update 1.npz" --output metrics.json
expect_rc 0
expect_in out "test_accuracy"
"$PYTHON" -c 'import json,sys; m=json.load(open(sys.argv[1])); assert 0.5 < m["test_accuracy"] <= 1, m' metrics.json \
    || fail "validation accuracy out of range: $(cat metrics.json)"

run_fedcli run predict --path p --input "out dir/update 1.npz" --output predictions.json
expect_rc 0

# The entry point's log is kept, and the package leaves logs, data and models out.
[[ -s p/.fedcli/logs/train.log ]] || fail "no train log"
run_fedcli package create --path p -o pkg.tgz
expect_rc 0
expect_in out "sha256"
first=$(sha256sum pkg.tgz | cut -d' ' -f1)
touch p/*.py
run_fedcli package create --path p -o pkg2.tgz
second=$(sha256sum pkg2.tgz | cut -d' ' -f1)
[[ $first == "$second" ]] || fail "package is not deterministic: $first vs $second"
run_fedcli package inspect pkg.tgz --json
expect_rc 0
"$PYTHON" - "$WORK/out" <<'PY' || fail "package content: $(cat "$WORK/out")"
import json, sys
doc = json.load(open(sys.argv[1]))
paths = [e["path"] for e in doc["entries"]]
assert "train.py" in paths and "fedcli.yaml" in paths, paths
for p in paths:
    assert not p.startswith((".fedcli", "data/")) and not p.endswith(".npz"), p
assert paths == sorted(paths), paths
PY
run_fedcli package extract pkg.tgz unpacked
expect_rc 0
cmp p/train.py unpacked/train.py || fail "extracted train.py differs"
run_fedcli project validate --path unpacked
expect_rc 0

# Contract violations are reported with the entry point and the reason.
cat > p/train.py <<'PY'
import sys
import fedcli_sdk as sdk
sdk.save_parameters([[1.0, 2.0]], sys.argv[2])
sdk.save_metadata({"num_examples": 0}, sys.argv[2])
PY
run_fedcli run train --path p --input p/seed.npz --output bad.npz
expect_rc 1
expect_in err "fedcli: error:"
expect_in err "train"

cat > p/train.py <<'PY'
import sys
print("about to fail", flush=True)
sys.exit(3)
PY
run_fedcli run train --path p --input p/seed.npz --output bad.npz
expect_rc 1
expect_in err "about to fail"
expect_in err "3"
