"""Shared fixtures.

``kernels`` runs a test three ways: on the CPU kernels (NumPy/Numba), on the CUDA C kernels
compiled for the CPU (``cuda_on_cpu``, every machine with a C++ compiler), and on a real GPU
(``cuda``, skipped where CuPy sees no GPU). A test writes its inputs as NumPy arrays, passes
them through ``kernels.array`` and reads results back with ``kernels.numpy``.
"""
import contextlib

import numpy as np
import pytest

import minidl
from minidl import backend
from minidl.testing.cuda_on_cpu import cuda_kernels_on_cpu


class KernelMode:
    def __init__(self, name):
        self.name = name

    def array(self, a):
        a = np.asarray(a)
        return backend.to_device(a, "cuda") if self.name == "cuda" else a

    def tensor(self, a, requires_grad=False):
        return minidl.Tensor(self.array(a), requires_grad=requires_grad)

    def numpy(self, a):
        if isinstance(a, minidl.Tensor):
            a = a.data
        return backend.to_numpy(a)

    def context(self):
        if self.name == "cuda_on_cpu":
            return cuda_kernels_on_cpu()
        return contextlib.nullcontext()


@pytest.fixture(params=["cpu", "cuda_on_cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def kernels(request):
    if request.param == "cuda" and not backend.cuda_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    mode = KernelMode(request.param)
    with mode.context():
        yield mode


@pytest.fixture(autouse=True)
def _seed_minidl():
    minidl.manual_seed(0)
    yield
