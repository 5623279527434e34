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

The compiled module is cached per (file, dtype) for the life of the process, and each kernel's
handle per name; CuPy also keeps NVRTC's output in its on-disk kernel cache, so later
processes skip compilation.

Also here: ``matmul_many``, the GPU's stacked matrix product (``minidl.cpu.matmul_many`` is
the CPU's), and ``self_test()``, which checks on a GPU machine that everything the GPU path
needs is there -- a device, NVRTC and the CUDA headers to compile a ``.cu`` file, cuBLAS for
the products -- and says what is missing.
"""
import contextlib
import os
import re
import sys
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
def launcher(compile_for_host, device_array=None):
    """Inside this block, kernels run through ``compile_for_host(path, source, real_type)``,
    which returns ``function(name) -> run(n_items, args)`` -- the hook by which
    ``minidl.testing.cuda_on_cpu`` runs the kernels on the CPU. ``device_array``, if given,
    is the array type that plays device memory there: a launch that mixes it with other
    arrays is refused, as a GPU launch refuses host arrays."""
    previous = getattr(_launchers, "host", None), getattr(_launchers, "device_array", None)
    _launchers.host, _launchers.device_array = compile_for_host, device_array
    try:
        yield
    finally:
        _launchers.host, _launchers.device_array = previous


def _check_one_memory(name, parameters, values, device_array):
    """Refuse a host launch whose pointers mix ``device_array`` memory with host arrays."""
    pointers = [(p, v) for p, v in zip(parameters, values) if p.pointer]
    device = [p for p, v in pointers if isinstance(v, device_array)]
    host = [p for p, v in pointers if not isinstance(v, device_array)]
    if device and host:
        raise TypeError(f"kernel {name}: parameter {host[0].name} ({host[0].c_type} *) got a host "
                        f"(NumPy) array while {device[0].name} is in device memory; on a GPU the "
                        f"kernel would read a host address as a device one. Make it on the device "
                        f"of the op's inputs (their array module, or backend.to_device)")


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
        device_array = getattr(_launchers, "device_array", None)
        run = self._host_function(host, name, dtype) if host else self._gpu_function(name, dtype)

        def launch(n_items, *args):
            if len(args) + 1 != len(parameters):
                raise TypeError(f"kernel {name} takes the item count and {len(parameters) - 1} "
                                f"arguments ({', '.join(p.name for p in parameters[1:])}), "
                                f"got {len(args)}")
            values = [parameters[0].convert(n_items, name, on_gpu=host is None)]
            values += [p.convert(a, name, on_gpu=host is None) for p, a in zip(parameters[1:], args)]
            if device_array is not None:
                _check_one_memory(name, parameters, values, device_array)
            run(n_items, values)

        return launch

    def _host_function(self, host, name, dtype):
        key = ("host", host, real_type(dtype))
        if key not in self._modules:
            self._modules[key] = host(self.path, self.source(), real_type(dtype))
        return self._modules[key](name)

    def _gpu_function(self, name, dtype):
        real = real_type(dtype)
        key = ("gpu", real, name)
        if key not in self._modules:
            if real not in self._modules:
                import cupy
                self._modules[real] = cupy.RawModule(code=self.source(),
                                                     options=compile_options(dtype))
            function = self._modules[real].get_function(name)

            def run(n_items, values):
                function((grid_size(n_items),), (THREADS_PER_BLOCK,), tuple(values))

            self._modules[key] = run
        return self._modules[key]


def matmul_many(a, b, out):
    """out[l] = a[l] @ b[l] for every l of the stacked (L, M, K) and (L, K, N) arrays, on the
    arrays' device: the CUDA steps' counterpart of ``minidl.cpu.matmul_many``.

    A stack of several is one ``matmul``: on CuPy one strided-batched cuBLAS call (CuPy first
    copies an operand that is not C-contiguous, a transposed view for instance), computed in
    float32 whatever ``backend.allow_tf32`` says. A stack of one is a 2-D ``dot``, which CuPy
    hands straight to cuBLAS with transposes as flags (CuPy 13's ``matmul`` takes its slow
    generic path even for 2-D operands) and which follows ``backend.allow_tf32``.
    """
    xp = backend.array_module(a)
    if len(a) == 1:
        xp.dot(a[0], b[0], out=out[0])
    else:
        xp.matmul(a, b, out=out)


def matmul(a, b):
    """a @ b for 2-D arrays on their device (``dot``: see matmul_many): the counterpart of
    ``minidl.cpu.matmul``."""
    return backend.array_module(a).dot(a, b)


# -- self-test: what a GPU machine has and lacks ---------------------------------------------------

# Substrings of CuPy's errors -> what is missing, and how to get it.
_MISSING = (
    (("Failed to find CUDA headers", "auto-detect CUDA root", "cuda_runtime.h", "cuda_fp16.h"),
     "the CUDA headers NVRTC compiles against"),
    (("nvrtc",), "NVRTC, the CUDA runtime compiler"),
    (("cublas",), "cuBLAS, the matrix-product library"),
    (("cudart", "libcuda.so", "InsufficientDriver", "driver version"),
     "a CUDA runtime the NVIDIA driver supports"),
)


def _explain(error):
    text = f"{type(error).__name__}: {error}".strip()
    for needles, what in _MISSING:
        if any(n.lower() in text.lower() for n in needles):
            return (f"{text}\n      missing: {what}. {backend.INSTALL_HINT}; or a CUDA toolkit of "
                    f"the wheel's major version (CUDA_PATH)")
    return text


def _self_test_kernel():
    import cupy
    relu = KernelFile(os.path.join(os.path.dirname(HEADER), "activation.py"))
    x = np.linspace(-2, 2, 1000, dtype=np.float32)
    y = cupy.empty(x.size, dtype=np.float32)
    relu("relu_forward", np.float32)(x.size, cupy.asarray(x), y)
    if not np.array_equal(cupy.asnumpy(y), np.maximum(x, 0)):
        raise AssertionError("relu_forward gave wrong values")
    return "ops/activation.cu compiled by NVRTC; relu_forward ran and gave the right values"


def _self_test_matmul():
    import cupy
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 64, 96), dtype=np.float32)
    b = rng.standard_normal((4, 96, 32), dtype=np.float32)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    tolerance = 1e-2 if backend.tf32_allowed() else 1e-4  # TF32 keeps a 10-bit mantissa
    for stack in (1, 4):  # a 2-D dot and a strided-batched product
        out = cupy.empty((stack, 64, 32), dtype=np.float32)
        matmul_many(cupy.asarray(a[:stack]), cupy.asarray(b[:stack]), out)
        error = np.abs(cupy.asnumpy(out) - expected[:stack]).max() / np.abs(expected).max()
        if not error < tolerance:
            raise AssertionError(f"a product of {stack} matrices is off by {error:.1e}")
    return ("cuBLAS: a 2-D product and a strided-batched one match NumPy "
            f"(TF32 {'allowed' if backend.tf32_allowed() else 'off'})")


def _self_test_device():
    import cupy
    runtime = cupy.cuda.runtime
    name = runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    free, total = cupy.cuda.Device().mem_info
    return (f"{name}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free; CuPy "
            f"{cupy.__version__}, CUDA runtime {runtime.runtimeGetVersion()}, driver "
            f"{runtime.driverGetVersion()}")


def self_test(file=None):
    """Check that this machine can run minidl on its GPU, printing one line per check (to
    ``file``, stdout by default) and naming what is missing; True when every check passed.

    The checks: CuPy imports and sees a device (``backend.cuda_status``); one ``.cu`` file
    compiles with NVRTC against the CUDA headers, and its kernel runs and gives the right
    values; cuBLAS runs a 2-D and a strided-batched float32 product that match NumPy. Without
    a usable device the other checks are reported as not run; past that, each check runs even
    if the one before it failed, so one run names everything that is missing. ``benchmarks/gpu_check.sh`` runs this
    first; so can a training script at start-up::

        python -c "import sys, minidl; sys.exit(0 if minidl.cuda.self_test() else 1)"
    """
    file = sys.stdout if file is None else file
    status = backend.cuda_status()
    results = [("device", status is None, status)]
    if status is None:
        for check, run in (("device", _self_test_device), ("kernel", _self_test_kernel),
                           ("matmul", _self_test_matmul)):
            try:
                results.append((check, True, run()))
            except Exception as error:  # any failure is reported, and the next check runs
                results.append((check, False, _explain(error)))
        results = [r for r in results if r[2] is not None]
    else:
        results += [(check, False, "not run: no usable GPU") for check in ("kernel", "matmul")]
    for check, ok, detail in results:
        print(f"minidl.cuda.self_test: {check:<6} {'ok  ' if ok else 'FAIL'} {detail}", file=file)
    return all(ok for _, ok, _ in results)
