# `fedcli model inspect` on files numpy wrote, checked against numpy and hashlib.
source "$(dirname "$0")/lib.sh"

"$PYTHON" - "$WORK" <<'PY'
import sys, numpy as np
work = sys.argv[1]
np.savez(f"{work}/model.npz", np.random.default_rng(1).standard_normal((128, 784)).astype(np.float32),
         np.zeros(128, np.float32), np.ones((10, 128), np.float64), np.arange(10, dtype=np.uint8))
np.savez_compressed(f"{work}/named.npz", **{"conv.weight": np.ones((8, 1, 3, 3), np.float16),
                                           "conv.bias": np.zeros(8, np.int32)})
PY

for file in model.npz named.npz; do
    run_fedcli model inspect "$WORK/$file" --json
    expect_rc 0
    expect_empty err
    "$PYTHON" - "$WORK/$file" "$WORK/out" <<'PY' || fail "JSON for $file does not match numpy"
import hashlib, json, os, sys, numpy as np
path, output = sys.argv[1], sys.argv[2]
report = json.load(open(output))
loaded = np.load(path)
expected_keys = ["file", "sha256", "file_bytes", "key_convention", "arrays",
                 "total_parameters", "total_bytes"]
assert list(report) == expected_keys, list(report)
assert report["file"] == path
assert report["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
assert report["file_bytes"] == os.path.getsize(path)
names = [a["name"] for a in report["arrays"]]
assert sorted(names) == sorted(loaded.files), (names, loaded.files)
for entry in report["arrays"]:
    array = loaded[entry["name"]]
    assert entry["dtype"] == str(array.dtype), (entry, array.dtype)
    assert entry["shape"] == list(array.shape), (entry, array.shape)
    assert entry["parameters"] == array.size
    assert entry["bytes"] == array.nbytes
assert report["total_parameters"] == sum(loaded[k].size for k in loaded.files)
assert report["total_bytes"] == sum(loaded[k].nbytes for k in loaded.files)
if path.endswith("model.npz"):
    assert names == ["arr_0", "arr_1", "arr_2", "arr_3"], names
    assert report["key_convention"] == "numpy"
else:
    assert report["key_convention"] == "named"
PY
done

run_fedcli model inspect "$WORK/model.npz"
expect_rc 0
expect_in out "[128, 784]"
expect_in out "4 arrays"

echo "not a model" >"$WORK/notes.npz"
run_fedcli model inspect "$WORK/notes.npz"
expect_rc 1
expect_in err "fedcli: error: "
expect_in err "notes.npz"

head -c 5000 "$WORK/model.npz" >"$WORK/truncated.npz"
run_fedcli model inspect "$WORK/truncated.npz" --json
expect_rc 1
expect_empty out
expect_in err "truncated.npz"

run_fedcli model inspect "$WORK/missing.npz"
expect_rc 1
expect_in err "missing.npz"

echo "ok"
