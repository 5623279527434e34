"""avg_pool2d and adaptive_avg_pool2d: plain-loop references, float64 gradchecks, PyTorch
over the options, the layers, bad inputs -- on every kernel mode."""
import contextlib

import numpy as np
import pytest

import minidl
from minidl import layers, ops
from minidl.ops.avgpool import adaptive_avg_pool2d_simple, avg_pool2d_simple
from minidl.testing.cuda_on_cpu import cuda_kernels_on_cpu

# (shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
CONFIGS = [
    ((2, 3, 7, 9), 3, 2, 0, False, True, None),
    ((2, 3, 7, 9), 3, 2, 1, True, True, None),      # the last window cut by the padded edge
    ((1, 2, 8, 6), (3, 2), (2, 1), (1, 0), True, False, None),
    ((1, 2, 5, 5), 2, None, 1, False, False, 3),
    ((3, 6, 5), 2, 1, 1, True, True, None),          # unbatched
]
IDS = ["plain", "ceil-pad", "no-count-pad", "divisor", "unbatched"]
ADAPTIVE = [((2, 3, 13, 13), (6, 6)), ((1, 2, 5, 7), (3, 4)), ((2, 4, 4), 6), ((1, 1, 6, 5), (None, 2))]


def reference(x, config):
    _, *options = config
    batched = x if x.ndim == 4 else x[None]
    y = avg_pool2d_simple(batched, *options)
    return y if x.ndim == 4 else y[0]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_avg_pool_matches_loops_and_gradcheck(kernels, config):
    x = np.random.default_rng(0).standard_normal(config[0])
    t = kernels.tensor(x, requires_grad=True)
    y = ops.avg_pool2d(t, *config[1:])
    np.testing.assert_allclose(kernels.numpy(y), reference(x, config), rtol=1e-12, atol=1e-14)
    assert minidl.gradcheck(lambda a: ops.avg_pool2d(a, *config[1:]), [t])
    f32 = ops.avg_pool2d(kernels.tensor(x.astype(np.float32)), *config[1:])
    assert f32.dtype == np.float32
    np.testing.assert_allclose(kernels.numpy(f32), reference(x, config), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, size", ADAPTIVE, ids=["alexnet", "uneven", "upsample", "none"])
def test_adaptive_matches_loops_and_gradcheck(kernels, shape, size):
    x = np.random.default_rng(1).standard_normal(shape)
    t = kernels.tensor(x, requires_grad=True)
    y = ops.adaptive_avg_pool2d(t, size)
    full = size if isinstance(size, tuple) else (size, size)
    full = tuple(s if s is not None else shape[-2 + i] for i, s in enumerate(full))
    batched = x if x.ndim == 4 else x[None]
    expected = adaptive_avg_pool2d_simple(batched, full)
    np.testing.assert_allclose(kernels.numpy(y), expected if x.ndim == 4 else expected[0], rtol=1e-12)
    assert minidl.gradcheck(lambda a: ops.adaptive_avg_pool2d(a, size), [t])


def test_cpu_and_cuda_kernels_give_the_same_bits():
    x = np.random.default_rng(2).standard_normal((2, 3, 13, 11)).astype(np.float32)
    results = []
    for shim in (False, True):
        with cuda_kernels_on_cpu() if shim else contextlib.nullcontext():
            t = minidl.Tensor(x, requires_grad=True)
            y = ops.avg_pool2d(t, 3, 2, 1, ceil_mode=True) + ops.adaptive_avg_pool2d(t, 6)[..., :6, :6].sum()
            y.backward(np.ones(y.shape, np.float32))
            results.append((y.numpy(), t.grad.numpy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_layers_match_torch(config):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal(config[0])
    _, kernel, stride, padding, ceil_mode, count_include_pad, divisor = config
    options = dict(stride=stride, padding=padding, ceil_mode=ceil_mode,
                   count_include_pad=count_include_pad, divisor_override=divisor)
    t, tx = minidl.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y, ty = layers.AvgPool2d(kernel, **options)(t), torch.nn.AvgPool2d(kernel, **options)(tx)
    g = np.random.default_rng(4).standard_normal(y.shape)
    y.backward(g)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-14)
    a, ta = minidl.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y, ty = layers.AdaptiveAvgPool2d((3, 2))(a), torch.nn.AdaptiveAvgPool2d((3, 2))(ta)
    y.backward(np.ones(y.shape))
    ty.backward(torch.ones(ty.shape, dtype=torch.float64))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda x: ops.avg_pool2d(x, 2, padding=2), ValueError, r"avg_pool2d: padding must be at most half"),
    (lambda x: ops.avg_pool2d(x, 9), ValueError, r"avg_pool2d: kernel \(9, 9\) is larger than the padded input"),
    (lambda x: ops.avg_pool2d(x, 2, divisor_override=0), ValueError, r"avg_pool2d: divisor_override must be a positive int"),
    (lambda x: ops.avg_pool2d(x[0, 0], 2), ValueError, r"avg_pool2d: input must be 4-D"),
    (lambda x: ops.adaptive_avg_pool2d(x, 0), ValueError, r"adaptive_avg_pool2d: output_size must be a positive int"),
    (lambda x: ops.adaptive_avg_pool2d(x, (1, 2, 3)), TypeError, r"adaptive_avg_pool2d: output_size must be an int or a pair"),
])
def test_bad_inputs(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(minidl.Tensor(np.zeros((1, 2, 4, 4), np.float32)))
