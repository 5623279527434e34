"""The GPU path's set-up, checked on any machine: why the GPU is not usable (``cuda_status``),
what the self-test reports, that a broken CuPy cannot make the GPU tests pass by skipping
them when ``MINIDL_REQUIRE_GPU=1``, and the TF32 switch. CuPy's failures are played by small
fake ``cupy`` modules, with the exact messages real installs give; the tests marked ``gpu``
run the same checks on a real GPU.
"""
import io
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import minidl
from minidl import backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What cupy-cuda13x on a machine whose driver is older than CUDA 13 raises (the audit saw it).
DRIVER_ERROR = "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
HEADERS_ERROR = ("Failed to find CUDA headers. Please install CUDA toolkit headers (e.g., pip "
                 "install cupy-cuda12x[ctk]) or specify CUDA_PATH")
CUBLAS_ERROR = "libcublas.so.13: cannot open shared object file: No such file or directory"


class _Raises:
    def __init__(self, error):
        self.error = error

    def __call__(self, *args, **kwargs):
        raise self.error


def fake_cupy(devices=1, device_error=None, compile_error=None, matmul_error=None):
    """A stand-in for the ``cupy`` module, as much of it as minidl touches before failing."""
    class ndarray:  # noqa: N801 - CuPy's name
        def __init__(self, shape):
            self.shape = shape

        def __len__(self):
            return self.shape[0]

        def __getitem__(self, index):
            return ndarray(self.shape[1:])

    def device_count():
        if device_error is not None:
            raise device_error
        return devices

    runtime = types.SimpleNamespace(
        getDeviceCount=device_count, getDeviceProperties=lambda i: {"name": b"Fake GPU"},
        runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000)
    device = types.SimpleNamespace(id=0, mem_info=(2**34, 2**35))
    return types.SimpleNamespace(
        __version__="14.2.0", ndarray=ndarray,
        cuda=types.SimpleNamespace(runtime=runtime, Device=lambda: device),
        empty=lambda shape, dtype=None: ndarray(shape), asarray=lambda a: ndarray(np.shape(a)),
        RawModule=_Raises(compile_error or RuntimeError("no compile in this fake")),
        dot=_Raises(matmul_error or RuntimeError("no matmul in this fake")),
        matmul=_Raises(matmul_error or RuntimeError("no matmul in this fake")))


def test_cuda_status_names_the_reason_the_gpu_is_not_usable(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_import_error", ModuleNotFoundError("No module named 'cupy'", name="cupy"))
    assert backend.cuda_status().startswith("CuPy is not installed: pip install -e '.[cuda]'")
    assert not backend.cuda_available()

    monkeypatch.setattr(backend, "_cupy_import_error", ImportError("libcudart.so.13: cannot open shared object file"))
    assert backend.cuda_status() == ("CuPy is installed but failed to import (ImportError: "
                                     "libcudart.so.13: cannot open shared object file)")

    monkeypatch.setattr(backend, "_cupy", fake_cupy(device_error=RuntimeError(DRIVER_ERROR)))
    assert DRIVER_ERROR in backend.cuda_status()
    assert "matches the driver" in backend.cuda_status()
    with pytest.raises(RuntimeError, match="no CUDA GPU is usable: CuPy 14.2.0 cannot use the GPU "
                                           r"\(RuntimeError: cudaErrorInsufficientDriver"):
        backend.normalize_device("cuda")

    monkeypatch.setattr(backend, "_cupy", fake_cupy(devices=0))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert backend.cuda_status() == "CuPy sees no CUDA device (CUDA_VISIBLE_DEVICES='')"

    monkeypatch.setattr(backend, "_cupy", fake_cupy(devices=1))
    assert backend.cuda_status() is None and backend.cuda_available()


def test_self_test_without_a_gpu_says_why_and_fails(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_import_error", ModuleNotFoundError("No module named 'cupy'", name="cupy"))
    out = io.StringIO()
    assert minidl.cuda.self_test(file=out) is False
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("minidl.cuda.self_test: device FAIL CuPy is not installed")
    assert lines[1:] == ["minidl.cuda.self_test: kernel FAIL not run: no usable GPU",
                         "minidl.cuda.self_test: matmul FAIL not run: no usable GPU"]


def test_self_test_names_missing_headers_and_cublas(monkeypatch):
    """A machine with only the driver and a CuPy without its [ctk] extra: the kernel cannot
    compile and the product cannot load cuBLAS; each is named with the install that fixes it."""
    fake = fake_cupy(compile_error=RuntimeError(HEADERS_ERROR), matmul_error=OSError(CUBLAS_ERROR))
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "tf32_allowed", lambda: False)
    out = io.StringIO()
    assert minidl.cuda.self_test(file=out) is False
    text = out.getvalue()
    assert "device ok   Fake GPU, 16.0 of 32.0 GiB free; CuPy 14.2.0" in text
    assert f"kernel FAIL RuntimeError: {HEADERS_ERROR}" in text
    assert "missing: the CUDA headers NVRTC compiles against. pip install -e '.[cuda]'" in text
    assert f"matmul FAIL OSError: {CUBLAS_ERROR}" in text
    assert "missing: cuBLAS, the matrix-product library. pip install -e '.[cuda]'" in text


def _run_gpu_test(tmp_path, cupy_source, require):
    """pytest, in a child process, on this file's GPU test, with ``cupy_source`` as the only
    CuPy it can import."""
    fake = tmp_path / "fake" / "cupy"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text(cupy_source)
    env = {k: v for k, v in os.environ.items() if k != "MINIDL_REQUIRE_GPU"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "fake"), ROOT])
    if require:
        env["MINIDL_REQUIRE_GPU"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_gpu_setup.py::test_the_self_test_passes_on_the_gpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_broken_cupy_skips_with_its_error_and_fails_when_a_gpu_is_required(tmp_path):
    broken = ("class ndarray:\n    pass\n"
              "class _Runtime:\n    @staticmethod\n    def getDeviceCount():\n"
              f"        raise RuntimeError({DRIVER_ERROR!r})\n"
              "class cuda:\n    runtime = _Runtime\n")
    skipped = _run_gpu_test(tmp_path, broken, require=False)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "1 skipped" in skipped.stdout
    assert f"no usable GPU: CuPy ? cannot use the GPU (RuntimeError: {DRIVER_ERROR})" in skipped.stdout

    failed = _run_gpu_test(tmp_path, broken, require=True)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "1 error" in failed.stdout
    assert "MINIDL_REQUIRE_GPU is set but no GPU is usable: CuPy ? cannot use the GPU" in failed.stdout


def test_allow_tf32_sets_cupys_compute_type(monkeypatch):
    chosen = {}
    linalg = types.SimpleNamespace(COMPUTE_TYPE_DEFAULT=1, COMPUTE_TYPE_TF32=7)
    core = types.SimpleNamespace(
        _routines_linalg=linalg, set_compute_type=lambda dtype, kind: chosen.__setitem__(np.dtype(dtype), kind),
        get_compute_type=lambda dtype: chosen.get(np.dtype(dtype), 1))
    monkeypatch.setattr(backend, "_cupy", types.SimpleNamespace(_core=core))
    assert not backend.tf32_allowed()
    backend.allow_tf32(True)
    assert chosen == {np.dtype(np.float32): 7} and backend.tf32_allowed()
    backend.allow_tf32(False)
    assert chosen == {np.dtype(np.float32): 1} and not backend.tf32_allowed()


@pytest.mark.gpu
def test_the_self_test_passes_on_the_gpu():
    out = io.StringIO()
    assert minidl.cuda.self_test(file=out), out.getvalue()
    assert "TF32 off" in out.getvalue()  # the tests run without TF32 (conftest)


@pytest.mark.gpu
def test_allow_tf32_switches_cupy_and_tests_run_without_it():
    assert not backend.tf32_allowed()
    try:
        backend.allow_tf32(True)
        assert backend.tf32_allowed()
    finally:
        backend.allow_tf32(False)
    assert not backend.tf32_allowed()


def test_a_training_step_reads_nothing_back_from_the_device():
    """Forward, loss, backward and the SGD update of a small network on the shim's device
    memory (conv, fused ReLU, LRN, pooling, dropout, linear, cross-entropy): nothing makes the
    host wait for the device, so on a GPU the host can queue the whole step."""
    from minidl import layers, ops, optim
    from minidl.testing import cuda_on_cpu

    rng = np.random.default_rng(5)
    net = layers.Sequential(
        layers.Conv2d(3, 4, 3, padding=1), layers.ReLU(), layers.LocalResponseNorm(3, 1e-4, 0.75, 2.0),
        layers.MaxPool2d(3, 2), layers.Conv2d(4, 6, 5, padding=2, groups=2, algorithm="im2col"),
        layers.ReLU(), layers.Flatten(), layers.Dropout(0.5), layers.Linear(6 * 3 * 3, 5))
    opt = optim.SGD(net.parameters(), lr=0.01)
    with cuda_on_cpu.cuda_kernels_on_cpu():
        for t in net.parameters():
            t.data = cuda_on_cpu.to_device(t.data)
        x = minidl.Tensor(cuda_on_cpu.to_device(rng.standard_normal((2, 3, 7, 7)).astype(np.float32)))
        labels = cuda_on_cpu.to_device(np.array([1, 4]))
        before = cuda_on_cpu.host_reads()
        for _ in range(2):
            loss = ops.cross_entropy(net(x), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert cuda_on_cpu.host_reads() == before
        assert np.isfinite(float(loss.data))


def test_a_steps_numbers_come_back_from_the_device_in_one_transfer(monkeypatch):
    """fit reads the loss, the gradient norm and the scores for the metrics (which then run on
    the host) in one transfer per step, evaluate the loss and scores in one per batch: shapes,
    dtypes and values come back intact, None passes through."""
    from minidl import backend, train
    from minidl.testing import cuda_on_cpu

    transfers = []
    to_numpy = backend.to_numpy
    monkeypatch.setattr(backend, "to_numpy", lambda a: transfers.append(a.shape) or to_numpy(a))
    rng = np.random.default_rng(0)
    loss = np.float32(0.75).reshape(())
    scores = rng.standard_normal((3, 4)).astype(np.float32)
    counts = np.array([2**40 + 1, -3], dtype=np.int64)
    with cuda_on_cpu.cuda_kernels_on_cpu():
        on_device = [cuda_on_cpu.to_device(a) for a in (loss, scores, counts)]
        before = cuda_on_cpu.host_reads()
        back = train._to_host(on_device[0], None, on_device[1], on_device[2])
        assert cuda_on_cpu.host_reads() == before and len(transfers) == 1
    assert back[1] is None
    for original, returned in zip((loss, scores, counts), (back[0], back[2], back[3])):
        assert type(returned) is np.ndarray and returned.dtype == original.dtype
        np.testing.assert_array_equal(returned, original)
    assert train._to_host(loss, None) == (loss, None)  # host arrays: no transfer, as they are
    assert len(transfers) == 1


def test_batches_travel_to_the_gpu_one_step_ahead_from_pinned_memory(monkeypatch):
    """fit's input path on a GPU (a fake CuPy recording what happens, in order): batch k+1's
    images are copied from page-locked memory on a side stream before batch k is handed to
    the step; the host waits for a copy only when its batch is next; the labels and the
    loader's position taken with each batch travel with it unchanged."""
    import types
    from minidl import train
    from minidl.data import ArrayDataset, DataLoader

    log = []

    class Event:
        def __init__(self, k):
            self.k = k

        def synchronize(self):
            log.append(("wait", self.k))

    class Stream:
        copies = 0

        def __init__(self, non_blocking=False):
            assert non_blocking

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def record(self):
            Stream.copies += 1
            return Event(Stream.copies - 1)

    class OnDevice(np.ndarray):
        def set(self, host, stream=None):
            assert isinstance(stream, Stream) and getattr(host, "pinned", False)
            self[...] = host
            log.append(("copy", Stream.copies))

    def empty_pinned(shape, dtype):
        array = np.empty(shape, dtype).view(type("Pinned", (np.ndarray,), {}))
        array.pinned = True
        return array

    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(Stream=Stream),
                                 empty=lambda shape, dtype: np.empty(shape, dtype).view(OnDevice))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=empty_pinned))
    images = np.arange(5 * 2 * 3 * 3, dtype=np.float32).reshape(5, 2, 3, 3)
    loader = DataLoader(ArrayDataset(images, [0, 1, 2, 0, 1]), 2, num_workers=0)
    seen = []
    for k, ((x, y), state) in enumerate(train._batches(loader, "cuda", "fit")):
        log.append(("step", k))
        assert isinstance(x, OnDevice) and isinstance(y, np.ndarray)
        np.testing.assert_array_equal(x, images[2 * k:2 * k + 2])
        seen.append((list(y), state["batch"]))
    assert seen == [([0, 1], 1), ([2, 0], 2), ([1], 0)]  # the last: the next epoch's start
    assert log == [("copy", 0), ("copy", 1), ("wait", 0), ("step", 0), ("copy", 2), ("wait", 1),
                   ("step", 1), ("wait", 2), ("step", 2)]
    assert [state for _, state in train._batches(loader, "cpu", "fit")][0]["batch"] == 1  # no copies
