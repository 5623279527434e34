"""Loading and launching the CUDA C kernels that sit next to each op (``ops/pool.py`` and
``ops/pool.cu``).

Conventions every ``.cu`` file follows, so that one loader serves them all:

* kernels are ``extern "C" __global__`` (no name mangling) and written against the type
  ``real_t``; each file is compiled twice, with ``-Dreal_t=float`` and ``-Dreal_t=double``;
* every kernel is a grid-stride loop over its outputs, so any grid size is correct --
  the GPU launches enough blocks to fill the device, the CPU test shim launches a few;
* 64-bit sizes and offsets are ``long long``; pass them from Python as ``np.int64``, ``int``
  parameters as ``np.int32`` and ``real_t`` parameters as a scalar of the array's dtype.

Usage inside an op::

    _kernels = cuda.KernelFile(__file__)          # finds pool.cu beside pool.py
    _kernels("max_pool2d_forward", x.dtype)(n_outputs, x, y, argmax, np.int64(n), ...)

The compiled module is cached per (file, dtype) for the life of the process; CuPy also keeps
NVRTC's output in its on-disk kernel cache, so later processes skip compilation.
"""
import os

import numpy as np

from . import backend

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65535 * 8  # grid-stride loops make any count correct; this just bounds launch size

_REAL_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def is_available():
    """True when CuPy is installed and a CUDA GPU is visible."""
    return backend.cuda_available()


def real_type(dtype):
    dtype = np.dtype(dtype)
    if dtype not in _REAL_TYPES:
        raise TypeError(f"CUDA kernels support float32 and float64, got {dtype}")
    return _REAL_TYPES[dtype]


def compile_options(dtype):
    """The NVRTC options for one dtype; ``minidl.testing.nvrtc`` checks the files with these."""
    return ("--std=c++14", f"-Dreal_t={real_type(dtype)}")


def grid_size(n_items):
    return int(max(1, min(MAX_BLOCKS, (int(n_items) + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK)))


class KernelFile:
    """The kernels of one ``.cu`` file, compiled on first use for each floating dtype."""

    def __init__(self, python_file):
        self.path = os.path.splitext(os.path.abspath(python_file))[0] + ".cu"
        self._modules = {}

    def source(self):
        with open(self.path) as f:
            return f.read()

    def __call__(self, name, dtype):
        """Return a launcher ``launch(n_items, *args)`` for kernel ``name`` at ``dtype``."""
        if backend.cuda_kernels_run_on_cpu():
            from .testing import cuda_on_cpu
            return cuda_on_cpu.kernel(self.path, name, real_type(dtype))
        key = real_type(dtype)
        if key not in self._modules:
            import cupy
            self._modules[key] = cupy.RawModule(code=self.source(),
                                                options=compile_options(dtype))
        function = self._modules[key].get_function(name)

        def launch(n_items, *args):
            for position, arg in enumerate(args):
                if backend.is_cupy_array(arg) and not arg.flags.c_contiguous:
                    raise ValueError(f"kernel {name}: argument {position} must be C-contiguous")
            function((grid_size(n_items),), (THREADS_PER_BLOCK,), args)

        return launch
