"""fedcli helper SDK for Python entry points (needs only numpy).

Compatible with FEDn's numpyhelper: parameters are .npz files with keys "0".."N-1" in
layer order, the train entry point writes "<output>-metadata" with "num_examples", and
fedcli writes the round settings to "<input>-metadata" before train.

    import fedcli_sdk as sdk
    weights = sdk.load_parameters(in_path)          # list of numpy arrays, in order
    settings = sdk.load_settings(in_path)           # dict, {} when there are none
    sdk.save_parameters(new_weights, out_path)      # list -> keys "0".."N-1"; dict -> named
    sdk.save_metadata({"num_examples": n}, out_path)
    sdk.save_metrics({"test_accuracy": 0.9}, json_path)

Every writer replaces its file atomically (temporary file + rename), so a crash never
leaves a half-written file behind.
"""

import json
import os
import tempfile

import numpy as np

__all__ = [
    "load_parameters",
    "load_named_parameters",
    "save_parameters",
    "save_metadata",
    "load_metadata",
    "load_settings",
    "save_metrics",
    "client_index",
    "num_clients",
    "data_path",
]


def _ordered_keys(keys):
    """Keys in the order fedcli and FEDn use: numeric for "0".."N-1" and "arr_0"..."""
    for prefix in ("", "arr_"):
        if all(k.startswith(prefix) and k[len(prefix):].isdigit() for k in keys):
            indices = sorted(int(k[len(prefix):]) for k in keys)
            if indices == list(range(len(keys))):
                return [prefix + str(i) for i in indices]
    return list(keys)


def load_named_parameters(path):
    """Reads an .npz parameter file into a dict {name: array}, in fedcli's key order."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in _ordered_keys(archive.files)}


def load_parameters(path):
    """Reads an .npz parameter file into a list of arrays, in fedcli's key order."""
    return list(load_named_parameters(path).values())


def _replace_atomically(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def save_parameters(parameters, path):
    """Writes arrays to an .npz file: a list gets keys "0".."N-1", a dict keeps its names."""
    if isinstance(parameters, dict):
        named = {str(k): np.asarray(v) for k, v in parameters.items()}
    else:
        named = {str(i): np.asarray(v) for i, v in enumerate(parameters)}
    # Writing to an open file stops numpy from appending ".npz" to the name.
    _replace_atomically(path, lambda out: np.savez(out, **named))


def _save_json(document, path):
    text = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
    _replace_atomically(path, lambda out: out.write(text))


def save_metadata(metadata, path):
    """Writes "<path>-metadata" (train output: must hold a positive int "num_examples")."""
    _save_json(metadata, str(path) + "-metadata")


def load_metadata(path):
    """Reads "<path>-metadata" as a dict ({} when absent)."""
    try:
        with open(str(path) + "-metadata") as source:
            return json.load(source)
    except FileNotFoundError:
        return {}


def load_settings(path):
    """The round settings fedcli wrote to "<input>-metadata" before train ({} if none)."""
    return load_metadata(path)


def save_metrics(metrics, path):
    """Writes validation/prediction output: a JSON object; scalar values become metrics."""
    _save_json(metrics, path)


def client_index(default=0):
    """This client's index among the federation's clients (FEDCLI_CLIENT_INDEX)."""
    return int(os.environ.get("FEDCLI_CLIENT_INDEX", default))


def num_clients(default=1):
    """How many clients share the data (FEDCLI_NUM_CLIENTS)."""
    return int(os.environ.get("FEDCLI_NUM_CLIENTS", default))


def data_path(default=None):
    """Where this client's data lives (FEDCLI_DATA_PATH, or FEDn's FEDN_DATA_PATH)."""
    return os.environ.get("FEDCLI_DATA_PATH") or os.environ.get("FEDN_DATA_PATH") or default
