"""Shared fixtures.

``kernels`` runs a test three ways: on the CPU kernels (NumPy/Numba), on the CUDA C kernels
compiled for the CPU (``cuda_on_cpu``, every machine with a C++ compiler), and on a real GPU
(``cuda``, skipped where CuPy sees no GPU). A test writes its inputs as NumPy arrays, passes
them through ``kernels.array`` (to the GPU, or to the shim's stand-in for device memory, so
that a host array reaching a kernel fails there as it would on a GPU) and reads results back
with ``kernels.numpy``.

Tests marked ``gpu`` (the ``cuda`` way included) need a usable GPU. Where there is none they
are skipped with the reason ``backend.cuda_status()`` gives -- CuPy missing, failing to import,
not matching the driver, no device visible -- so a broken install is named, not hidden. On a
GPU machine, ``MINIDL_REQUIRE_GPU=1`` turns that skip into a failure: a run meant to test
the GPU cannot then pass without one. TF32 stays off in every test (the float32 tolerances
assume float32 products).
"""
import contextlib
import os

import numpy as np
import pytest

import minidl
from minidl import backend
from minidl.testing import cuda_on_cpu
from minidl.testing.cuda_on_cpu import cuda_kernels_on_cpu


class KernelMode:
    def __init__(self, name):
        self.name = name

    def array(self, a):
        """``a`` on this mode's device: the GPU, the shim's device memory, or the host."""
        a = np.asarray(a)
        if self.name == "cuda":
            return backend.to_device(a, "cuda")
        return cuda_on_cpu.to_device(a) if self.name == "cuda_on_cpu" else a

    def module(self, m):
        """The module ``m`` with its parameters and buffers on this mode's device."""
        if self.name == "cuda":
            return m.to("cuda")
        if self.name == "cuda_on_cpu":
            for t in m.parameters() + m.buffers():
                t.data = cuda_on_cpu.to_device(t.data)
        return m

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


def pytest_configure(config):
    if backend.cuda_available():
        backend.allow_tf32(False)


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is None:
        return
    reason = backend.cuda_status()
    if reason is None:
        return
    if os.environ.get("MINIDL_REQUIRE_GPU", "0") not in ("", "0"):
        pytest.fail(f"MINIDL_REQUIRE_GPU is set but no GPU is usable: {reason}", pytrace=False)
    pytest.skip(f"no usable GPU: {reason}")


@pytest.fixture(params=["cpu", "cuda_on_cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def kernels(request):
    mode = KernelMode(request.param)
    with mode.context():
        yield mode


@pytest.fixture(autouse=True)
def _seed_minidl():
    minidl.manual_seed(0)
    yield


def _torchvision_alexnet(num_classes):
    """torchvision.models.alexnet's layout in plain torch.nn (torchvision itself need not be
    installed): the names of its state dict are what minidl must map."""
    from torch import nn
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 4096),
        nn.ReLU(), nn.Linear(4096, num_classes))

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.avgpool, self.classifier = features, nn.AdaptiveAvgPool2d((6, 6)), classifier

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)).flatten(1))

    return AlexNet()


@pytest.fixture
def torch_torchvision_alexnet():
    """A builder of torchvision's AlexNet in plain torch.nn (skips the test without torch)."""
    pytest.importorskip("torch")
    return _torchvision_alexnet


def _load_example(name):
    """Import ``examples/<name>.py`` as running it would: with its folder on sys.path, for
    ``import common``. A fresh module each time."""
    import importlib.util
    import os
    import sys

    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


@pytest.fixture(scope="session")
def load_example():
    """``load_example(name)``: an example script imported as a module (its ``main``, ...)."""
    return _load_example
