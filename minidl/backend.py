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

Whether the GPU is usable, and why not: ``cuda_available()`` answers yes or no,
``cuda_status()`` gives the reason when the answer is no (CuPy missing or failing to import, a
CuPy wheel that does not match the driver, no device visible), so that a broken install is
named instead of silently looking like a machine without a GPU. ``minidl.cuda.self_test()``
goes further: it compiles and runs a kernel and a matrix product. ``allow_tf32`` chooses
whether float32 matrix products on the GPU may use TF32 tensor cores (off unless asked for).
"""
import contextlib
import os
import threading

import numpy as np

INSTALL_HINT = ("pip install -e '.[cuda]' (CUDA 13) or '.[cuda12]' (CUDA 12): CuPy with the CUDA "
                "libraries and headers it needs")

try:  # CuPy is optional: install minidl[cuda] for the GPU backend.
    import cupy as _cupy
    _cupy_import_error = None
except Exception as error:  # pragma: no cover - depends on the machine
    # Any exception, not only ImportError: a wheel built for another CUDA raises others. The
    # error is kept so that cuda_status() can name it.
    _cupy = None
    _cupy_import_error = error

_state = threading.local()


def _describe(error):
    return f"{type(error).__name__}: {error}".strip()


def cuda_status():
    """None when the GPU is usable (CuPy imports and sees at least one device), else one line
    saying why not -- the error CuPy raised, not just that it failed.

    ``cuda_available()`` is ``cuda_status() is None``. Neither compiles anything; for that,
    and for the CUDA libraries a kernel and a matrix product need, see
    ``minidl.cuda.self_test()``.
    """
    if _cupy is None:
        if isinstance(_cupy_import_error, ModuleNotFoundError) and \
                _cupy_import_error.name == "cupy":
            return f"CuPy is not installed: {INSTALL_HINT}"
        return f"CuPy is installed but failed to import ({_describe(_cupy_import_error)})"
    try:
        count = _cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # a driver older than the wheel's CUDA, no driver at all, ...
        return (f"CuPy {getattr(_cupy, '__version__', '?')} cannot use the GPU "
                f"({_describe(error)}); check that the CuPy wheel matches the driver's CUDA "
                f"version (nvidia-smi shows it)")
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return ("CuPy sees no CUDA device"
                + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""))
    return None


def cuda_available():
    """True when CuPy is installed and can see at least one CUDA device; ``cuda_status()``
    says why not when it is False."""
    return cuda_status() is None


def is_cupy_array(array):
    return _cupy is not None and isinstance(array, _cupy.ndarray)


def array_module(array):
    """``numpy`` or ``cupy``, whichever owns ``array``. (An array type may name its own module
    in ``_minidl_array_module``: the CUDA-on-CPU shim's stand-in for GPU memory does.)"""
    if is_cupy_array(array):
        return _cupy
    return getattr(array, "_minidl_array_module", np)


def device_of(array):
    return "cuda" if is_cupy_array(array) else "cpu"


def normalize_device(device):
    """Accept "cpu", "cuda" and "cuda:0"; reject anything else with a clear message."""
    name = str(device)
    if name == "cpu":
        return "cpu"
    if name in ("cuda", "cuda:0", "gpu"):
        status = cuda_status()
        if status is not None:
            raise RuntimeError(f"device {device!r} was requested but no CUDA GPU is usable: "
                               f"{status}")
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


def _compute_types():
    """CuPy's compute-type setting for its float32 matrix products (``cupy._core``): the switch
    that its ``CUPY_TF32`` environment variable sets at first use."""
    return _cupy._core, _cupy._core._routines_linalg


def allow_tf32(allowed=True):
    """Let float32 matrix products on the GPU use TF32 tensor cores (``allowed=True``), or not.

    TF32 rounds the products' inputs to a 10-bit mantissa and accumulates in float32: several
    times the float32 speed on sm_80 and newer GPUs, with errors of about 1e-3 of the result's
    scale instead of about 1e-7. minidl leaves it off unless asked (CuPy's default too), and
    the tests run without it, since their float32 tolerances assume float32 products.
    ``CUPY_TF32=1`` in the environment is CuPy's own switch for the same setting; this call
    overrides it, and ``tf32_allowed()`` reports what is in force.

    It governs the 2-D products, which CuPy runs through ``cublasGemmEx`` with a compute type:
    the linear layers and im2col convolutions of one group. CuPy's stacked (strided-batched)
    products -- Winograd's, and im2col's over several groups -- compute in float32 whatever
    this says (docs/GPU.md). On a machine without CuPy it does nothing.
    """
    if _cupy is None:
        return
    core, linalg = _compute_types()
    core.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if allowed
                          else linalg.COMPUTE_TYPE_DEFAULT)


def tf32_allowed():
    """Whether float32 matrix products on the GPU may use TF32 now (False without CuPy)."""
    if _cupy is None:
        return False
    core, linalg = _compute_types()
    return core.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
