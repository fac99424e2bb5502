"""startup: this client's share of Fashion-MNIST, and the partition behind it.

Reads Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist, or the folder in
FEDCLI_FASHION_MNIST: train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz).

Every client computes the same split of the 60,000 training examples into
FEDCLI_NUM_CLIENTS shares, from the settings below alone, and keeps share
FEDCLI_CLIENT_INDEX: the shares are disjoint and together are the whole training set.
Every client evaluates on the whole test set.

    FEDCLI_PARTITION     iid (default) | dirichlet
    FEDCLI_ALPHA         Dirichlet concentration (default 0.5; smaller: more skewed labels)
    FEDCLI_SEED          seed of the split (default 0)
    FEDCLI_MAX_EXAMPLES  keep at most this many of the share and of the test set (quick tests)

dirichlet: for each class, the class's examples are shuffled and divided among the clients
in proportions drawn from Dirichlet(alpha, ..., alpha) (Hsu et al. 2019), redrawn until
every client has at least 10 examples. The share is cached in FEDCLI_DATA_PATH (a folder;
default data/ in the project) under a name that holds every setting.
"""

import runtime  # noqa: F401  (thread limits before numpy)

import gzip
import os

import numpy as np

import fedcli_sdk as sdk

DEFAULT_DATASET = "/usr/share/datasets/fashion-mnist"
FILES = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
         "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
MIN_SHARE = 10


def dataset_folder():
    return os.environ.get("FEDCLI_FASHION_MNIST", DEFAULT_DATASET)


def read_idx(name):
    """One idx file (gzip) as a uint8 array."""
    path = os.path.join(dataset_folder(), name)
    if not os.path.exists(path):
        raise SystemExit("%s is missing: install Debian's dataset-fashion-mnist or set "
                         "FEDCLI_FASHION_MNIST to a folder with the idx files" % path)
    with gzip.open(path, "rb") as source:
        content = source.read()
    dimensions = content[3]
    shape = [int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(dimensions)]
    return np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def settings():
    """The partition settings from the environment, checked."""
    scheme = os.environ.get("FEDCLI_PARTITION", "iid")
    if scheme not in ("iid", "dirichlet"):
        raise SystemExit("FEDCLI_PARTITION=%s: expected iid or dirichlet" % scheme)
    alpha = float(os.environ.get("FEDCLI_ALPHA", "0.5"))
    if not alpha > 0:
        raise SystemExit("FEDCLI_ALPHA=%s: must be positive" % alpha)
    max_examples = int(os.environ.get("FEDCLI_MAX_EXAMPLES", "0"))
    index, count = sdk.client_index(), sdk.num_clients()
    if not 0 <= index < count:
        raise SystemExit("FEDCLI_CLIENT_INDEX=%d is outside 0..%d" % (index, count - 1))
    return {"scheme": scheme, "alpha": alpha, "seed": runtime.SEED,
            "max_examples": max_examples, "index": index, "count": count}


def partition(labels, count, scheme="iid", alpha=0.5, seed=0):
    """Splits range(len(labels)) into `count` disjoint sorted index arrays covering it all.

    Depends only on its arguments, so every client computes the same split.
    """
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), count)]
    if len(labels) < MIN_SHARE * count:
        raise SystemExit("%d examples are too few for %d clients" % (len(labels), count))
    classes = np.unique(labels)
    for _ in range(1000):
        shares = [[] for _ in range(count)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            proportions = rng.dirichlet(np.full(count, alpha))
            cuts = np.round(np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for share, part in zip(shares, np.split(members, cuts)):
                share.append(part)
        shares = [np.sort(np.concatenate(share)) for share in shares]
        if min(len(share) for share in shares) >= MIN_SHARE:
            return shares
    raise SystemExit("no Dirichlet(%g) split of %d examples gives each of %d clients %d "
                     "examples; raise FEDCLI_ALPHA" % (alpha, len(labels), count, MIN_SHARE))


def share_path(config):
    name = "client-%d-of-%d-%s" % (config["index"], config["count"], config["scheme"])
    if config["scheme"] == "dirichlet":
        name += "-alpha%g" % config["alpha"]
    name += "-seed%d" % config["seed"]
    if config["max_examples"]:
        name += "-max%d" % config["max_examples"]
    folder = sdk.data_path() or "data"
    return os.path.join(folder, name + ".npz")


def prepare():
    """Writes this client's share (when not cached yet) and returns its path."""
    config = settings()
    path = share_path(config)
    if os.path.exists(path):
        return path
    x_train, y_train = read_idx(FILES["x_train"]), read_idx(FILES["y_train"])
    x_test, y_test = read_idx(FILES["x_test"]), read_idx(FILES["y_test"])
    share = partition(y_train, config["count"], config["scheme"], config["alpha"],
                      config["seed"])[config["index"]]
    limit = config["max_examples"]
    if limit:
        # A random subset keeps the share's label mix; the test set keeps its first ones.
        subset = np.random.default_rng([config["seed"], config["index"]]).permutation(share)
        share = np.sort(subset[:limit])
        x_test, y_test = x_test[:limit], y_test[:limit]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sdk.save_parameters({"index": share, "x_train": x_train[share], "y_train": y_train[share],
                         "x_test": x_test, "y_test": y_test}, path)
    return path


def as_tensors(images, labels):
    """uint8 images and labels -> float images [N, 1, 28, 28] in [0, 1], int64 labels."""
    import torch

    x = torch.from_numpy(images.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def load():
    """This client's training share and the test set: x_train, y_train, x_test, y_test."""
    data = sdk.load_named_parameters(prepare())
    return as_tensors(data["x_train"], data["y_train"]) + as_tensors(data["x_test"], data["y_test"])


def label_counts(labels):
    return np.bincount(labels, minlength=10).tolist()


if __name__ == "__main__":
    path = prepare()
    data = sdk.load_named_parameters(path)
    config = settings()
    print("client %d/%d (%s%s, seed %d): %d training examples, labels %s; %d test examples; %s"
          % (config["index"], config["count"], config["scheme"],
             " alpha %g" % config["alpha"] if config["scheme"] == "dirichlet" else "",
             config["seed"], len(data["y_train"]), label_counts(data["y_train"]),
             len(data["y_test"]), path))
