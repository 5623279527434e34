"""Compile CUDA C with NVRTC -- the compiler CuPy uses -- on a machine with no GPU.

``nvcc`` accepts things NVRTC rejects (``INFINITY`` is undefined under NVRTC, and NVRTC has
no standard headers), so checking the ``.cu`` files with ``nvcc`` alone proves little. NVRTC
itself needs no GPU: the ``nvidia-cuda-nvrtc`` wheel ships the library, and a few ctypes
calls drive it. ``compile_source`` returns PTX (or a cubin) or raises ``NvrtcError`` carrying
NVRTC's log.

``compile_file`` compiles as minidl's loader asks CuPy to (PTX for ``compute_90``);
``compile_file_as_cupy`` adds what CuPy itself adds when it builds a ``RawModule`` -- flushing
float32 denormals to zero, device code by default -- and produces machine code (a cubin) for
a real architecture, so a construct that compiles to PTX but not under CuPy's flags or for a
real GPU fails here too.
"""
import ctypes
import glob
import os

import numpy as np

from .. import cuda as _cuda

# The architecture CuPy would target on an H100; compiling for it checks the code, not a GPU.
DEFAULT_ARCH = "compute_90"
# What CuPy adds to a RawModule's options (cupy/cuda/compiler.py) and the real architectures
# of the H100/H200, B200 and RTX 50 series.
CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
REAL_ARCHS = ("sm_90", "sm_100", "sm_120")


class NvrtcError(RuntimeError):
    pass


_nvrtc = None


def _library_dirs():
    try:
        import nvidia
        roots = list(nvidia.__path__)
    except ImportError:
        roots = []
    dirs = []
    for root in roots:
        dirs += sorted(glob.glob(os.path.join(root, "*", "lib")))
    dirs += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
    return dirs


def load():
    """Load libnvrtc (and its builtins, which it finds only if loaded globally first)."""
    global _nvrtc
    if _nvrtc is not None:
        return _nvrtc
    for directory in _library_dirs():
        for builtins in sorted(glob.glob(os.path.join(directory, "libnvrtc-builtins.so.*"))):
            if ".alt." in builtins:
                continue
            libs = [p for p in sorted(glob.glob(os.path.join(directory, "libnvrtc.so.*")))
                    if ".alt." not in p]
            if not libs:
                continue
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            _nvrtc = ctypes.CDLL(libs[0])
            return _nvrtc
    raise OSError("libnvrtc not found: pip install 'nvidia-cuda-nvrtc==13.0.*' (it needs no GPU)")


def available():
    try:
        load()
        return True
    except OSError:
        return False


def _check(lib, status, what):
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise NvrtcError(f"{what}: {lib.nvrtcGetErrorString(status).decode()}")


def compile_source(source, name="kernel.cu", options=(), cubin=False):
    """Compile ``source`` to PTX (or, ``cubin=True`` with a real ``sm_XX`` architecture, to
    machine code) with NVRTC; raise ``NvrtcError`` with the log on failure."""
    lib = load()
    program = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(),
                                       0, None, None), "nvrtcCreateProgram")
    try:
        encoded = [o.encode() for o in options]
        option_array = (ctypes.c_char_p * len(encoded))(*encoded)
        status = lib.nvrtcCompileProgram(program, len(encoded), option_array)
        log_size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(log_size))
        log = ctypes.create_string_buffer(log_size.value)
        lib.nvrtcGetProgramLog(program, log)
        if status != 0:
            raise NvrtcError(f"NVRTC could not compile {name} with {list(options)}:\n"
                             f"{log.value.decode(errors='replace')}")
        if cubin:
            size = ctypes.c_size_t()
            _check(lib, lib.nvrtcGetCUBINSize(program, ctypes.byref(size)), "nvrtcGetCUBINSize")
            code = ctypes.create_string_buffer(size.value)
            _check(lib, lib.nvrtcGetCUBIN(program, code), "nvrtcGetCUBIN")
            return code.raw
        ptx_size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetPTXSize(program, ctypes.byref(ptx_size)), "nvrtcGetPTXSize")
        ptx = ctypes.create_string_buffer(ptx_size.value)
        _check(lib, lib.nvrtcGetPTX(program, ptx), "nvrtcGetPTX")
        return ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def compile_file(cu_path, dtype, arch=DEFAULT_ARCH):
    """Compile one of minidl's ``.cu`` files exactly as ``minidl.cuda.KernelFile`` does:
    ``common.cuh`` pasted in, with the same options."""
    source = _cuda.expand_source(cu_path)
    options = (f"--gpu-architecture={arch}",) + _cuda.compile_options(np.dtype(dtype))
    return compile_source(source, os.path.basename(cu_path), options)


def compile_file_as_cupy(cu_path, dtype, arch=REAL_ARCHS[0]):
    """The cubin of one ``.cu`` file for the real architecture ``arch``, compiled with the
    options minidl gives CuPy plus those CuPy adds itself (module docstring)."""
    source = _cuda.expand_source(cu_path)
    options = ((f"--gpu-architecture={arch}",) + _cuda.compile_options(np.dtype(dtype))
               + CUPY_OPTIONS)
    return compile_source(source, os.path.basename(cu_path), options, cubin=True)
