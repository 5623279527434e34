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
"""
import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

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


@contextlib.contextmanager
def cuda_kernels_on_cpu():
    """Route NumPy arrays through the CUDA kernels, compiled for and run on the CPU."""
    with backend.numpy_to_cuda_kernels(), cuda.launcher(compile_for_host):
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
