# examples/fashion-mnist-pytorch through the real CLI: build (both models), startup, one
# train on a small subset, validate, and the partition's promises (every client computes the
# same split; shares are disjoint and cover the training set; Dirichlet skews the labels).
# Skipped (exit 77, ctest SKIP_RETURN_CODE) where Debian's dataset-fashion-mnist or torch
# for $PYTHON is missing.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/fashion_mnist.sh"
EXAMPLE=$(cd "$(dirname "$0")/../../examples/fashion-mnist-pytorch" && pwd)
DATASET=${FEDCLI_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}

skip() {
    echo "SKIP: $*"
    exit 77
}
for file in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz \
    t10k-labels-idx1-ubyte.gz; do
    [[ -f $DATASET/$file ]] || skip "$DATASET/$file is missing (Debian package dataset-fashion-mnist)"
done
"$PYTHON" -c 'import torch' 2>/dev/null || skip "$PYTHON cannot import torch (Debian package python3-torch)"

# The example's SDK is a copy of the one the templates get.
cmp -s "$EXAMPLE/fedcli_sdk.py" "$(dirname "$0")/../../templates/sdk/fedcli_sdk.py" ||
    fail "examples/fashion-mnist-pytorch/fedcli_sdk.py differs from templates/sdk/fedcli_sdk.py"

cd "$WORK"
cp -r "$EXAMPLE" p
rm -rf p/data p/.fedcli p/seed.npz
export FEDCLI_PARTITION=dirichlet FEDCLI_ALPHA=0.5 FEDCLI_SEED=3 FEDCLI_MAX_EXAMPLES=600
flags=(--path p --python "$PYTHON" --client-index 1 --num-clients 4)

# build: both models (that the seed model depends only on the seed is checked at the end).
run_fedcli run build "${flags[@]}" --output seed.npz
expect_rc 0
expect_in out "cnn, 206922 parameters, seed 3"
FEDCLI_MODEL=mlp run_fedcli run build "${flags[@]}" --output mlp.npz
expect_rc 0
expect_in out "mlp, 52650 parameters"

check_example_contract

# The seed model depends only on the seed; the partition, as every client computes it.
"$PYTHON" - "$WORK/p" "$WORK/seed.npz" <<'PY' || fail "seed model or partition properties"
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import data
import model

seed = np.load(sys.argv[2])
again = [t.numpy() for t in model.new_model("cnn", 3).state_dict().values()]
assert len(again) == len(seed.files) and all(
    np.array_equal(seed[str(i)], a) for i, a in enumerate(again)), "build is not a function of the seed"
other = [t.numpy() for t in model.new_model("cnn", 4).state_dict().values()]
assert not np.array_equal(other[0], again[0]), "the seed does not change the seed model"

labels = data.read_idx(data.FILES["y_train"])
n = len(labels)
for scheme, alpha in (("iid", 0.5), ("dirichlet", 0.5), ("dirichlet", 100.0)):
    for count in (1, 4, 10):
        shares = data.partition(labels, count, scheme, alpha, seed=7)
        again = data.partition(labels, count, scheme, alpha, seed=7)
        assert all(np.array_equal(a, b) for a, b in zip(shares, again)), "not deterministic"
        joined = np.concatenate(shares)
        assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n)), \
            "%s/%d: shares overlap or miss examples" % (scheme, count)
        assert min(len(s) for s in shares) >= 10

def skew(shares):
    """Mean total-variation distance between a share's label mix and the overall one."""
    overall = np.bincount(labels, minlength=10) / n
    return np.mean([0.5 * np.abs(np.bincount(labels[s], minlength=10) / len(s) - overall).sum()
                    for s in shares])

iid = skew(data.partition(labels, 4, "iid", 0.5, seed=7))
skewed = skew(data.partition(labels, 4, "dirichlet", 0.5, seed=7))
mild = skew(data.partition(labels, 4, "dirichlet", 100.0, seed=7))
assert iid < 0.02 and mild < 0.1 and skewed > 0.2, (iid, mild, skewed)
other_seed = data.partition(labels, 4, "dirichlet", 0.5, seed=8)
assert not np.array_equal(other_seed[0], data.partition(labels, 4, "dirichlet", 0.5, seed=7)[0])
print("partition ok: label skew iid %.3f, dirichlet(100) %.3f, dirichlet(0.5) %.3f" % (iid, mild, skewed))
PY
