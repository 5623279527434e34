"""Run minidl's CUDA C kernels on the CPU, so a machine without a GPU can test them.

A ``.cu`` file (with ``common.cuh`` pasted in, as for NVRTC) is compiled with the system C++
compiler after ``cuda_on_cpu.h``, which defines ``__global__``, ``threadIdx``, ``blockIdx``,
``blockDim``, ``gridDim`` and ``atomicAdd``. A launch then calls the kernel once for every
(block, thread) pair of a small grid, one after another. Because every minidl kernel is a
grid-stride loop, a grid of a few blocks of a few threads runs each thread's share of the
outputs exactly as the GPU would, including the stride arithmetic.

Arguments arrive already converted by ``minidl.cuda``'s launcher to the kernel's C signature
(NumPy arrays of the pointer's element type, NumPy scalars of the parameter's type); here an
array becomes a pointer to its data and a scalar the matching ctypes value.

``with cuda_kernels_on_cpu():`` sends NumPy arrays down every op's CUDA path and runs the
kernels here: the op tests run the CUDA C against the CPU kernels this way.

Device memory. On a GPU a kernel must get device (CuPy) arrays only: a host array passed as a
pointer is read as a device address, and the illegal access that follows breaks the CUDA
context for the rest of the process. Here device memory is played by ``DeviceArray``, a NumPy
array of its own type, made by ``to_device`` (the op tests' ``kernels.array`` in the
``cuda_on_cpu`` mode) and by the functions of ``device_numpy``, the stand-in for CuPy that
``backend.array_module`` returns for it -- so an op allocates its outputs and workspaces in
the same "device memory" as its inputs, exactly where it would call CuPy on a GPU. A launch
that mixes a ``DeviceArray`` with a plain NumPy array is refused, naming the parameter: the
mistake that breaks a GPU fails here, in every op test. (A launch of plain NumPy arrays only,
as in a test that routes host arrays through the CUDA kernels, is allowed: it has no device
memory to mix with.) Like CuPy, reductions of device arrays give 0-d device arrays, not host
scalars.

Host reads. What makes a GPU's host wait -- ``float()``, ``int()``, ``bool()``, ``item()`` or
``tolist()`` of a device array, or indexing it with a boolean mask (whose result size only
the device knows) -- is counted on ``DeviceArray``: ``host_reads()`` tells how many happened,
so a test can show that a training step reads nothing back from the device mid-step.
"""
import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import types

import numpy as np

from .. import backend, cuda

HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_on_cpu.h")
BLOCKS, THREADS_PER_BLOCK = 3, 4  # small, uneven, so grid-stride bugs show

_SCALAR_TYPES = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}


_host_reads = [0]


def host_reads():
    """How many times the host has read a ``DeviceArray`` back so far (module docstring)."""
    return _host_reads[0]


def _is_mask(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, np.ndarray) and k.dtype == np.bool_ for k in keys)


class DeviceArray(np.ndarray):
    """A NumPy array standing for GPU memory in the shim (module docstring). Its array module
    is ``device_numpy``, so what an op makes from it is device memory too; what would make a
    GPU's host wait for it is counted (``host_reads``)."""

    def __array_wrap__(self, array, context=None, return_scalar=False):
        # CuPy's reductions give 0-d device arrays, never host scalars; so do these.
        return super().__array_wrap__(array, context, False)

    def __getitem__(self, key):
        if _is_mask(key):
            _host_reads[0] += 1
        return super().__getitem__(key)

    def __float__(self):
        _host_reads[0] += 1
        return super().__float__()

    def __int__(self):
        _host_reads[0] += 1
        return super().__int__()

    def __index__(self):
        _host_reads[0] += 1
        return super().__index__()

    def __bool__(self):
        _host_reads[0] += 1
        return super().__bool__()

    def item(self, *args):
        _host_reads[0] += 1
        return super().item(*args)

    def tolist(self):
        _host_reads[0] += 1
        return super().tolist()


def _on_device(value):
    """A result of a NumPy function, as device memory (arrays and scalars; tuples of them)."""
    if isinstance(value, DeviceArray):
        return value
    if isinstance(value, np.ndarray):
        return value.view(DeviceArray)
    if isinstance(value, np.generic):
        return np.asarray(value).view(DeviceArray)
    if isinstance(value, (tuple, list)):
        return type(value)(_on_device(v) for v in value)
    return value


def to_device(array, dtype=None):
    """A copy of ``array`` in the shim's device memory, as ``cupy.asarray`` copies a host
    array to the GPU; a device array is returned as it is (converted if ``dtype`` asks)."""
    if isinstance(array, DeviceArray):
        return array if dtype is None else array.astype(dtype, copy=False)
    return np.array(array, dtype=dtype, copy=True).view(DeviceArray)


class _Ufunc:
    """A NumPy ufunc whose results, its methods' included, are device memory."""

    def __init__(self, ufunc):
        self._ufunc = ufunc

    def __call__(self, *args, **kwargs):
        return _on_device(self._ufunc(*args, **kwargs))

    def __getattr__(self, name):
        value = getattr(self._ufunc, name)
        return _returning_device_arrays(value) if callable(value) else value


def _returning_device_arrays(function):
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        return _on_device(function(*args, **kwargs))
    return wrapped


def _asarray(a, dtype=None, order=None):
    if isinstance(a, DeviceArray):
        return np.asarray(a, dtype=dtype, order=order).view(DeviceArray)
    return to_device(np.asarray(a, dtype=dtype, order=order))


def _ascontiguousarray(a, dtype=None):
    if isinstance(a, DeviceArray):
        return np.ascontiguousarray(a, dtype=dtype).view(DeviceArray)
    return to_device(np.ascontiguousarray(a, dtype=dtype))


class _DeviceNumPy(types.ModuleType):
    """NumPy with every function's results in device memory: the shim's CuPy. ``asarray`` and
    ``ascontiguousarray`` of a host array copy it, as CuPy's transfer does."""

    _own = {"asarray": _asarray, "asanyarray": _asarray, "ascontiguousarray": _ascontiguousarray}

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = self._own.get(name) or getattr(np, name)
        if isinstance(value, np.ufunc):
            value = _Ufunc(value)
        elif callable(value) and not isinstance(value, type) and name not in self._own:
            value = _returning_device_arrays(value)
        setattr(self, name, value)  # looked up once
        return value


device_numpy = _DeviceNumPy(__name__ + ".device_numpy", _DeviceNumPy.__doc__)
DeviceArray._minidl_array_module = device_numpy  # what backend.array_module returns for it


@contextlib.contextmanager
def cuda_kernels_on_cpu():
    """Route NumPy arrays through the CUDA kernels, compiled for and run on the CPU; a launch
    that mixes device memory (``DeviceArray``) with host arrays is refused."""
    with backend.numpy_to_cuda_kernels(), cuda.launcher(compile_for_host, device_array=DeviceArray):
        yield


def compiler():
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("running CUDA kernels on the CPU needs a C++ compiler (c++, g++ or clang++)")


def _cache_dir():
    path = os.path.join(tempfile.gettempdir(), f"minidl-cuda-on-cpu-{os.getuid()}")
    os.makedirs(path, exist_ok=True)
    return path


_libraries = {}


def library(cu_path, source, real_type):
    """``source`` (the expanded ``cu_path``) compiled with ``real_t = real_type`` into a shared
    library, cached on disk by the hash of what went into it."""
    with open(HEADER, "rb") as f:
        header = f.read()
    digest = hashlib.sha256(source.encode() + header + real_type.encode()).hexdigest()[:16]
    if digest in _libraries:
        return _libraries[digest]
    stem = os.path.splitext(os.path.basename(cu_path))[0]
    so_path = os.path.join(_cache_dir(), f"{stem}-{real_type}-{digest}.so")
    if not os.path.exists(so_path):
        tmp_stem = f"{so_path}.{os.getpid()}"
        with open(tmp_stem + ".cu", "w") as f:
            f.write(source)
        command = [compiler(), "-O1", "-shared", "-fPIC", "-std=c++14", "-Wall", "-Werror",
                   "-Wno-unused-function", "-Wno-unknown-pragmas", f"-Dreal_t={real_type}",
                   "-include", HEADER, "-x", "c++", tmp_stem + ".cu", "-o", tmp_stem + ".so"]
        result = subprocess.run(command, capture_output=True, text=True)
        os.remove(tmp_stem + ".cu")
        if result.returncode != 0:
            raise RuntimeError(f"compiling {cu_path} for the CPU failed:\n{result.stderr}")
        os.replace(tmp_stem + ".so", so_path)
    _libraries[digest] = ctypes.CDLL(so_path)
    return _libraries[digest]


def _c_argument(value):
    if isinstance(value, np.ndarray):
        return ctypes.c_void_p(value.ctypes.data)
    return _SCALAR_TYPES[value.dtype](value.item())


def compile_for_host(cu_path, source, real_type):
    """The host launcher ``minidl.cuda`` calls: ``function(name) -> run(n_items, args)``."""
    lib = library(cu_path, source, real_type)
    set_thread = lib.minidl_set_thread

    def function(name):
        kernel = getattr(lib, name)
        kernel.restype = None

        def run(n_items, values):
            c_args = [_c_argument(v) for v in values]
            for block in range(BLOCKS):
                for thread in range(THREADS_PER_BLOCK):
                    set_thread(block, thread, THREADS_PER_BLOCK, BLOCKS)
                    kernel(*c_args)

        return run

    return function
