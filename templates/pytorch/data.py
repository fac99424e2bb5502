"""startup: this client's share of Fashion-MNIST.

Reads Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist, or the folder in
FEDCLI_FASHION_MNIST) and keeps an IID slice of the training set for client
FEDCLI_CLIENT_INDEX of FEDCLI_NUM_CLIENTS, plus the whole test set. Written to
FEDCLI_DATA_PATH (default: data/client-<index>-of-<count>.npz).
"""

import gzip
import os

import numpy as np

import fedcli_sdk as sdk

DATASET = os.environ.get("FEDCLI_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")


def read_idx(name):
    path = os.path.join(DATASET, name)
    if not os.path.exists(path):
        raise SystemExit("%s is missing: install Debian's dataset-fashion-mnist or set "
                         "FEDCLI_FASHION_MNIST to a folder with the idx files" % path)
    with gzip.open(path, "rb") as source:
        content = source.read()
    dimensions = content[3]
    shape = [int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(dimensions)]
    return np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def partition_path():
    return sdk.data_path(os.path.join("data", "client-%d-of-%d.npz" % (sdk.client_index(), sdk.num_clients())))


def prepare():
    """Writes this client's partition (if missing) and returns its path."""
    path = partition_path()
    if os.path.exists(path):
        return path
    index, count = sdk.client_index(), sdk.num_clients()
    if not 0 <= index < count:
        raise SystemExit("FEDCLI_CLIENT_INDEX=%d is outside 0..%d" % (index, count - 1))
    x_train = read_idx("train-images-idx3-ubyte.gz")
    y_train = read_idx("train-labels-idx1-ubyte.gz")
    order = np.random.default_rng(1234).permutation(len(x_train))
    part = np.sort(np.array_split(order, count)[index])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sdk.save_parameters({"x_train": x_train[part], "y_train": y_train[part],
                         "x_test": read_idx("t10k-images-idx3-ubyte.gz"),
                         "y_test": read_idx("t10k-labels-idx1-ubyte.gz")}, path)
    return path


def load():
    """This client's data as float tensors in [0, 1] and int64 labels."""
    import torch

    data = sdk.load_named_parameters(prepare())

    def images(key):
        return torch.from_numpy(data[key].reshape(-1, 784).astype(np.float32) / 255.0)

    def labels(key):
        return torch.from_numpy(data[key].astype(np.int64))

    return images("x_train"), labels("y_train"), images("x_test"), labels("y_test")


if __name__ == "__main__":
    path = prepare()
    data = sdk.load_named_parameters(path)
    print("client %d/%d: %d training and %d test examples in %s"
          % (sdk.client_index(), sdk.num_clients(), len(data["x_train"]),
             len(data["x_test"]), path))
