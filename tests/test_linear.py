"""linear and flatten: plain-loop references, float64 gradchecks, the grads that are skipped,
agreement with torch, views, and bad inputs. linear has no kernel of its own (BLAS/cuBLAS), but
it runs on every kernel mode anyway so the GPU path is exercised where there is one."""
import numpy as np
import pytest

import minidl
from minidl import layers, ops
from minidl.ops.linear import linear_simple


def make(shape_x, out_features, bias=True, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape_x).astype(dtype)
    w = rng.standard_normal((out_features, shape_x[1])).astype(dtype)
    b = rng.standard_normal(out_features).astype(dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, k, m, bias", [(1, 1, 1, True), (4, 3, 5, True), (6, 7, 2, False)])
def test_forward_matches_loop(kernels, dtype, n, k, m, bias):
    x, w, b = make((n, k), m, bias, dtype)
    y = ops.linear(kernels.tensor(x), kernels.tensor(w), None if b is None else kernels.tensor(b))
    assert y.dtype == dtype and y.shape == (n, m)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(kernels.numpy(y), linear_simple(x, w, b), rtol=tol, atol=tol)


@pytest.mark.parametrize("n, k, m, bias", [(1, 1, 1, True), (4, 3, 5, True), (5, 6, 2, False)])
def test_gradcheck(kernels, n, k, m, bias):
    x, w, b = make((n, k), m, bias, seed=1)
    inputs = [kernels.tensor(x, requires_grad=True), kernels.tensor(w, requires_grad=True)]
    if bias:
        inputs.append(kernels.tensor(b, requires_grad=True))
    assert minidl.gradcheck(ops.linear, inputs)


def test_gradients_that_are_not_needed_are_not_computed_or_kept(kernels):
    x, w, b = make((3, 4), 2, seed=2)
    xt, wt, bt = kernels.tensor(x), kernels.tensor(w, requires_grad=True), kernels.tensor(b)
    y = ops.linear(xt, wt, bt)
    saved_x, saved_w = y.creator.saved
    assert saved_x is not None and saved_w is None  # dW needs x; nobody needs dx = g @ W
    y.sum().backward()
    assert xt.grad is None and bt.grad is None
    np.testing.assert_allclose(kernels.numpy(wt.grad), np.ones((2, 3)) @ x)

    xt = kernels.tensor(x, requires_grad=True)
    y = ops.linear(xt, kernels.tensor(w), None)
    saved_x, saved_w = y.creator.saved
    assert saved_x is None and saved_w is not None
    y.sum().backward()
    np.testing.assert_allclose(kernels.numpy(xt.grad), np.ones((3, 2)) @ w)


def test_float32_stays_float32(kernels):
    x, w, b = make((3, 4), 5, dtype=np.float32)
    ts = [kernels.tensor(a, requires_grad=True) for a in (x, w, b)]
    y = ops.linear(*ts)
    y.sum().backward()
    assert y.dtype == np.float32 and all(t.grad.dtype == np.float32 for t in ts)


def test_matches_torch():
    torch = pytest.importorskip("torch")
    x, w, b = make((8, 16), 4, dtype=np.float32, seed=3)
    ts = [minidl.Tensor(a, requires_grad=True) for a in (x, w, b)]
    ops.linear(*ts).sum().backward()
    tt = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    torch.nn.functional.linear(*tt).sum().backward()
    for mine, theirs in zip(ts, tt):
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_layer_shapes_and_bias_flag():
    layer = layers.Linear(6, 3)
    assert layer(minidl.Tensor(np.ones((2, 6), dtype=np.float32))).shape == (2, 3)
    no_bias = layers.Linear(6, 3, bias=False)
    x = minidl.Tensor(np.zeros((2, 6), dtype=np.float32))
    np.testing.assert_array_equal(no_bias(x).numpy(), 0)


def test_bad_inputs():
    x, w, b = (minidl.Tensor(a) for a in make((2, 3), 4, dtype=np.float32))
    with pytest.raises(ValueError, match=r"linear: input has 1 features in its last dimension \(shape \(2, 3, 1\)\)"):
        ops.linear(x.reshape(2, 3, 1), w, b)
    with pytest.raises(ValueError, match=r"linear: input has no features in its last dimension \(shape \(\)\)"):
        ops.linear(x[0, 0], w, b)
    with pytest.raises(ValueError, match=r"linear: input has 2 features .* expects 3"):
        ops.linear(x[:, :2], w, b)
    with pytest.raises(TypeError, match="linear: inputs must share one dtype, but input is float64, weight is float32"):
        ops.linear(x.astype(np.float64), w, b)
    with pytest.raises(TypeError, match="linear: input has dtype int64; expected float32 or float64"):
        ops.linear(minidl.Tensor(np.ones((2, 3), dtype=np.int64)), w, b)
    with pytest.raises(TypeError, match="linear: input has dtype float16"):
        ops.linear(x.astype(np.float16), w, b)
    with pytest.raises(ValueError, match=r"linear: bias has shape \(3,\); expected \(4,\)"):
        ops.linear(x, w, b[:3])
    with pytest.raises(ValueError, match=r"linear: weight must be 2-D \(out_features, in_features\)"):
        ops.linear(x, w.reshape(-1), b)


# -- flatten ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, start_dim, expected", [
    ((2, 3, 4, 5), 1, (2, 60)), ((2, 3, 4, 5), 2, (2, 3, 20)), ((2, 3, 4, 5), 0, (120,)),
    ((2, 3, 4, 5), -1, (2, 3, 4, 5)), ((2, 3, 4, 5), -3, (2, 60)), ((0, 3, 4), 1, (0, 12)),
    ((7,), 0, (7,)),
])
def test_flatten_shapes(kernels, shape, start_dim, expected):
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    y = ops.flatten(kernels.tensor(x), start_dim)
    assert y.shape == expected
    np.testing.assert_array_equal(kernels.numpy(y).reshape(-1), x.reshape(-1))  # C order kept


def test_flatten_is_a_view_and_backward_restores_the_shape(kernels):
    x = kernels.tensor(np.random.default_rng(4).standard_normal((2, 3, 4)), requires_grad=True)
    y = ops.flatten(x)
    assert kernels.numpy(y).shape == (2, 12)
    if kernels.name != "cuda":
        assert np.shares_memory(y.data, x.data)
    assert minidl.gradcheck(lambda t: ops.flatten(t, 1), [x])
    assert minidl.gradcheck(lambda t: ops.flatten(t.transpose(2, 0, 1), 1), [x])  # non-contiguous


def test_flatten_layer_then_linear(kernels):
    x = kernels.tensor(np.ones((2, 3, 2, 2), dtype=np.float32))
    model = layers.Sequential(layers.Flatten(), layers.Linear(12, 5))
    if kernels.name == "cuda":
        model.to("cuda")
    assert model(x).shape == (2, 5)


def test_flatten_bad_start_dim():
    x = minidl.Tensor(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"flatten: start_dim must be an integer in \[-2, 1\] .* got 2"):
        ops.flatten(x, 2)
    with pytest.raises(ValueError, match=r"flatten: start_dim must be an integer .* got 1.0"):
        ops.flatten(x, 1.0)
    with pytest.raises(ValueError, match="flatten: input must have at least 1 dimension"):
        ops.flatten(minidl.Tensor(np.float32(1)))


@pytest.mark.parametrize("shape", [(3,), (0, 3), (2, 1, 2, 3)], ids=["1-D", "empty", "4-D"])
def test_any_number_of_leading_dimensions(shape):
    rng = np.random.default_rng(21)
    x = minidl.Tensor(rng.standard_normal(shape), requires_grad=True)
    w = minidl.Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    b = minidl.Tensor(rng.standard_normal(4), requires_grad=True)
    y = ops.linear(x, w, b)
    assert y.shape == shape[:-1] + (4,)
    rows = x.numpy().reshape(-1, 3)
    np.testing.assert_allclose(y.numpy().reshape(-1, 4), linear_simple(rows, w.numpy(), b.numpy())
                               if rows.size else np.zeros((0, 4)), rtol=1e-12)
    if x.size:
        assert minidl.gradcheck(ops.linear, [x, w, b])
    else:
        y.backward(np.ones(y.shape))
        assert x.grad.shape == shape and not w.grad.numpy().any()
