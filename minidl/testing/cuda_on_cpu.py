"""Run minidl's CUDA C kernels on the CPU, so a machine without a GPU can test them.

A ``.cu`` file is compiled with the system C++ compiler (``c++``) after ``cuda_on_cpu.h``,
which defines ``__global__``, ``threadIdx``, ``blockIdx``, ``blockDim``, ``gridDim`` and
``atomicAdd``. A launch then calls the kernel once for every (block, thread) pair of a small
grid, one after another. Because every minidl kernel is a grid-stride loop, a grid of a few
blocks of a few threads runs each thread's share of the outputs exactly as the GPU would,
including the stride arithmetic.

Arguments are converted the way CuPy converts them: a NumPy array becomes a pointer to its
data, ``np.int32``/``np.int64``/``np.float32``/``np.float64`` scalars become C ``int``,
``long long``, ``float`` and ``double``.

Use it through ``minidl.backend.cuda_kernels_on_cpu()``: inside that context every op sends
NumPy arrays down its CUDA path.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_on_cpu.h")
BLOCKS, THREADS_PER_BLOCK = 3, 4  # small, uneven, so grid-stride bugs show

_libraries = {}

_SCALAR_TYPES = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.uint32): ctypes.c_uint32,
    np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}


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


def library(cu_path, real_type):
    """Compile ``cu_path`` with ``real_t = real_type`` into a shared library (cached)."""
    key = (cu_path, real_type)
    if key in _libraries:
        return _libraries[key]
    with open(cu_path, "rb") as f:
        source = f.read()
    with open(HEADER, "rb") as f:
        header = f.read()
    digest = hashlib.sha256(source + header + real_type.encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(cu_path))[0]
    so_path = os.path.join(_cache_dir(), f"{stem}-{real_type}-{digest}.so")
    if not os.path.exists(so_path):
        tmp_path = f"{so_path}.{os.getpid()}.tmp"
        command = [compiler(), "-O1", "-shared", "-fPIC", "-std=c++14", "-Wall", "-Werror",
                   "-Wno-unused-function", "-Wno-unknown-pragmas", f"-Dreal_t={real_type}",
                   "-include", HEADER, "-x", "c++", cu_path, "-o", tmp_path]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {cu_path} for the CPU failed:\n{result.stderr}")
        os.replace(tmp_path, so_path)
    _libraries[key] = ctypes.CDLL(so_path)
    return _libraries[key]


def _to_c_argument(value, kernel_name, position):
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise ValueError(f"kernel {kernel_name}: argument {position} must be C-contiguous")
        return ctypes.c_void_p(value.ctypes.data)
    dtype = getattr(value, "dtype", None)
    if dtype is None or np.dtype(dtype) not in _SCALAR_TYPES:
        raise TypeError(
            f"kernel {kernel_name}: argument {position} is {type(value).__name__}; pass arrays or "
            "NumPy scalars (np.int32, np.int64, np.float32, np.float64) so the C type is explicit")
    return _SCALAR_TYPES[np.dtype(dtype)](value.item())


def kernel(cu_path, name, real_type):
    """A launcher ``launch(n_items, *args)`` that runs kernel ``name`` on the CPU."""
    lib = library(cu_path, real_type)
    try:
        function = getattr(lib, name)
    except AttributeError:
        raise AttributeError(f"{cu_path} has no extern \"C\" kernel named {name!r}") from None
    function.restype = None
    set_thread = lib.minidl_set_thread

    def launch(n_items, *args):
        c_args = [_to_c_argument(a, name, i) for i, a in enumerate(args)]
        for block in range(BLOCKS):
            for thread in range(THREADS_PER_BLOCK):
                set_thread(block, thread, THREADS_PER_BLOCK, BLOCKS)
                function(*c_args)

    return launch
