"""Where arrays live: NumPy arrays on ``"cpu"``, CuPy arrays on ``"cuda"``.

Every operation asks this module two questions about its inputs:

* which array library to use (``array_module``) -- NumPy and CuPy share an API, so most
  arithmetic is written once against ``xp``;
* which kernels to run (``uses_cuda_kernels``) -- the Numba loops or the CUDA C kernels.

The second question is separate from the first so that the test suite can run the CUDA C
kernels on the CPU (see ``minidl.testing.cuda_on_cpu``): inside ``cuda_kernels_on_cpu()``
NumPy arrays are sent down the CUDA path, and the kernels are compiled with the system C++
compiler instead of NVRTC.
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
    return is_cupy_array(array) or getattr(_state, "cuda_on_cpu", False)


@contextlib.contextmanager
def cuda_kernels_on_cpu():
    """Route NumPy arrays through the CUDA kernels, compiled for the CPU (testing only)."""
    previous = getattr(_state, "cuda_on_cpu", False)
    _state.cuda_on_cpu = True
    try:
        yield
    finally:
        _state.cuda_on_cpu = previous


def cuda_kernels_run_on_cpu():
    return getattr(_state, "cuda_on_cpu", False)


# Below this many elements a Numba kernel runs on one thread: waking the others costs more
# than the work (tens of microseconds on an idle machine, milliseconds on a busy one).
SERIAL_BELOW = 1 << 15


@contextlib.contextmanager
def cpu_threads_for(n_elements):
    """Run the Numba kernels inside on one thread when the input is small."""
    if n_elements >= SERIAL_BELOW:
        yield
        return
    import numba
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4


def tune_cpu_allocator(keep_bytes=1 << 30):
    """Opt in to keeping freed memory in the process instead of giving it back to the OS.

    By default glibc's malloc serves every block over 32 MiB (a conv layer's activations, a
    gradient of fc6) with a fresh ``mmap`` and returns it with ``munmap`` when freed, so the
    next training step's array of the same size is new memory again: the kernel zeroes it and
    takes a page fault on first touch of every page (~4 ms per 37 MB here, several hundred
    ms per AlexNet step). This call tells malloc to carve large blocks from its heap
    (``M_MMAP_MAX=0``) and to keep up to ``keep_bytes`` of free memory at the top of the heap
    (``M_TRIM_THRESHOLD``, ``M_TOP_PAD``), so the step's arrays reuse last step's pages.

    The cost is that memory freed by minidl is not returned to the OS while the process runs
    (the peak resident size is unchanged; the resident size after a step stays near it). It
    affects every library in the process that uses malloc -- NumPy, and PyTorch too when both
    run in one process (the benchmark does this: say so when comparing). Call it once, early,
    before the large arrays are made. Returns True when applied, False where it cannot be
    (not Linux with glibc); calling it elsewhere is harmless.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl has no mallopt)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    keep = int(min(keep_bytes, 2**31 - 1))
    ok = mallopt(_M_MMAP_MAX, 0)
    ok &= mallopt(_M_TRIM_THRESHOLD, keep)
    ok &= mallopt(_M_TOP_PAD, min(keep, 64 << 20))
    return bool(ok)
