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
from minidl.testing import cuda_on_cpu, nvrtc

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
    ptx = nvrtc.compile_file(cu_path, dtype)
    for name in re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)', open(cu_path).read()):
        assert f".entry {name}(" in ptx, f"kernel {name} missing from the PTX of {cu_path}"


@needs_nvrtc
def test_nvrtc_rejects_what_only_nvcc_accepts():
    source = 'extern "C" __global__ void fill(float* y) { y[threadIdx.x] = INFINITY; }'
    with pytest.raises(nvrtc.NvrtcError, match="INFINITY"):
        nvrtc.compile_source(source, "fill.cu", ("--gpu-architecture=compute_90",))


def test_shim_runs_a_grid_stride_kernel_like_the_gpu(tmp_path):
    source = tmp_path / "scale.cu"
    source.write_text(
        '// y[i] = a * x[i] + i: each thread owns elements i = tid, tid + stride, ...\n'
        'extern "C" __global__ void scale(const real_t* x, real_t* y, real_t a, long long n) {\n'
        '  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;\n'
        '       i += (long long)blockDim.x * gridDim.x) y[i] = a * x[i] + (real_t)i;\n'
        '}\n')
    for dtype, real in [(np.float32, "float"), (np.float64, "double")]:
        x = np.arange(29, dtype=dtype)
        y = np.zeros_like(x)
        cuda_on_cpu.kernel(str(source), "scale", real)(x.size, x, y, dtype(2), np.int64(x.size))
        np.testing.assert_array_equal(y, 3 * x)
    with pytest.raises(TypeError, match="NumPy scalars"):
        cuda_on_cpu.kernel(str(source), "scale", "float")(3, x, y, 2.0, 3)
