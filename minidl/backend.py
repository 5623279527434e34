"""Where arrays live: NumPy arrays on ``"cpu"``, CuPy arrays on ``"cuda"``.

Every operation asks this module two questions about its inputs:

* which array library to use (``array_module``) -- NumPy and CuPy share an API, so most
  arithmetic is written once against ``xp``;
* which kernels to run (``uses_cuda_kernels``) -- the Numba loops or the CUDA C kernels.

The second question is separate from the first so that the test suite can run the CUDA C
kernels on the CPU (see ``minidl.testing.cuda_on_cpu``): inside ``numpy_to_cuda_kernels()``
NumPy arrays are sent down the CUDA path, where a launcher installed by the tests compiles the
kernels with the system C++ compiler instead of NVRTC. How the CPU kernels run (threads, the
allocator) is ``minidl.cpu``'s business.
"""
import contextlib
import threading

import numpy as np

try:  # CuPy is optional: install minidl[cuda] for the GPU backend.
    import cupy as _cupy
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None

_state = threading.local()


def cuda_available():
    """True when CuPy is installed and can see at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def is_cupy_array(array):
    return _cupy is not None and isinstance(array, _cupy.ndarray)


def array_module(array):
    """``numpy`` or ``cupy``, whichever owns ``array``."""
    return _cupy if is_cupy_array(array) else np


def device_of(array):
    return "cuda" if is_cupy_array(array) else "cpu"


def normalize_device(device):
    """Accept "cpu", "cuda" and "cuda:0"; reject anything else with a clear message."""
    name = str(device)
    if name == "cpu":
        return "cpu"
    if name in ("cuda", "cuda:0", "gpu"):
        if not cuda_available():
            raise RuntimeError(
                f"device {device!r} was requested but no CUDA GPU is usable: "
                "install CuPy (pip install -e '.[cuda]') on a machine with an NVIDIA GPU")
        return "cuda"
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def to_device(array, device):
    """Copy ``array`` to ``device`` (no copy if it is already there)."""
    device = normalize_device(device)
    if device == "cpu":
        return _cupy.asnumpy(array) if is_cupy_array(array) else np.asarray(array)
    return _cupy.asarray(array)


def to_numpy(array):
    return _cupy.asnumpy(array) if is_cupy_array(array) else np.asarray(array)


def uses_cuda_kernels(array):
    """Should an op given ``array`` run its CUDA C kernels (True) or its CPU kernels?"""
    return is_cupy_array(array) or getattr(_state, "numpy_to_cuda_kernels", False)


def pick(array, cpu, cuda):
    """``cuda`` if an op given ``array`` runs its CUDA kernels, else ``cpu``.

    Every op chooses its kernels with this one call, between two drivers of identical
    signature (``_forward_cpu`` / ``_forward_cuda``) or two sets of steps.
    """
    return cuda if uses_cuda_kernels(array) else cpu


@contextlib.contextmanager
def numpy_to_cuda_kernels():
    """Inside this block, NumPy arrays go down the CUDA path too (``uses_cuda_kernels`` is
    True for them). ``minidl.testing.cuda_on_cpu`` uses it, with a launcher that runs the
    CUDA C on the CPU, to test the kernels on a machine without a GPU."""
    previous = getattr(_state, "numpy_to_cuda_kernels", False)
    _state.numpy_to_cuda_kernels = True
    try:
        yield
    finally:
        _state.numpy_to_cuda_kernels = previous
