# The Python helper SDK the templates ship (templates/sdk/fedcli_sdk.py), against numpy and
# FEDn's conventions: key order, list vs dict parameters, metadata and settings files.
source "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$WORK"
cp "$root/templates/sdk/fedcli_sdk.py" .
"$PYTHON" - <<'PY' || fail "fedcli_sdk behaves differently from its documentation"
import json, os, zipfile, io
import numpy as np
import fedcli_sdk as sdk

# Lists get FEDn's keys "0".."N-1"; the file is what np.load reads, with no ".npz" appended.
arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.int64)]
sdk.save_parameters(arrays, "model")
assert os.path.exists("model") and not os.path.exists("model.npz")
assert np.load("model").files == ["0", "1"]
back = sdk.load_parameters("model")
assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays, back))

# Numbered keys come back in index order even when the zip lists them otherwise.
with zipfile.ZipFile("shuffled.npz", "w") as archive:
    for i in [10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9]:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.full(1, i, np.int32))
        archive.writestr("%d.npy" % i, buffer.getvalue())
assert [int(a[0]) for a in sdk.load_parameters("shuffled.npz")] == list(range(11))

# Dicts keep their names and order.
sdk.save_parameters({"fc.weight": arrays[0], "fc.bias": arrays[1]}, "named.npz")
assert list(sdk.load_named_parameters("named.npz")) == ["fc.weight", "fc.bias"]

# Metadata goes to "<path>-metadata" (FEDn's save_metadata), settings are read from there.
sdk.save_metadata({"num_examples": 12}, "update.npz")
assert json.load(open("update.npz-metadata")) == {"num_examples": 12}
assert sdk.load_settings("update.npz") == {"num_examples": 12}
assert sdk.load_settings("missing.npz") == {}

sdk.save_metrics({"test_accuracy": 0.5}, "metrics.json")
assert json.load(open("metrics.json")) == {"test_accuracy": 0.5}

# No temporary files are left behind.
assert not [f for f in os.listdir(".") if f.startswith(".")], os.listdir(".")

os.environ.update(FEDCLI_CLIENT_INDEX="2", FEDCLI_NUM_CLIENTS="5", FEDN_DATA_PATH="/data/x")
assert (sdk.client_index(), sdk.num_clients(), sdk.data_path()) == (2, 5, "/data/x")
PY

# What the SDK writes, fedcli reads: same arrays, numbered convention.
run_fedcli model inspect model --json
expect_rc 0
expect_in out '"key_convention":"numbered"'
