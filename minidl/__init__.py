"""minidl: a small deep-learning framework written to be read -- and to run AlexNet."""
import os as _os


def _numba_cache_dir():
    """Numba caches compiled kernels beside the source; if the installed package is
    read-only (a system site-packages, a container image), cache in the user's cache dir."""
    if "NUMBA_CACHE_DIR" in _os.environ:
        return
    package_dir = _os.path.dirname(_os.path.abspath(__file__))
    if not _os.access(package_dir, _os.W_OK):
        base = _os.environ.get("XDG_CACHE_HOME") or _os.path.join(_os.path.expanduser("~"), ".cache")
        _os.environ["NUMBA_CACHE_DIR"] = _os.path.join(base, "minidl", "numba")


def _quiet_idle_threads():
    """Keep idle worker threads from spinning. By default OpenMP workers (Numba's parallel
    loops) spin after each parallel region waiting for more work; on a 2-core machine they
    then steal the cores from OpenBLAS and from every other process, and a small network's
    step took 30x longer on a busy machine. PASSIVE makes them sleep instead. It takes effect
    only if set before the OpenMP runtime loads (Numba loads it on the first parallel call);
    a value the user set is kept."""
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_numba_cache_dir()
_quiet_idle_threads()

from . import autograd, backend, cuda, ops, layers, optim, models  # noqa: E402
from .autograd import Function, is_grad_enabled, no_grad  # noqa: E402
from .gradcheck import GradcheckError, gradcheck  # noqa: E402
from .random import manual_seed  # noqa: E402
from .tensor import Tensor, tensor  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Tensor", "tensor", "Function", "no_grad", "is_grad_enabled", "gradcheck",
           "GradcheckError", "manual_seed", "ops", "layers", "optim", "models", "cuda", "backend"]
