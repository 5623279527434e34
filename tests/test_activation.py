"""ReLU and sigmoid: plain-loop references, float64 gradchecks, extremes and bad inputs, on
every kernel mode (NumPy on the CPU, the CUDA C through the CPU shim, and a real GPU)."""
import os
import warnings

import numpy as np
import pytest

import minidl
from minidl import layers, ops
from minidl.ops.activation import relu_simple, sigmoid_simple
from minidl.testing import nvrtc
from minidl.testing.cuda_on_cpu import cuda_kernels_on_cpu

CU_FILE = os.path.join(os.path.dirname(minidl.__file__), "ops", "activation.cu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5), (1000,)])
def test_relu_forward_matches_loop(kernels, dtype, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    y = ops.relu(kernels.tensor(x))
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_array_equal(kernels.numpy(y), relu_simple(x).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5), (1000,)])
def test_sigmoid_forward_matches_loop(kernels, dtype, shape):
    x = (4 * np.random.default_rng(1).standard_normal(shape)).astype(dtype)
    y = ops.sigmoid(kernels.tensor(x))
    assert y.dtype == dtype and y.shape == shape
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(kernels.numpy(y), sigmoid_simple(x.astype(np.float64)), rtol=rtol)


def _away_from_zero(x, margin=1e-2):
    """ReLU is not differentiable at 0: keep finite differences off the kink."""
    return np.where(x >= 0, x + margin, x - margin)


@pytest.mark.parametrize("shape", [(1,), (4, 5), (2, 3, 2, 3)])
def test_relu_gradcheck(kernels, shape):
    x = _away_from_zero(np.random.default_rng(2).standard_normal(shape))
    assert minidl.gradcheck(ops.relu, [kernels.tensor(x, requires_grad=True)])


@pytest.mark.parametrize("shape", [(1,), (4, 5), (2, 3, 2, 3)])
def test_sigmoid_gradcheck(kernels, shape):
    x = 3 * np.random.default_rng(3).standard_normal(shape)
    assert minidl.gradcheck(ops.sigmoid, [kernels.tensor(x, requires_grad=True)])


def test_gradcheck_through_a_non_contiguous_input(kernels):
    x = kernels.tensor(_away_from_zero(np.random.default_rng(4).standard_normal((5, 4))),
                       requires_grad=True)
    assert minidl.gradcheck(lambda t: ops.sigmoid(ops.relu(t.T)), [x])


def test_relu_gradient_at_zero_is_zero_and_nan_propagates(kernels):
    x = kernels.tensor(np.array([-1.0, 0.0, 2.0, np.nan], dtype=np.float32), requires_grad=True)
    y = ops.relu(x)
    y.backward(kernels.array(np.ones(4, dtype=np.float32)))
    out = kernels.numpy(y)
    np.testing.assert_array_equal(out[:3], [0, 0, 2])
    assert np.isnan(out[3])
    np.testing.assert_array_equal(kernels.numpy(x.grad)[:3], [0, 0, 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_extremes_are_finite_accurate_and_silent(kernels, dtype):
    x = np.array([-1e4, -1000, -100, -30, -20, -1, 0, 1, 20, 30, 100, 1000, 1e4], dtype=dtype)
    xt = kernels.tensor(x, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning either
        y = ops.sigmoid(xt)
        y.sum().backward()
    y, grad = kernels.numpy(y), kernels.numpy(xt.grad)
    assert np.isfinite(y).all() and np.isfinite(grad).all()
    expected = sigmoid_simple(x.astype(np.float64))
    tiny = np.finfo(dtype).tiny  # below it float32 flushes the tail to 0 (as it must)
    np.testing.assert_allclose(y, expected, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=tiny)
    assert y[0] == 0 and y[-1] == 1
    # backward uses the saved output: once y rounds to 1 (x > 17 in float32) y * (1 - y) is 0,
    # an absolute error below the dtype's epsilon, as in PyTorch
    np.testing.assert_allclose(grad, expected * (1 - expected), rtol=1e-5, atol=np.finfo(dtype).eps)


def test_cpu_and_cuda_kernels_agree_to_the_bit_on_relu_and_sigmoid_backward():
    x = np.random.default_rng(5).standard_normal((33, 17)).astype(np.float32)
    g = np.random.default_rng(6).standard_normal((33, 17)).astype(np.float32)
    results = []
    for on_cpu in (False, True):
        with cuda_kernels_on_cpu() if on_cpu else _nothing():
            t = minidl.Tensor(x, requires_grad=True)
            ops.sigmoid(ops.relu(t)).backward(g)
            results.append(t.grad.numpy())
    # the CPU's np.exp and the C library's exp may differ in the last bit of the forward pass
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("op", [ops.relu, ops.sigmoid])
def test_float32_stays_float32_and_incoming_gradient_is_not_modified(kernels, op):
    x = kernels.tensor(np.random.default_rng(7).standard_normal((6, 3)).astype(np.float32),
                       requires_grad=True)
    g = kernels.array(np.full((6, 3), 0.5, dtype=np.float32))
    y = op(x)
    y.backward(g)
    assert y.dtype == np.float32 and x.grad.dtype == np.float32
    np.testing.assert_array_equal(kernels.numpy(g), 0.5)  # backward did not write into g
    np.testing.assert_array_equal(kernels.numpy(x.data),
                                  np.random.default_rng(7).standard_normal((6, 3)).astype(np.float32))


def test_empty_and_0d_inputs(kernels):
    for op in (ops.relu, ops.sigmoid):
        y = op(kernels.tensor(np.zeros((1, 0, 3), dtype=np.float32)))
        assert y.shape == (1, 0, 3)
        x = kernels.tensor(np.array(-0.5), requires_grad=True)
        y = op(x)
        y.backward()
        assert y.shape == () and x.grad.shape == ()
        expected = relu_simple if op is ops.relu else sigmoid_simple
        np.testing.assert_allclose(kernels.numpy(y), expected(np.array(-0.5)), rtol=1e-15)
        assert minidl.gradcheck(op, [kernels.tensor(np.array(0.3), requires_grad=True)])


def test_layers_call_the_ops():
    x = minidl.Tensor(np.array([[-2.0, 0.5]], dtype=np.float32))
    np.testing.assert_array_equal(layers.ReLU()(x).numpy(), [[0, 0.5]])
    np.testing.assert_allclose(layers.Sigmoid()(x).numpy(), sigmoid_simple(x.numpy()), rtol=1e-6)


@pytest.mark.parametrize("op, name", [(ops.relu, "relu"), (ops.sigmoid, "sigmoid")])
def test_bad_inputs(op, name):
    with pytest.raises(TypeError, match=f"{name}: input has dtype int64; expected float32 or float64"):
        op(minidl.Tensor(np.arange(4)))
    with pytest.raises(TypeError, match=f"{name}: input has dtype float16"):
        op(minidl.Tensor(np.ones(3, dtype=np.float16)))


@pytest.mark.skipif(not nvrtc.available(), reason="NVRTC not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_cu_compiles_with_nvrtc(dtype):
    ptx = nvrtc.compile_file(CU_FILE, dtype)
    for name in ("relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward"):
        assert f".entry {name}(" in ptx
    if dtype == np.float32:
        assert ".f64" not in ptx, "the float32 kernels compute in double somewhere"
