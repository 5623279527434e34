"""batch_norm and BatchNorm1d/2d: the plain-loop reference, float64 gradchecks in training and
eval mode, PyTorch's layers over their options, buffers in the state dict, bad inputs -- on
every kernel mode (Numba, the CUDA C through the CPU shim, a real GPU)."""
import contextlib

import numpy as np
import pytest

import minidl
from minidl import layers, ops
from minidl.ops.batchnorm import batch_norm_backward_simple, batch_norm_simple
from minidl.testing.cuda_on_cpu import cuda_kernels_on_cpu

SHAPES = [(4, 3, 5, 6), (6, 4), (3, 2, 7)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "1d", "1d-length"])
def test_forward_and_backward_match_loops(kernels, shape, training, dtype):
    rng = np.random.default_rng(0)
    c = shape[1]
    x = (2 * rng.standard_normal(shape) + 1).astype(dtype)
    weight, bias = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    running_mean, running_var = rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype) + 0.5
    y_expected, mean, var, new_mean, new_var = batch_norm_simple(
        x, running_mean, running_var, weight, bias, training, 0.2, 1e-3)
    rm, rv = kernels.array(running_mean.copy()), kernels.array(running_var.copy())
    t = kernels.tensor(x, requires_grad=True)
    w, b = kernels.tensor(weight, requires_grad=True), kernels.tensor(bias, requires_grad=True)
    y = ops.batch_norm(t, rm, rv, w, b, training=training, momentum=0.2, eps=1e-3)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert y.dtype == dtype
    np.testing.assert_allclose(kernels.numpy(y), y_expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(kernels.numpy(rm), new_mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(kernels.numpy(rv), new_var, rtol=tol, atol=tol)
    g = rng.standard_normal(shape).astype(dtype)
    y.backward(kernels.array(g))
    dx, dgamma, dbeta = batch_norm_backward_simple(x, g, mean, var, weight, training, 1e-3)
    np.testing.assert_allclose(kernels.numpy(t.grad), dx, rtol=50 * tol, atol=50 * tol)
    np.testing.assert_allclose(kernels.numpy(w.grad), dgamma, rtol=50 * tol, atol=50 * tol)
    np.testing.assert_allclose(kernels.numpy(b.grad), dbeta, rtol=50 * tol, atol=50 * tol)


@pytest.mark.parametrize("training, affine", [(True, True), (True, False), (False, True)],
                         ids=["training", "training-no-affine", "eval"])
def test_gradcheck(kernels, training, affine):
    rng = np.random.default_rng(1)
    x = kernels.tensor(rng.standard_normal((3, 2, 2, 3)), requires_grad=True)
    params = [kernels.tensor(rng.standard_normal(2), requires_grad=True) for _ in range(2)]
    stats = (kernels.array(rng.standard_normal(2)), kernels.array(rng.random(2) + 0.5))

    def fn(a, w, b):
        # fresh copies: training updates the running statistics in place
        return ops.batch_norm(a, stats[0].copy(), stats[1].copy(), w if affine else None,
                              b if affine else None, training=training)

    assert minidl.gradcheck(fn, [x] + params)


def test_cpu_and_cuda_kernels_give_the_same_bits():
    x = np.random.default_rng(2).standard_normal((5, 3, 9, 7)).astype(np.float32)
    g = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    results = []
    for shim in (False, True):
        with cuda_kernels_on_cpu() if shim else contextlib.nullcontext():
            t = minidl.Tensor(x, requires_grad=True)
            w = minidl.Tensor(np.linspace(0.5, 2, 3, dtype=np.float32), requires_grad=True)
            y = ops.batch_norm(t, weight=w, training=True)
            y.backward(g)
            results.append((y.numpy(), t.grad.numpy(), w.grad.numpy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layer, shape, options", [
    ("BatchNorm2d", (4, 3, 5, 5), dict()),
    ("BatchNorm2d", (4, 3, 5, 5), dict(momentum=None)),
    ("BatchNorm2d", (4, 3, 5, 5), dict(affine=False, momentum=0.3, eps=1e-3)),
    ("BatchNorm2d", (4, 3, 5, 5), dict(track_running_stats=False)),
    ("BatchNorm1d", (8, 5), dict()),
    ("BatchNorm1d", (4, 5, 6), dict(momentum=None, affine=False)),
], ids=["2d", "cumulative", "no-affine", "no-running-stats", "1d", "1d-length"])
def test_layers_match_torch(kernels, layer, shape, options):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    mine = kernels.module(getattr(layers, layer)(shape[1], dtype=np.float64, **options))
    theirs = getattr(torch.nn, layer)(shape[1], dtype=torch.float64, **options)
    if mine.weight is not None:
        weight = rng.standard_normal(shape[1])
        mine.weight.data = kernels.array(weight)
        theirs.weight.data = torch.tensor(weight)
    for step in range(3):
        for mode in ("train", "eval") if step < 2 else ("eval",):
            getattr(mine, mode)()
            getattr(theirs, mode)()
            x = rng.standard_normal(shape) * (step + 1) + step
            t = kernels.tensor(x, requires_grad=True)
            tx = torch.tensor(x, requires_grad=True)
            y, ty = mine(t), theirs(tx)
            g = rng.standard_normal(shape)
            y.backward(kernels.array(g))
            ty.backward(torch.tensor(g))
            np.testing.assert_allclose(kernels.numpy(y), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(kernels.numpy(t.grad), tx.grad.numpy(), rtol=1e-9, atol=1e-11)
    for name, value in theirs.state_dict().items():
        np.testing.assert_allclose(mine.state_dict()[name], value.numpy(), rtol=1e-12, atol=1e-14)
    assert list(mine.state_dict()) == list(theirs.state_dict())
    if mine.weight is not None:
        np.testing.assert_allclose(kernels.numpy(mine.weight.grad), theirs.weight.grad.numpy(),
                                   rtol=1e-9, atol=1e-11)


def test_buffers_are_saved_loaded_and_not_trained():
    model = layers.Sequential(layers.Conv2d(2, 3, 3), layers.BatchNorm2d(3), layers.ReLU())
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert [n for n, _ in model.named_buffers()] == ["1.running_mean", "1.running_var",
                                                     "1.num_batches_tracked"]
    x = minidl.Tensor(np.random.default_rng(5).standard_normal((4, 2, 6, 6)).astype(np.float32))
    model(x)
    state = model.state_dict()
    assert state["1.num_batches_tracked"] == 1 and state["1.running_mean"].any()
    copy = layers.Sequential(layers.Conv2d(2, 3, 3), layers.BatchNorm2d(3), layers.ReLU())
    copy.load_state_dict(state)
    model.eval(), copy.eval()
    np.testing.assert_array_equal(model(x).numpy(), copy(x).numpy())
    model.double()
    assert model[1].running_var.dtype == np.float64 and model[1].num_batches_tracked.dtype == np.int64


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: ops.batch_norm(np.zeros((1, 3, 1, 1), np.float32), training=True), ValueError,
     r"batch_norm: batch statistics need more than 1 value per channel"),
    (lambda: ops.batch_norm(np.zeros(3, np.float32)), ValueError, r"batch_norm: input must be \(N, C\)"),
    (lambda: ops.batch_norm(np.zeros((2, 3), np.float32), np.zeros(2, np.float32), np.ones(2, np.float32)),
     ValueError, r"batch_norm: running_mean must have one value per channel, shape \(3,\)"),
    (lambda: ops.batch_norm(np.zeros((2, 3), np.float32), np.zeros(3, np.float32)), ValueError,
     r"batch_norm: pass both running_mean and running_var"),
    (lambda: ops.batch_norm(np.zeros((2, 3), np.float32), momentum=2), ValueError,
     r"batch_norm: momentum must be a number in \[0, 1\]"),
    (lambda: layers.BatchNorm2d(3)(minidl.Tensor(np.zeros((2, 3, 4), np.float32))), ValueError,
     r"BatchNorm2d: input must be 4-D \(N, C, ...\)"),
    (lambda: layers.BatchNorm1d(3)(minidl.Tensor(np.zeros((2, 4), np.float32))), ValueError,
     r"BatchNorm1d: input has 4 channels"),
])
def test_bad_inputs(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
