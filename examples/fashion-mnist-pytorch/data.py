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

The random draws come from the 64-bit Mersenne Twister (C++'s std::mt19937_64) through the
small, fully specified distributions in Random below, the same ones as in
examples/fashion-mnist-libtorch/data.cpp: both examples compute the same split for the same
settings, so their results can be compared run for run, and clients of either kind can join
one federation.
"""

import runtime  # noqa: F401  (thread limits before numpy)

import gzip
import math
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


class Random:
    """std::mt19937_64 and the distributions of the C++ example, draw for draw."""

    MASK = (1 << 64) - 1

    def __init__(self, seed):
        state = [seed & self.MASK]
        for i in range(1, 312):
            previous = state[-1]
            state.append((6364136223846793005 * (previous ^ (previous >> 62)) + i) & self.MASK)
        self.state, self.position = state, 312

    def _twist(self):
        state = self.state
        for i in range(312):
            y = (state[i] & 0xFFFFFFFF80000000) | (state[(i + 1) % 312] & 0x7FFFFFFF)
            state[i] = state[(i + 156) % 312] ^ (y >> 1) ^ (0xB5026F5AA96619E9 if y & 1 else 0)
        self.position = 0

    def next(self):
        if self.position >= 312:
            self._twist()
        x = self.state[self.position]
        self.position += 1
        x ^= (x >> 29) & 0x5555555555555555
        x ^= (x << 17) & 0x71D67FFFEDA60000
        x ^= (x << 37) & 0xFFF7EEE000000000
        x ^= x >> 43
        return x & self.MASK

    def uniform(self):
        """Uniform in [0, 1) with 53 random bits."""
        return (self.next() >> 11) * 2.0 ** -53

    def below(self, bound):
        """Uniform in [0, bound), by rejection."""
        limit = self.MASK - self.MASK % bound
        while True:
            value = self.next()
            if value < limit:
                return value % bound

    def normal(self):
        u = 1.0 - self.uniform()
        return math.sqrt(-2.0 * math.log(u)) * math.cos(2.0 * math.pi * self.uniform())

    def gamma(self, shape):
        """Gamma(shape, 1): Marsaglia and Tsang (2000), boosted for shape < 1."""
        if shape < 1.0:
            boosted = self.gamma(shape + 1.0)
            return boosted * math.pow(1.0 - self.uniform(), 1.0 / shape)
        d = shape - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        while True:
            x = self.normal()
            v = 1.0 + c * x
            if v <= 0:
                continue
            v = v * v * v
            u = 1.0 - self.uniform()
            if math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
                return d * v

    def shuffle(self, values):
        """Fisher-Yates, in place, on a list."""
        for i in range(len(values), 1, -1):
            j = self.below(i)
            values[i - 1], values[j] = values[j], values[i - 1]
        return values


def round_half_away(x):
    """C's llround for x >= 0."""
    whole = math.floor(x)
    return int(whole) + (1 if x - whole >= 0.5 else 0)


def partition(labels, count, scheme="iid", alpha=0.5, seed=0):
    """Splits range(len(labels)) into `count` disjoint sorted index arrays covering it all.

    Depends only on its arguments, so every client computes the same split.
    """
    random = Random(seed)
    n = len(labels)
    if scheme == "iid":
        order = random.shuffle(list(range(n)))
        return [np.sort(np.array(order[n * i // count:n * (i + 1) // count], dtype=np.int64))
                for i in range(count)]
    if n < MIN_SHARE * count:
        raise SystemExit("%d examples are too few for %d clients" % (n, count))
    classes = [np.flatnonzero(labels == label).tolist() for label in np.unique(labels)]
    for _ in range(1000):
        shares = [[] for _ in range(count)]
        for members in classes:
            members = random.shuffle(list(members))
            proportions = [random.gamma(alpha) for _ in range(count)]
            total = sum(proportions)  # left to right, as the C++ loop adds them
            cumulative, begin = 0.0, 0
            for i in range(count):
                cumulative += proportions[i] / total
                end = len(members) if i + 1 == count else min(
                    len(members), round_half_away(cumulative * len(members)))
                end = max(end, begin)
                shares[i].extend(members[begin:end])
                begin = end
        if min(len(share) for share in shares) >= MIN_SHARE:
            return [np.sort(np.array(share, dtype=np.int64)) for share in shares]
    raise SystemExit("no Dirichlet(%g) split of %d examples gives each of %d clients %d "
                     "examples; raise FEDCLI_ALPHA" % (alpha, n, count, MIN_SHARE))


def share_path(config):
    # "share-": shares cached by earlier versions (another split) are not reused.
    name = "share-client-%d-of-%d-%s" % (config["index"], config["count"], config["scheme"])
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
        stream = (config["seed"] * 1000003 + config["index"]) & Random.MASK
        subset = Random(stream).shuffle(share.tolist())
        share = np.sort(np.array(subset[:limit], dtype=np.int64))
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
