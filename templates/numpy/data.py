"""startup: makes this client's share of a synthetic 5-class data set.

The data set is generated from a fixed seed, so every client sees the same data set and
takes its own slice: client FEDCLI_CLIENT_INDEX of FEDCLI_NUM_CLIENTS. Written to
FEDCLI_DATA_PATH (default: data/client-<index>-of-<count>.npz).
"""

import os

import numpy as np

import fedcli_sdk as sdk

FEATURES = 20
CLASSES = 5
TRAIN_EXAMPLES = 6000
TEST_EXAMPLES = 1500


def make_dataset(seed=42):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 0.45, size=(CLASSES, FEATURES))

    def sample(count):
        labels = rng.integers(0, CLASSES, size=count)
        points = centres[labels] + rng.normal(0.0, 1.0, size=(count, FEATURES))
        return points.astype(np.float32), labels.astype(np.int64)

    x_train, y_train = sample(TRAIN_EXAMPLES)
    x_test, y_test = sample(TEST_EXAMPLES)
    return x_train, y_train, x_test, y_test


def partition_path():
    return sdk.data_path(os.path.join("data", "client-%d-of-%d.npz" % (sdk.client_index(), sdk.num_clients())))


def prepare():
    """Writes this client's partition (if missing) and returns its path."""
    path = partition_path()
    if os.path.exists(path):
        return path
    x_train, y_train, x_test, y_test = make_dataset()
    index, count = sdk.client_index(), sdk.num_clients()
    if not 0 <= index < count:
        raise SystemExit("FEDCLI_CLIENT_INDEX=%d is outside 0..%d" % (index, count - 1))
    part = np.array_split(np.arange(len(x_train)), count)[index]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sdk.save_parameters(
        {"x_train": x_train[part], "y_train": y_train[part], "x_test": x_test, "y_test": y_test},
        path,
    )
    return path


def load():
    """This client's data: x_train, y_train, x_test, y_test."""
    data = sdk.load_named_parameters(prepare())
    return data["x_train"], data["y_train"], data["x_test"], data["y_test"]


if __name__ == "__main__":
    path = prepare()
    x_train, _, x_test, _ = load()
    print("client %d/%d: %d training and %d test examples in %s"
          % (sdk.client_index(), sdk.num_clients(), len(x_train), len(x_test), path))
