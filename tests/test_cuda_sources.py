"""Checks of the CUDA C sources that need no GPU: NVRTC compiles every .cu file, and the
CPU shim runs a kernel with the GPU's grid-stride semantics.

The per-op tests run each op's kernels through the shim against the CPU kernels; this file
covers the sources as a whole.
"""
import glob
import os
import re

import numpy as np
import pytest

import minidl
from minidl import cuda
from minidl.testing import cuda_on_cpu, nvrtc
from minidl.testing.cuda_on_cpu import cuda_kernels_on_cpu

OPS_DIR = os.path.join(os.path.dirname(minidl.__file__), "ops")
CU_FILES = sorted(glob.glob(os.path.join(OPS_DIR, "*.cu")))

needs_nvrtc = pytest.mark.skipif(not nvrtc.available(),
                                 reason="NVRTC not installed (pip install 'nvidia-cuda-nvrtc==13.0.*')")


def test_every_op_with_cuda_kernels_has_its_cu_file_beside_it():
    users = [p for p in glob.glob(os.path.join(OPS_DIR, "*.py")) if "KernelFile(__file__)" in open(p).read()]
    assert users, "no op loads CUDA kernels"
    for path in users:
        assert os.path.exists(path[:-3] + ".cu"), f"{path} loads kernels but has no .cu file"
    assert {p[:-3] for p in users} == {p[:-3] for p in CU_FILES}


@needs_nvrtc
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cu_path", CU_FILES, ids=os.path.basename)
def test_cuda_source_compiles_under_nvrtc(cu_path, dtype):
    """Every kernel is in the PTX; none spills an array to local memory (a table or a tile
    indexed at run time: slow, and easy to miss); float32 code never computes in double."""
    ptx = nvrtc.compile_file(cu_path, dtype)
    for name in re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)', open(cu_path).read()):
        assert f".entry {name}(" in ptx, f"kernel {name} missing from the PTX of {cu_path}"
    assert ".local" not in ptx, f"{os.path.basename(cu_path)} keeps an array in local memory"
    if dtype == np.float32:
        assert ".f64" not in ptx, f"the float32 {os.path.basename(cu_path)} computes in double"


@needs_nvrtc
@pytest.mark.parametrize("arch", nvrtc.REAL_ARCHS)
@pytest.mark.parametrize("cu_path", CU_FILES + [os.path.join(os.path.dirname(OPS_DIR), "optim.cu")],
                         ids=os.path.basename)
def test_cuda_source_compiles_to_machine_code_with_cupys_options(cu_path, arch):
    """What CuPy does on a GPU machine: its own options added (-ftz, device code by default)
    and machine code for a real architecture (H100/H200, B200, RTX 50), both dtypes."""
    for dtype in (np.float32, np.float64):
        cubin = nvrtc.compile_file_as_cupy(cu_path, dtype, arch)
        assert cubin[:4] == b"\x7fELF", f"{cu_path} for {arch} gave no cubin"


@needs_nvrtc
def test_nvrtc_rejects_what_only_nvcc_accepts():
    source = 'extern "C" __global__ void fill(float* y) { y[threadIdx.x] = INFINITY; }'
    with pytest.raises(nvrtc.NvrtcError, match="INFINITY"):
        nvrtc.compile_source(source, "fill.cu", ("--gpu-architecture=compute_90",))


SCALE_CU = """#include "common.cuh"
// y[i] = a * x[i] + i. One thread owns one element.
extern "C" __global__ void scale(long long n, const real_t* x, real_t* y, real_t a) {
    FOR_EACH(i, n) {
        y[i] = a * x[i] + (real_t)i;
    }
}
"""


def test_shim_runs_a_grid_stride_kernel_like_the_gpu(tmp_path):
    (tmp_path / "scale.cu").write_text(SCALE_CU)
    kernels = cuda.KernelFile(str(tmp_path / "scale.py"))
    with cuda_kernels_on_cpu():
        for dtype in (np.float32, np.float64):
            x = np.arange(29, dtype=dtype)
            y = np.zeros_like(x)
            kernels("scale", dtype)(x.size, x, y, 2)  # 2 becomes real_t, x.size long long
            np.testing.assert_array_equal(y, 3 * x)


def test_the_launcher_checks_every_argument_against_the_c_signature(tmp_path):
    (tmp_path / "scale.cu").write_text(SCALE_CU)
    kernels = cuda.KernelFile(str(tmp_path / "scale.py"))
    x32, y32 = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with cuda_kernels_on_cpu():
        launch = kernels("scale", np.float32)
        with pytest.raises(TypeError, match=r"kernel scale: parameter x \(float \*\) needs float32 "
                                            r"elements, got a float64 array"):
            launch(4, x32.astype(np.float64), y32, 2)
        with pytest.raises(TypeError, match="kernel scale takes the item count and 3 arguments"):
            launch(4, x32, y32)
        with pytest.raises(TypeError, match=r"parameter x \(float \*\) needs an array, got float"):
            launch(4, 1.0, y32, 2)
        with pytest.raises(TypeError, match=r"parameter a \(float\) needs a scalar, got ndarray"):
            launch(4, x32, y32, x32)
        with pytest.raises(TypeError, match=r"parameter n \(long long\) needs an integer, got 4.5"):
            launch(4.5, x32, y32, 2)
        with pytest.raises(ValueError, match=r"parameter x \(float \*\) must be C-contiguous"):
            launch(2, x32[::2], y32, 2)
    # On a GPU, a NumPy array where the kernel expects a device pointer is refused before the
    # launch (it would be read as a device address and break the CUDA context).
    pointer = kernels.signature("scale", np.float32)[1]
    with pytest.raises(TypeError, match=r"runs on the GPU but got a host \(NumPy\) array"):
        pointer.convert(x32, "scale", on_gpu=True)


def test_every_kernel_follows_the_house_convention():
    """Every .cu file (ops/ and optim.cu) starts from common.cuh; every kernel takes its item
    count first and is one FOR_EACH loop, and is launched by name from the .py file of the same
    name beside it (the op's prefix: relu_, max_pool2d_, winograd_...), so none is dead or
    lives away from its op."""
    for path in CU_FILES + [os.path.join(os.path.dirname(OPS_DIR), "optim.cu")]:
        source = open(path).read()
        assert source.startswith('#include "common.cuh"'), path
        kernels = re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)\s*\{',
                             source)
        assert kernels, path
        driver = open(path[:-len(".cu")] + ".py").read()
        for name, parameters in kernels:
            assert parameters.split(",")[0].split() == ["long", "long", "n"], (path, name)
            assert "FOR_EACH(" in source.split(name, 1)[1].split("extern", 1)[0], (path, name)
            assert f'"{name}"' in driver, f"{name} of {path} is not launched from its .py file"
        assert "blockIdx.x * blockDim.x" not in source, f"{path} writes its own grid-stride loop"


WIDTHS_CU = """#include "common.cuh"
// y[i] = a + b + i for i < n, with a an int and b a long long. One thread owns one element.
extern "C" __global__ void widths(long long n, long long* y, int a, long long b) {
    FOR_EACH(i, n) {
        y[i] = (long long)a + b + i;
    }
}
"""


def test_int_and_long_long_arguments_arrive_at_their_declared_width(tmp_path):
    """On a GPU the driver copies each parameter's declared size from the argument's buffer,
    so a 4-byte int passed where a long long is declared would be read with 4 stray bytes,
    and the CPU would not show it. The launcher converts every scalar to its parameter's
    exact C type first, and refuses a value the type cannot hold."""
    (tmp_path / "widths.cu").write_text(WIDTHS_CU)
    kernels = cuda.KernelFile(str(tmp_path / "widths.py"))
    parameters = kernels.signature("widths", np.float32)
    assert [(p.name, p.c_type, p.pointer) for p in parameters] == [
        ("n", "long long", False), ("y", "long long", True), ("a", "int", False), ("b", "long long", False)]
    a, b = parameters[2], parameters[3]
    assert a.convert(np.int64(7), "widths", on_gpu=True).dtype == np.int32
    assert b.convert(np.int32(7), "widths", on_gpu=True).dtype == np.int64
    assert b.convert(2**40, "widths", on_gpu=True) == 2**40
    with pytest.raises(OverflowError, match=r"parameter a \(int\): 2147483648 does not fit in int"):
        a.convert(2**31, "widths", on_gpu=True)
    with pytest.raises(TypeError, match=r"parameter b \(long long\) needs an integer, got 1.5"):
        b.convert(1.5, "widths", on_gpu=True)
    y = np.zeros(5, np.int64)
    with cuda_kernels_on_cpu():
        kernels("widths", np.float32)(y.size, y, np.int64(-3), np.int32(2**30))
        np.testing.assert_array_equal(y, 2**30 - 3 + np.arange(5))
        with pytest.raises(TypeError, match=r"parameter y \(long long \*\) needs int64 elements, got a int32"):
            kernels("widths", np.float32)(5, np.zeros(5, np.int32), 1, 2)


def test_the_shim_refuses_a_launch_that_mixes_host_and_device_memory(tmp_path):
    """The shim's device memory (``DeviceArray``) makes a host array passed to a kernel fail
    on the CPU as it would on a GPU; a launch of host arrays only (a test routing NumPy arrays
    through the CUDA kernels) is allowed. Reductions stay on the device, and reading one back
    is counted as a host read."""
    (tmp_path / "scale.cu").write_text(SCALE_CU)
    kernels = cuda.KernelFile(str(tmp_path / "scale.py"))
    x = np.arange(6, dtype=np.float32)
    with cuda_kernels_on_cpu():
        launch = kernels("scale", np.float32)
        on_device = cuda_on_cpu.to_device(x)
        with pytest.raises(TypeError, match=r"kernel scale: parameter y \(float \*\) got a host \(NumPy\) "
                                            r"array while x is in device memory"):
            launch(6, on_device, np.zeros(6, np.float32), 2)
        y = minidl.backend.array_module(on_device).zeros_like(on_device)
        assert isinstance(y, cuda_on_cpu.DeviceArray)
        launch(6, on_device, y, 2)
        plain = np.zeros(6, np.float32)
        launch(6, x, plain, 2)
        np.testing.assert_array_equal(y, plain)
        total = y.sum()
        assert isinstance(total, cuda_on_cpu.DeviceArray) and total.shape == ()
        before = cuda_on_cpu.host_reads()
        assert float(total) == 45 and y[y > 4].size == 4
        assert cuda_on_cpu.host_reads() == before + 2
