"""Losses and the softmax family: plain-loop references, float64 gradchecks, extreme logits,
agreement with torch, and bad inputs, on every kernel mode."""
import math
import os
import warnings

import numpy as np
import pytest

import minidl
from minidl import ops
from minidl.ops.loss import (binary_cross_entropy_with_logits_simple, cross_entropy_simple,
                             log_softmax_simple,
                             softmax_cross_entropy_simple)
from minidl.testing import nvrtc
from minidl.testing.cuda_on_cpu import cuda_kernels_on_cpu

CU_FILE = os.path.join(os.path.dirname(minidl.__file__), "ops", "loss.cu")


# -- softmax cross-entropy --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, k", [(1, 1), (1, 5), (7, 3), (16, 10)])
def test_cross_entropy_matches_loop(kernels, dtype, n, k):
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((n, k))).astype(dtype)
    labels = rng.integers(0, k, n)
    x = kernels.tensor(logits, requires_grad=True)
    loss = ops.softmax_cross_entropy(x, labels)
    loss.backward()
    expected_loss, expected_grad = softmax_cross_entropy_simple(logits, labels)
    assert loss.shape == () and loss.dtype == dtype and x.grad.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss.item(), expected_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(kernels.numpy(x.grad), expected_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("n, k", [(1, 2), (5, 4), (3, 17)])
def test_cross_entropy_gradcheck(kernels, n, k):
    rng = np.random.default_rng(1)
    x = kernels.tensor(rng.standard_normal((n, k)), requires_grad=True)
    labels = rng.integers(0, k, n)
    assert minidl.gradcheck(lambda t: ops.softmax_cross_entropy(t, labels), [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_cross_entropy_with_huge_logits_is_finite_and_right(kernels, dtype, scale):
    logits = np.array([[1, 0, -1], [0, 1, 0.5], [-1, -1, -1], [1, 0.999, -1]], dtype=dtype) * dtype(scale)
    labels = np.array([0, 2, 1, 1])
    x = kernels.tensor(logits, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = ops.softmax_cross_entropy(x, labels)
        loss.backward()
    expected_loss, expected_grad = softmax_cross_entropy_simple(logits.astype(np.float64), labels)
    assert np.isfinite(loss.item()) and np.isfinite(kernels.numpy(x.grad)).all()
    np.testing.assert_allclose(loss.item(), expected_loss, rtol=1e-6)
    np.testing.assert_allclose(kernels.numpy(x.grad), expected_grad, rtol=1e-5, atol=1e-7)


def test_cross_entropy_scales_with_the_incoming_gradient_and_backward_repeats(kernels):
    rng = np.random.default_rng(2)
    logits, labels = rng.standard_normal((4, 6)), rng.integers(0, 6, 4)
    x = kernels.tensor(logits, requires_grad=True)
    loss = ops.softmax_cross_entropy(x, labels) * 3.0
    loss.backward(retain_graph=True)
    first = kernels.numpy(x.grad).copy()
    loss.backward()  # the saved arrays were not changed by the first backward
    _, expected = softmax_cross_entropy_simple(logits, labels)
    np.testing.assert_allclose(first, 3 * expected, rtol=1e-12)
    np.testing.assert_allclose(kernels.numpy(x.grad), 6 * expected, rtol=1e-12)


@pytest.mark.parametrize("make_labels", [
    lambda a: a, lambda a: a.astype(np.uint8), lambda a: a.astype(np.int32), lambda a: a.tolist(),
    lambda a: minidl.Tensor(a),
], ids=["int64", "uint8", "int32", "list", "tensor"])
def test_cross_entropy_label_forms(kernels, make_labels):
    rng = np.random.default_rng(3)
    logits, labels = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    loss = ops.softmax_cross_entropy(kernels.tensor(logits), make_labels(labels))
    np.testing.assert_allclose(loss.item(), softmax_cross_entropy_simple(logits, labels)[0], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    logits = (5 * rng.standard_normal((32, 10))).astype(dtype)
    logits[0] = [1e4, -1e4] * 5  # extreme rows too
    labels = rng.integers(0, 10, 32)
    for shim in (False, True):
        with cuda_kernels_on_cpu() if shim else _nothing():
            x = minidl.Tensor(logits, requires_grad=True)
            loss = ops.softmax_cross_entropy(x, labels)
            loss.backward()
        t = torch.tensor(logits, requires_grad=True)
        expected = torch.nn.functional.cross_entropy(t, torch.tensor(labels))
        expected.backward()
        tol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(loss.item(), expected.item(), rtol=tol)
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=tol, atol=tol)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_cross_entropy_bad_inputs():
    logits = minidl.Tensor(np.zeros((3, 4), dtype=np.float32))
    op = "cross_entropy"
    with pytest.raises(TypeError, match=f"{op}: logits has dtype int64; expected float32 or float64"):
        ops.softmax_cross_entropy(minidl.Tensor(np.zeros((3, 4), dtype=np.int64)), [0, 1, 2])
    with pytest.raises(TypeError, match=f"{op}: logits has dtype float16"):
        ops.softmax_cross_entropy(logits.astype(np.float16), [0, 1, 2])
    with pytest.raises(ValueError, match=rf"{op}: expected labels of shape \(\) \(one per example\), got shape \(1,\)"):
        ops.softmax_cross_entropy(minidl.Tensor(np.zeros(4, dtype=np.float32)), [0])
    with pytest.raises(ValueError, match=rf"{op}: labels must lie in \[0, 3\] for 4 classes \(or be ignore_index=-100\), got values from 0 to 4"):
        ops.softmax_cross_entropy(logits, [0, 4, 1])
    with pytest.raises(ValueError, match=rf"{op}: labels must lie in \[0, 3\].*from -1 to 2"):
        ops.softmax_cross_entropy(logits, [0, -1, 2])
    with pytest.raises(TypeError, match=f"{op}: labels must be integers .* got dtype bool"):
        ops.softmax_cross_entropy(logits, np.array([True, False, True]))
    with pytest.raises(ValueError, match=f"{op}: class-probability targets must have the logits' shape"):
        ops.softmax_cross_entropy(logits, np.array([0.0, 1.0, 2.0]))  # floats are probabilities
    with pytest.raises(ValueError, match=rf"{op}: expected labels of shape \(3,\) \(one per example\), got shape \(2,\)"):
        ops.softmax_cross_entropy(logits, [0, 1])
    with pytest.raises(ValueError, match=rf"{op}: reduction='mean' of an empty batch \(logits of shape \(0, 4\)\)"):
        ops.softmax_cross_entropy(minidl.Tensor(np.zeros((0, 4), dtype=np.float32)), [])
    with pytest.raises(ValueError, match=f"{op}: reduction must be one of 'mean', 'sum', 'none', got 'avg'"):
        ops.cross_entropy(logits, [0, 1, 2], reduction="avg")
    with pytest.raises(ValueError, match=rf"{op}: label_smoothing must be a number in \[0, 1\], got 2"):
        ops.cross_entropy(logits, [0, 1, 2], label_smoothing=2)
    with pytest.raises(ValueError, match=rf"{op}: weight must have one value per class, shape \(4,\), got \(3,\)"):
        ops.cross_entropy(logits, [0, 1, 2], np.ones(3))
    with pytest.raises(ValueError, match=f"{op}: weight gets no gradient in minidl"):
        ops.cross_entropy(logits, [0, 1, 2], minidl.Tensor(np.ones(4, np.float32), requires_grad=True))
    with pytest.raises(ValueError, match=rf"{op}: class-probability targets must have the logits' shape \(3, 4\), got \(3, 3\)"):
        ops.cross_entropy(logits, np.ones((3, 3)))


# -- binary cross-entropy with logits ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (5, 10), (2, 3, 4)])
def test_bce_matches_loop(kernels, dtype, shape):
    rng = np.random.default_rng(5)
    logits = (4 * rng.standard_normal(shape)).astype(dtype)
    targets = rng.random(shape).astype(dtype)
    targets.reshape(-1)[::3] = np.round(targets.reshape(-1)[::3])  # hard 0/1 targets too
    x = kernels.tensor(logits, requires_grad=True)
    loss = ops.binary_cross_entropy_with_logits(x, kernels.tensor(targets))
    loss.backward()
    expected_loss, expected_grad = binary_cross_entropy_with_logits_simple(logits, targets)
    assert loss.shape == () and loss.dtype == dtype and x.grad.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss.item(), expected_loss, rtol=tol)
    np.testing.assert_allclose(kernels.numpy(x.grad), expected_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(1,), (4, 10), (2, 3, 2)])
def test_bce_gradcheck_for_logits_and_targets(kernels, shape):
    rng = np.random.default_rng(6)
    x = kernels.tensor(3 * rng.standard_normal(shape), requires_grad=True)
    t = kernels.tensor(rng.random(shape), requires_grad=True)
    assert minidl.gradcheck(ops.binary_cross_entropy_with_logits, [x, t])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_huge_logits_is_finite_and_right(kernels, dtype):
    logits = np.array([1e4, -1e4, 1e4, -1e4, 100, -100, 0, 1e30, -1e30], dtype=dtype)
    targets = np.array([1, 0, 0, 1, 0.5, 0.5, 0.5, 1, 1], dtype=dtype)
    x = kernels.tensor(logits, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = ops.binary_cross_entropy_with_logits(x, kernels.tensor(targets))
        loss.backward()
    expected_loss, expected_grad = binary_cross_entropy_with_logits_simple(logits.astype(np.float64), targets.astype(np.float64))
    np.testing.assert_allclose(loss.item(), expected_loss, rtol=1e-6)
    np.testing.assert_allclose(kernels.numpy(x.grad), expected_grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    logits = (6 * rng.standard_normal((50, 10))).astype(dtype)  # EuroNet: 10 sigmoid outputs
    logits[0, :4] = [1e4, -1e4, 50, -50]
    targets = np.eye(10, dtype=dtype)[rng.integers(0, 10, 50)]
    for shim in (False, True):
        with cuda_kernels_on_cpu() if shim else _nothing():
            x = minidl.Tensor(logits, requires_grad=True)
            loss = ops.binary_cross_entropy_with_logits(x, targets)
            loss.backward()
        t = torch.tensor(logits, requires_grad=True)
        expected = torch.nn.functional.binary_cross_entropy_with_logits(t, torch.tensor(targets))
        expected.backward()
        tol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(loss.item(), expected.item(), rtol=tol)
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=tol, atol=tol)


def test_bce_plain_array_targets_are_converted(kernels):
    logits = np.random.default_rng(8).standard_normal((3, 4)).astype(np.float32)
    one_hot_int = np.eye(4, dtype=np.int64)[[0, 3, 1]]
    a = ops.binary_cross_entropy_with_logits(kernels.tensor(logits), one_hot_int)
    b = ops.binary_cross_entropy_with_logits(kernels.tensor(logits), one_hot_int.astype(np.float64))
    c = ops.binary_cross_entropy_with_logits(kernels.tensor(logits),
                                             kernels.tensor(one_hot_int.astype(np.float32)))
    assert a.dtype == np.float32
    assert a.item() == b.item() == c.item()


def test_bce_bad_inputs():
    op = "binary_cross_entropy_with_logits"
    logits = minidl.Tensor(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=rf"{op}: targets must have the shape of the logits, \(2, 3\), got \(3, 2\)"):
        ops.binary_cross_entropy_with_logits(logits, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=rf"{op}: targets must lie in \[0, 1\]"):
        ops.binary_cross_entropy_with_logits(logits, np.full((2, 3), 2.0))
    with pytest.raises(TypeError, match=f"{op}: logits has dtype int64; expected float32 or float64"):
        ops.binary_cross_entropy_with_logits(minidl.Tensor(np.zeros((2, 3), dtype=np.int64)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match=f"{op}: logits has dtype float16"):
        ops.binary_cross_entropy_with_logits(logits.astype(np.float16), np.zeros((2, 3)))
    with pytest.raises(TypeError, match=f"{op}: inputs must share one dtype, but logits is float32, targets is float64"):
        ops.binary_cross_entropy_with_logits(logits, minidl.Tensor(np.zeros((2, 3))))
    with pytest.raises(TypeError, match=f"{op}: targets must be numbers"):
        ops.binary_cross_entropy_with_logits(logits, np.full((2, 3), "a"))


# -- softmax and log-softmax ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", [((4, 7), -1), ((4, 7), 0), ((2, 3, 5), 1), ((6,), 0)])
def test_log_softmax_and_softmax_match_loop(kernels, dtype, shape, axis):
    x = (3 * np.random.default_rng(9).standard_normal(shape)).astype(dtype)
    expected = log_softmax_simple(x, axis)
    log_y = ops.log_softmax(kernels.tensor(x), axis=axis)
    y = ops.softmax(kernels.tensor(x), axis=axis)
    assert log_y.dtype == dtype and y.dtype == dtype
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(kernels.numpy(log_y), expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(kernels.numpy(y), np.exp(expected), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape, axis", [((3, 4), -1), ((3, 4), 0), ((2, 3, 2), 1)])
def test_log_softmax_and_softmax_gradcheck(kernels, shape, axis):
    x = kernels.tensor(np.random.default_rng(10).standard_normal(shape), requires_grad=True)
    assert minidl.gradcheck(lambda t: ops.log_softmax(t, axis), [x])
    assert minidl.gradcheck(lambda t: ops.softmax(t, axis), [x])


def test_softmax_with_huge_inputs(kernels):
    x = np.array([[1e4, 0, -1e4], [1e30, 1e30, -1e30]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = kernels.numpy(ops.softmax(kernels.tensor(x)))
        log_y = kernels.numpy(ops.log_softmax(kernels.tensor(x)))
    np.testing.assert_allclose(y, [[1, 0, 0], [0.5, 0.5, 0]], atol=1e-7)
    np.testing.assert_allclose(log_y, [[0, -1e4, -2e4], [-math.log(2), -math.log(2), -2e30]], rtol=1e-6)


def test_cross_entropy_equals_negative_log_softmax_at_the_label(kernels):
    rng = np.random.default_rng(11)
    logits, labels = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    loss = ops.softmax_cross_entropy(kernels.tensor(logits), labels).item()
    log_p = kernels.numpy(ops.log_softmax(kernels.tensor(logits)))
    np.testing.assert_allclose(loss, -log_p[np.arange(6), labels].mean(), rtol=1e-12)


@pytest.mark.parametrize("op, name", [(ops.softmax, "softmax"), (ops.log_softmax, "log_softmax")])
def test_softmax_bad_inputs(op, name):
    with pytest.raises(TypeError, match=f"{name}: input has dtype int64"):
        op(minidl.Tensor(np.zeros((2, 3), dtype=np.int64)))
    with pytest.raises(TypeError, match=f"{name}: input has dtype float16"):
        op(minidl.Tensor(np.zeros((2, 3), dtype=np.float16)))
    with pytest.raises(ValueError, match=rf"{name}: dim must be an integer in \[-2, 1\] .* got 2"):
        op(minidl.Tensor(np.zeros((2, 3), dtype=np.float32)), axis=2)
    with pytest.raises(ValueError, match=f"{name}: got dim=0 and axis=1; axis is another name for dim"):
        op(minidl.Tensor(np.zeros((2, 3), dtype=np.float32)), 0, axis=1)
    with pytest.raises(TypeError, match=f"{name}: dtype must be float32 or float64, got int32"):
        op(minidl.Tensor(np.zeros((2, 3), dtype=np.float32)), dtype=np.int32)


@pytest.mark.skipif(not nvrtc.available(), reason="NVRTC not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_cu_compiles_with_nvrtc(dtype):
    ptx = nvrtc.compile_file(CU_FILE, dtype)
    for name in ("cross_entropy_forward", "cross_entropy_backward", "cross_entropy_probs_forward",
                 "cross_entropy_probs_backward",
                 "bce_with_logits_forward", "bce_with_logits_backward"):
        assert f".entry {name}(" in ptx
    if dtype == np.float32:
        assert ".f64" not in ptx, "the float32 kernels compute in double somewhere"


# -- the options: weight, ignore_index, label smoothing, probabilities, reductions, K-dim --------

CE_OPTIONS = [
    dict(),
    dict(weight=[0.5, 2.0, 1.0, 0.25], reduction="sum"),
    dict(ignore_index=2, reduction="mean"),
    dict(label_smoothing=0.2, weight=[0.5, 2.0, 1.0, 0.25], ignore_index=1),
    dict(reduction="none", label_smoothing=0.1),
]


@pytest.mark.parametrize("probabilities", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("options", CE_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_cross_entropy_options_match_loop_and_gradcheck(kernels, options, probabilities):
    if probabilities and "ignore_index" in options:
        options = {k: v for k, v in options.items() if k != "ignore_index"}
    rng = np.random.default_rng(12)
    logits = 2 * rng.standard_normal((6, 4))
    target = rng.dirichlet(np.ones(4), 6) if probabilities else np.array([0, 2, 1, 3, 2, 0])
    weight = options.get("weight")
    weight = None if weight is None else np.array(weight)
    simple_options = dict(options, weight=weight)
    expected_loss, expected_grad = cross_entropy_simple(logits, target, **simple_options)
    x = kernels.tensor(logits, requires_grad=True)
    t = kernels.tensor(target) if probabilities else target
    loss = ops.cross_entropy(x, t, **dict(options, weight=None if weight is None else kernels.array(weight)))
    np.testing.assert_allclose(kernels.numpy(loss), expected_loss, rtol=1e-12, atol=1e-14)
    loss.backward(kernels.array(np.ones(loss.shape)))
    np.testing.assert_allclose(kernels.numpy(x.grad), expected_grad, rtol=1e-12, atol=1e-14)
    inputs = [kernels.tensor(logits, requires_grad=True)]
    if probabilities:
        inputs.append(kernels.tensor(target, requires_grad=True))
        assert minidl.gradcheck(lambda a, b: ops.cross_entropy(a, b, **simple_options), inputs)
    else:
        assert minidl.gradcheck(lambda a: ops.cross_entropy(a, target, **simple_options), inputs)


def test_cross_entropy_k_dimensional_and_unbatched_inputs(kernels):
    rng = np.random.default_rng(13)
    logits = rng.standard_normal((2, 3, 2, 4))  # (N, K, d1, d2)
    labels = rng.integers(0, 3, (2, 2, 4))
    x = kernels.tensor(logits, requires_grad=True)
    loss = ops.cross_entropy(x, labels, reduction="none")
    assert loss.shape == (2, 2, 4)
    rows = np.moveaxis(logits, 1, -1).reshape(-1, 3)
    expected, grad = cross_entropy_simple(rows, labels.reshape(-1), reduction="none")
    np.testing.assert_allclose(kernels.numpy(loss).reshape(-1), expected, rtol=1e-12)
    loss.backward(kernels.array(np.ones(loss.shape)))
    np.testing.assert_allclose(kernels.numpy(x.grad), np.moveaxis(grad.reshape(2, 2, 4, 3), -1, 1),
                               rtol=1e-12, atol=1e-15)
    assert minidl.gradcheck(lambda a: ops.cross_entropy(a, labels), [kernels.tensor(logits, requires_grad=True)])
    single = ops.cross_entropy(kernels.tensor(logits[0, :, 0, 0]), np.array(labels[0, 0, 0]))
    np.testing.assert_allclose(single.item(), expected[0], rtol=1e-12)


@pytest.mark.parametrize("options", [
    dict(reduction="sum"), dict(reduction="none"), dict(weight=np.linspace(0.5, 2, 5)),
    dict(pos_weight=np.array([1.0, 2.0, 0.5, 3.0, 1.5]), reduction="none"),
    dict(weight=np.full((4, 1), 0.5), pos_weight=np.array([1.0, 2.0, 0.5, 3.0, 1.5]), reduction="sum"),
], ids=["sum", "none", "weight", "pos_weight", "both"])
def test_bce_options_match_loop_and_gradcheck(kernels, options):
    rng = np.random.default_rng(14)
    logits, targets = 3 * rng.standard_normal((4, 5)), rng.random((4, 5))
    expected_loss, expected_grad = binary_cross_entropy_with_logits_simple(logits, targets, **options)
    x = kernels.tensor(logits, requires_grad=True)
    device_options = {k: (kernels.array(v) if isinstance(v, np.ndarray) else v) for k, v in options.items()}
    loss = ops.binary_cross_entropy_with_logits(x, kernels.tensor(targets), **device_options)
    np.testing.assert_allclose(kernels.numpy(loss), expected_loss, rtol=1e-12)
    loss.backward(kernels.array(np.ones(loss.shape)))
    np.testing.assert_allclose(kernels.numpy(x.grad), expected_grad, rtol=1e-12, atol=1e-15)
    inputs = [kernels.tensor(logits, requires_grad=True), kernels.tensor(targets, requires_grad=True)]
    assert minidl.gradcheck(lambda a, b: ops.binary_cross_entropy_with_logits(a, b, **device_options), inputs)


def test_0d_bce_and_softmax(kernels):
    x = kernels.tensor(np.array(0.7), requires_grad=True)
    loss = ops.binary_cross_entropy_with_logits(x, kernels.tensor(np.array(1.0)))
    loss.backward()
    assert loss.shape == () and x.grad.shape == ()
    np.testing.assert_allclose(loss.item(), binary_cross_entropy_with_logits_simple(
        np.array(0.7), np.array(1.0))[0], rtol=1e-14)
    assert ops.softmax(x, 0).item() == 1.0 and ops.log_softmax(x, dim=-1).item() == 0.0
    empty = ops.softmax(kernels.tensor(np.zeros((5, 0, 0))), -1)
    assert empty.shape == (5, 0, 0)


@pytest.mark.parametrize("grad", [np.float32(1), np.ones(()), 1.0], ids=["np.float32", "0-d", "float"])
@pytest.mark.parametrize("loss_name", ["cross_entropy", "bce"])
def test_a_host_gradient_for_a_device_loss_is_moved_to_the_device(kernels, loss_name, grad):
    """loss.backward(np.float32(1)) on a GPU loss: a host array where the kernel reads the
    gradient through a device pointer broke the CUDA context. The shim's device memory makes
    the same mistake fail here (conftest)."""
    rng = np.random.default_rng(12)
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    x = kernels.tensor(logits, requires_grad=True)
    if loss_name == "cross_entropy":
        loss = ops.cross_entropy(x, rng.integers(0, 3, 4))
    else:
        loss = ops.binary_cross_entropy_with_logits(x, (rng.random((4, 3)) < 0.5).astype(np.float32))
    loss.backward(grad, retain_graph=True)
    moved = kernels.numpy(x.grad).copy()
    x.grad = None
    loss.backward()
    np.testing.assert_array_equal(moved, kernels.numpy(x.grad))


def test_losses_read_nothing_back_from_the_device_mid_step():
    """Labels and targets already on the device are not read back to be checked: forward and
    backward of both losses make the host wait for nothing (the shim counts every read that
    would; the old label check made four per step)."""
    from minidl.testing import cuda_on_cpu
    rng = np.random.default_rng(13)
    with cuda_kernels_on_cpu():
        x = minidl.Tensor(cuda_on_cpu.to_device(rng.standard_normal((6, 5))), requires_grad=True)
        labels = cuda_on_cpu.to_device(np.array([0, 4, -100, 2, 1, 3]))
        weight = cuda_on_cpu.to_device(rng.random(5) + 0.5)
        targets = cuda_on_cpu.to_device((rng.random((6, 5)) < 0.5).astype(np.float64))
        before = cuda_on_cpu.host_reads()
        for loss in (ops.cross_entropy(x, labels, weight, label_smoothing=0.1),
                     ops.cross_entropy(x, labels),
                     ops.binary_cross_entropy_with_logits(x, targets, pos_weight=weight)):
            loss.backward()
        assert cuda_on_cpu.host_reads() == before
        expected = cross_entropy_simple(x.numpy(), np.array([0, 4, -100, 2, 1, 3]))[0]
        assert float(ops.cross_entropy(x, labels).data) == pytest.approx(expected, rel=1e-12)
        assert cuda_on_cpu.host_reads() == before + 1  # that float() was one


def test_labels_out_of_range_on_the_device_give_nan_and_on_the_host_an_error(kernels):
    """Host labels are checked before they are copied to the device; labels already there
    make their rows' loss and gradient NaN instead of reading outside the logits."""
    logits = np.random.default_rng(14).standard_normal((3, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\] for 4 classes .* from 0 to 4"):
        ops.cross_entropy(kernels.tensor(logits), np.array([0, 4, 1]))
    x = kernels.tensor(logits, requires_grad=True)
    if kernels.name == "cpu":  # the CPU's labels are host labels
        with pytest.raises(ValueError, match="labels must lie in"):
            ops.cross_entropy(x, kernels.array(np.array([0, 4, 1])))
        return
    loss = ops.cross_entropy(x, kernels.array(np.array([0, 4, 1])), reduction="none")
    loss.backward(kernels.array(np.ones(3)))
    values, grad = kernels.numpy(loss), kernels.numpy(x.grad)
    assert np.isnan(values[1]) and np.isfinite(values[[0, 2]]).all()
    assert np.isnan(grad[1]).all() and np.isfinite(grad[[0, 2]]).all()
    assert np.isnan(ops.cross_entropy(x, kernels.array(np.array([-1, 0, 1]))).item())


@pytest.mark.parametrize("k", [1, 31, 32, 33, 100, 1000])
def test_cross_entropy_rows_wider_and_narrower_than_the_gpus_row_parts(kernels, k):
    """The GPU forward reduces each row in ROW_PARTS (32) interleaved parts and then combines
    them: rows of fewer columns than parts (empty parts), of a multiple, and of many more,
    with weights, label smoothing and an ignored row, against the plain loops."""
    from minidl.ops.loss import ROW_PARTS
    assert ROW_PARTS == 32
    rng = np.random.default_rng(15)
    logits = 4 * rng.standard_normal((5, k))
    labels = rng.integers(0, k, 5)
    labels[3] = -100
    weight = rng.random(k) + 0.5
    x = kernels.tensor(logits, requires_grad=True)
    loss = ops.cross_entropy(x, labels, weight, label_smoothing=0.2)
    loss.backward()
    expected_loss, expected_grad = cross_entropy_simple(logits, labels, weight, label_smoothing=0.2)
    np.testing.assert_allclose(loss.item(), expected_loss, rtol=1e-12)
    np.testing.assert_allclose(kernels.numpy(x.grad), expected_grad, rtol=1e-10, atol=1e-15)
