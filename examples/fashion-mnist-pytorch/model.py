"""build: writes the seed model. Two models, chosen by FEDCLI_MODEL:

    cnn (default)  conv3x3(16) - maxpool - conv3x3(32) - maxpool - fc128 - fc10   (206,922 parameters)
    mlp            FEDn's mnist-pytorch MLP: 784-64-32-10, dropout 0.5            (52,650 parameters)
                   on standardized pixels (Fashion-MNIST's mean 0.2860, std 0.3530)

Usage: python3 model.py [OUTPUT]   (default: seed.npz)
The seed model depends only on FEDCLI_SEED (default 0). Parameters are stored in
state_dict order under keys "0".."N-1" (FEDn's numpyhelper); train, validate and predict
recognise the model from the file, so FEDCLI_MODEL matters only to build.
"""

import runtime

import os
import sys

import numpy as np

import fedcli_sdk as sdk

torch = runtime.import_torch()
nn = torch.nn
functional = torch.nn.functional


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class MLP(nn.Module):
    """FEDn's examples/mnist-pytorch model, on standardized pixels (which lifted it by
    0.01-0.03 in docs/examples.md)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.fc1(x.flatten(1).sub(0.2860).div(0.3530)))
        x = functional.dropout(x, p=0.5, training=self.training)
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


MODELS = {"cnn": CNN, "mlp": MLP}


def model_name():
    name = os.environ.get("FEDCLI_MODEL", "cnn")
    if name not in MODELS:
        raise SystemExit("FEDCLI_MODEL=%s: expected one of %s" % (name, ", ".join(MODELS)))
    return name


def new_model(name, seed):
    torch.manual_seed(seed)
    return MODELS[name]()


def save_model(model, path):
    sdk.save_parameters([t.detach().cpu().numpy() for t in model.state_dict().values()], path)


def load_model(path):
    """The model in PATH; which one it is follows from its first array (4-D: the CNN)."""
    arrays = sdk.load_parameters(path)
    if not arrays:
        raise SystemExit("%s holds no arrays" % path)
    name = "cnn" if arrays[0].ndim == 4 else "mlp"
    model = MODELS[name]()
    state = model.state_dict()
    if [tuple(a.shape) for a in arrays] != [tuple(t.shape) for t in state.values()]:
        raise SystemExit("%s has arrays of shapes %s, not those of the %s model: %s"
                         % (path, [list(a.shape) for a in arrays], name,
                            [list(t.shape) for t in state.values()]))
    model.load_state_dict({key: torch.from_numpy(np.array(a, dtype=np.float32))
                           for key, a in zip(state.keys(), arrays)})
    return model, name


def evaluate(model, x, y, batch_size=256):
    """(mean cross-entropy loss, accuracy) of MODEL on X, Y, in eval mode."""
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start:start + batch_size])
            labels = y[start:start + batch_size]
            total_loss += functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(dim=1) == labels).sum().item()
    return total_loss / max(len(x), 1), correct / max(len(x), 1)


if __name__ == "__main__":
    output = sys.argv[1] if len(sys.argv) > 1 else "seed.npz"
    name = model_name()
    model = new_model(name, runtime.SEED)
    save_model(model, output)
    print("seed model (%s, %d parameters, seed %d) written to %s"
          % (name, sum(p.numel() for p in model.parameters()), runtime.SEED, output))
