"""Process-wide settings every entry point imports first (before numpy and torch).

FEDCLI_TORCH_THREADS (default 1) caps the threads of torch and of the BLAS/OpenMP
libraries under numpy and torch: clients usually share a machine, and one thread per client
keeps results reproducible and the machine responsive. FEDCLI_SEED (default 0) is the seed
of everything random: the data partition, the seed model and each round's shuffling.
"""

import os
import sys

THREADS = int(os.environ.get("FEDCLI_TORCH_THREADS", "1"))
if THREADS < 1:
    raise SystemExit("FEDCLI_TORCH_THREADS=%d: need at least 1" % THREADS)
# Read by OpenBLAS and OpenMP when they load, so this must run before numpy and torch.
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, str(THREADS))

SEED = int(os.environ.get("FEDCLI_SEED", "0"))


def import_torch():
    """torch, limited to THREADS threads; a clear error where this interpreter lacks it."""
    try:
        import torch
    except ImportError:
        raise SystemExit(
            "%s cannot import torch: run the entry points with an interpreter that has it, "
            "e.g. Debian's python3-torch (fedcli run ... --python /usr/bin/python3, or "
            "FEDCLI_PYTHON=/usr/bin/python3)" % sys.executable)
    torch.set_num_threads(THREADS)
    try:
        torch.set_num_interop_threads(THREADS)
    except RuntimeError:  # only settable before the first parallel work; already done
        pass
    return torch
