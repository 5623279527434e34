"""Loading and launching the CUDA C kernels that sit next to each op (``ops/pool.py`` and
``ops/pool.cu``).

Conventions every ``.cu`` file follows, so that one loader serves them all (``ops/common.cuh``
states them in C):

* a file starts with ``#include "common.cuh"``, which the loader replaces by the header's text;
* kernels are ``extern "C" __global__ void <op>_<step>(long long n, ...)`` (no name mangling),
  written against the type ``real_t``; each file is compiled twice, with ``-Dreal_t=float``
  and ``-Dreal_t=double``;
* ``n`` is the number of items the kernel owns (outputs, tiles, pixels) and the body is one
  grid-stride loop over them, ``FOR_EACH(i, n)``, so any grid size is correct -- the GPU
  launches enough blocks to fill the device, the CPU test shim launches a few.

Usage inside an op::

    _kernels = cuda.KernelFile(__file__)          # finds pool.cu beside pool.py
    _kernels("max_pool2d_forward", x.dtype)(y.size, x, y, argmax, height, width, ...)

The launcher passes the item count as ``n`` and converts every other argument to the type the
kernel's C signature declares: a Python int to ``int`` or ``long long``, a number to
``real_t``; an array must have the element type of the pointer it is passed as, be
C-contiguous and live on the device the kernel runs on. A mismatch is an error naming the
kernel and the parameter, raised before anything is launched.

The compiled module is cached per (file, dtype) for the life of the process; CuPy also keeps
NVRTC's output in its on-disk kernel cache, so later processes skip compilation.
"""
import contextlib
import os
import re
import threading

import numpy as np

from . import backend

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65535 * 8  # grid-stride loops make any count correct; this just bounds launch size

HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops", "common.cuh")
_INCLUDE = '#include "common.cuh"'

_REAL_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# C parameter types -> NumPy dtype of the scalar, or of the array a pointer points to.
_C_TYPES = {"int": np.int32, "long long": np.int64, "unsigned long long": np.uint64,
            "float": np.float32, "double": np.float64}


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


def expand_source(path):
    """The text of the ``.cu`` file at ``path`` with ``common.cuh`` pasted in place of its
    include, so NVRTC needs no include path and CuPy's cache key covers the header too."""
    with open(path) as f:
        source = f.read()
    if _INCLUDE not in source:
        raise ValueError(f"{path} must start with {_INCLUDE}")
    with open(HEADER) as f:
        header = f.read()
    name = os.path.basename(path)
    return source.replace(_INCLUDE, f'#line 1 "common.cuh"\n{header}\n#line 2 "{name}"', 1)


class Parameter:
    """One parameter of a kernel's C signature: its name, element type, and pointer or not."""

    def __init__(self, declaration, real):
        text = declaration.replace("__restrict__", " ").replace("const", " ")
        self.pointer = "*" in text
        words = text.replace("*", " ").split()
        self.name = words[-1]
        c_type = " ".join(words[:-1])
        self.c_type = real if c_type == "real_t" else c_type
        if self.c_type not in _C_TYPES:
            raise ValueError(f"kernel parameter {declaration.strip()!r}: minidl's launcher knows "
                             f"the types {', '.join(['real_t', *_C_TYPES])}")
        self.dtype = np.dtype(_C_TYPES[self.c_type])

    def convert(self, value, kernel, on_gpu):
        """``value`` as this parameter: an array checked, or a scalar of the exact C type."""
        where = f"kernel {kernel}: parameter {self.name} ({self.c_type}{' *' if self.pointer else ''})"
        is_array = isinstance(value, np.ndarray) or backend.is_cupy_array(value)
        if self.pointer:
            if not is_array:
                raise TypeError(f"{where} needs an array, got {type(value).__name__}")
            if backend.is_cupy_array(value) != on_gpu:
                device, held = ("GPU", "host (NumPy)") if on_gpu else ("CPU", "GPU (CuPy)")
                raise TypeError(f"{where}: the kernel runs on the {device} but got a {held} "
                                f"array; move it with backend.to_device")
            if value.dtype != self.dtype:
                raise TypeError(f"{where} needs {self.dtype} elements, got a {value.dtype} array")
            if not value.flags.c_contiguous:
                raise ValueError(f"{where} must be C-contiguous")
            return value
        if is_array or (isinstance(value, (bool, np.bool_)) and self.c_type != "int"):
            raise TypeError(f"{where} needs a scalar, got {type(value).__name__}")
        if self.dtype.kind in "iu":
            if isinstance(value, (float, np.floating)) or int(value) != value:
                raise TypeError(f"{where} needs an integer, got {value!r}")
            info = np.iinfo(self.dtype)
            if not info.min <= int(value) <= info.max:
                raise OverflowError(f"{where}: {int(value)} does not fit in {self.c_type}")
            return self.dtype.type(int(value))
        return self.dtype.type(value)


def signatures(source, real):
    """``{kernel name: [Parameter, ...]}`` for every ``extern "C" __global__`` kernel."""
    found = {}
    for match in re.finditer(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', source):
        declarations = [d for d in match.group(2).split(",") if d.strip()]
        found[match.group(1)] = [Parameter(d, real) for d in declarations]
    return found


_launchers = threading.local()


@contextlib.contextmanager
def launcher(compile_for_host):
    """Inside this block, kernels run through ``compile_for_host(path, source, real_type)``,
    which returns ``function(name) -> run(n_items, args)`` -- the hook by which
    ``minidl.testing.cuda_on_cpu`` runs the kernels on the CPU."""
    previous = getattr(_launchers, "host", None)
    _launchers.host = compile_for_host
    try:
        yield
    finally:
        _launchers.host = previous


class KernelFile:
    """The kernels of one ``.cu`` file, compiled on first use for each floating dtype."""

    def __init__(self, python_file):
        self.path = os.path.splitext(os.path.abspath(python_file))[0] + ".cu"
        self._modules = {}
        self._signatures = {}

    def source(self):
        return expand_source(self.path)

    def signature(self, name, dtype):
        real = real_type(dtype)
        if real not in self._signatures:
            self._signatures[real] = signatures(self.source(), real)
        if name not in self._signatures[real]:
            raise AttributeError(f"{self.path} has no extern \"C\" kernel named {name!r}")
        return self._signatures[real][name]

    def __call__(self, name, dtype):
        """Return a launcher ``launch(n_items, *args)`` for kernel ``name`` at ``dtype``."""
        parameters = self.signature(name, dtype)
        host = getattr(_launchers, "host", None)
        run = self._host_function(host, name, dtype) if host else self._gpu_function(name, dtype)

        def launch(n_items, *args):
            if len(args) + 1 != len(parameters):
                raise TypeError(f"kernel {name} takes the item count and {len(parameters) - 1} "
                                f"arguments ({', '.join(p.name for p in parameters[1:])}), "
                                f"got {len(args)}")
            values = [parameters[0].convert(n_items, name, on_gpu=host is None)]
            values += [p.convert(a, name, on_gpu=host is None) for p, a in zip(parameters[1:], args)]
            run(n_items, values)

        return launch

    def _host_function(self, host, name, dtype):
        key = ("host", host, real_type(dtype))
        if key not in self._modules:
            self._modules[key] = host(self.path, self.source(), real_type(dtype))
        return self._modules[key](name)

    def _gpu_function(self, name, dtype):
        key = real_type(dtype)
        if key not in self._modules:
            import cupy
            self._modules[key] = cupy.RawModule(code=self.source(), options=compile_options(dtype))
        function = self._modules[key].get_function(name)

        def run(n_items, values):
            function((grid_size(n_items),), (THREADS_PER_BLOCK,), tuple(values))

        return run
