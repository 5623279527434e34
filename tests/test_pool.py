"""max_pool2d: a plain-loop reference, float64 gradchecks, ties, NaN, PyTorch, bad inputs, on
every kernel mode (Numba on the CPU, the CUDA C through the CPU shim, and a real GPU)."""
import contextlib
import os

import numpy as np
import pytest

import minidl
from minidl import layers, ops
from minidl.ops.pool import max_pool2d_backward_simple, max_pool2d_simple, max_unpool2d_simple
from minidl.testing import nvrtc
from minidl.testing.cuda_on_cpu import cuda_kernels_on_cpu

CU_FILE = os.path.join(os.path.dirname(minidl.__file__), "ops", "pool.cu")

# (input shape, kernel, stride, padding, ceil_mode, dilation)
CONFIGS = [
    ((2, 3, 7, 9), 3, 2, 0, False, 1),            # AlexNet's overlapping 3x3 / 2
    ((2, 3, 7, 9), 3, 2, 1, True, 1),             # padding and a partial last window
    ((1, 2, 8, 6), (3, 2), (2, 1), (1, 0), False, 1),  # non-square everything
    ((1, 2, 5, 5), 2, None, 0, True, 1),          # stride defaults to the kernel; ceil adds a window
    ((1, 1, 5, 5), 2, 2, 1, True, 1),             # ceil's window would start in the right padding
    ((2, 2, 4, 4), 4, 1, 2, False, 1),            # padding of exactly half the kernel
    ((1, 2, 7, 7), 2, 3, 0, False, 1),            # stride larger than the kernel: rows skipped
    ((1, 1, 3, 3), 3, 1, 0, True, 1),             # one window, the whole input
    ((2, 2, 9, 8), 3, 2, 1, True, (2, 3)),        # dilation: taps 2 rows, 3 columns apart
    ((1, 2, 3, 6), 3, 1, 1, False, (1, 2)),       # dilated windows starting in the padding
]
IDS = [f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}-{'ceil' if c[4] else 'floor'}-d{c[5]}" for c in CONFIGS]


def tie_free(shape, seed):
    """Distinct values 0.1 apart: one maximum per window, far beyond gradcheck's eps."""
    rng = np.random.default_rng(seed)
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 3.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, stride, padding, ceil_mode, dilation", CONFIGS, ids=IDS)
def test_forward_and_backward_match_loops(kernels, shape, kernel, stride, padding, ceil_mode, dilation, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    expected, where = max_pool2d_simple(x, kernel, stride, padding, ceil_mode, dilation)
    t = kernels.tensor(x, requires_grad=True)
    y = ops.max_pool2d(t, kernel, stride, padding, dilation, ceil_mode)
    assert y.dtype == dtype and y.shape == expected.shape
    np.testing.assert_array_equal(kernels.numpy(y), expected)
    grad_y = np.random.default_rng(1).standard_normal(expected.shape).astype(dtype)
    y.backward(kernels.array(grad_y))
    assert t.grad.dtype == dtype
    np.testing.assert_allclose(kernels.numpy(t.grad), max_pool2d_backward_simple(grad_y, where, shape),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, kernel, stride, padding, ceil_mode, dilation", CONFIGS, ids=IDS)
def test_gradcheck(kernels, shape, kernel, stride, padding, ceil_mode, dilation):
    x = kernels.tensor(tie_free(shape, seed=2), requires_grad=True)
    assert minidl.gradcheck(lambda t: ops.max_pool2d(t, kernel, stride, padding, dilation, ceil_mode), [x])


def test_ties_go_to_the_first_maximum_in_scan_order(kernels):
    # After a ReLU whole windows are 0: the gradient must go to each window's first element,
    # and overlapping windows that share it must add up there.
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 4, 4] = -1.0
    t = kernels.tensor(x, requires_grad=True)
    y = ops.max_pool2d(t, 3, 2)
    y.backward(kernels.array(np.ones((1, 1, 2, 2))))
    expected = np.zeros((5, 5))
    expected[0, 0] = expected[0, 2] = expected[2, 0] = expected[2, 2] = 1.0
    np.testing.assert_array_equal(kernels.numpy(t.grad)[0, 0], expected)


def test_nan_propagates(kernels):
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    y = kernels.numpy(ops.max_pool2d(kernels.tensor(x), 2))
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1:, :]).any() and y[0, 0, 0, 1] == 7


def test_backward_is_deterministic_and_equal_across_kernels():
    # Overlapping windows with many ties: every kernel must give the same bits, every time.
    x = np.maximum(np.random.default_rng(3).standard_normal((2, 3, 11, 11)), 0).astype(np.float32)
    grad_y = np.random.default_rng(4).standard_normal((2, 3, 5, 5)).astype(np.float32)
    grads = []
    for on_cpu_shim in (False, True, False):
        with cuda_kernels_on_cpu() if on_cpu_shim else contextlib.nullcontext():
            t = minidl.Tensor(x, requires_grad=True)
            ops.max_pool2d(t, 3, 2).backward(grad_y)
            grads.append(t.grad.numpy())
    assert all(np.array_equal(grads[0], g) for g in grads[1:])


def test_non_contiguous_input_and_empty_batch(kernels):
    x = np.random.default_rng(8).standard_normal((2, 3, 9, 14))[:, :, :, ::2]  # a strided view
    y = ops.max_pool2d(kernels.tensor(x), 3, 2, 1)
    np.testing.assert_array_equal(kernels.numpy(y), max_pool2d_simple(x, 3, 2, 1, False)[0])
    t = kernels.tensor(np.zeros((0, 3, 5, 5), np.float32), requires_grad=True)
    y = ops.max_pool2d(t, 3, 2)
    y.backward(kernels.array(np.zeros(y.shape, np.float32)))
    assert y.shape == (0, 3, 2, 2) and t.grad.shape == (0, 3, 5, 5)


def test_alexnet_shape_and_layer(kernels):
    x = kernels.tensor(np.random.default_rng(5).standard_normal((2, 4, 55, 55)).astype(np.float32))
    pool = layers.MaxPool2d(3, stride=2)
    y = pool(x)
    assert y.shape == (2, 4, 27, 27) and y.dtype == np.float32
    np.testing.assert_array_equal(kernels.numpy(y), max_pool2d_simple(kernels.numpy(x), 3, 2, 0, False)[0])


try:
    import torch
except ImportError:  # pragma: no cover - torch is only for comparisons
    torch = None


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("relu", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("shape, kernel, stride, padding, ceil_mode, dilation", CONFIGS, ids=IDS)
def test_matches_torch(kernels, shape, kernel, stride, padding, ceil_mode, dilation, relu):
    x = np.random.default_rng(6).standard_normal(shape)
    if relu:
        x = np.maximum(x, 0)  # many tied windows: torch also picks the first maximum
    t = kernels.tensor(x, requires_grad=True)
    y = ops.max_pool2d(t, kernel, stride, padding, dilation, ceil_mode)
    grad_y = np.random.default_rng(7).standard_normal(y.shape)
    y.backward(kernels.array(grad_y))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    ty.backward(torch.tensor(grad_y))
    np.testing.assert_array_equal(kernels.numpy(y), ty.detach().numpy())
    np.testing.assert_allclose(kernels.numpy(t.grad), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not nvrtc.available(), reason="NVRTC not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_source_compiles_under_nvrtc(dtype):
    ptx = nvrtc.compile_file(CU_FILE, dtype)
    assert ".entry max_pool2d_forward(" in ptx and ".entry max_pool2d_backward(" in ptx


@pytest.mark.parametrize("x, args, error, match", [
    (np.zeros((8, 8), np.float32), (2,), ValueError, r"max_pool2d: input must be 4-D \(N, C, H, W\) or 3-D"),
    (np.zeros((1, 1, 3, 3), np.float32), (2, 1, 0, 4), ValueError, r"max_pool2d: kernel \(2, 2\) with dilation \(4, 4\) is larger"),
    (np.zeros((1, 1, 3, 3), np.float32), (2, 1, 1, 4), ValueError, r"max_pool2d: dilation 4 leaves output 0 along the height"),
    (np.zeros((1, 1, 4, 4), np.float32), (2, 1, 0, 0), ValueError, r"max_pool2d: dilation must be a positive int"),
    (np.zeros((1, 1, 8, 8), np.int64), (2,), TypeError, r"max_pool2d: input has dtype int64; expected float32"),
    (np.zeros((1, 1, 4, 4), np.float32), (6,), ValueError, r"max_pool2d: kernel .* larger than the padded input"),
    (np.zeros((1, 1, 4, 4), np.float32), (3, 1, 2), ValueError, r"max_pool2d: padding must be at most half"),
    (np.zeros((1, 1, 4, 4), np.float32), (0,), ValueError, r"max_pool2d: kernel_size must be a positive int"),
    (np.zeros((1, 1, 4, 4), np.float32), (2, 0), ValueError, r"max_pool2d: stride must be a positive int"),
    (np.zeros((1, 1, 4, 4), np.float32), (2, -1), ValueError, r"max_pool2d: stride must be a positive int"),
    (np.zeros((1, 1, 4, 4), np.float32), (2, 1, -1), ValueError, r"max_pool2d: padding must be a non-negative"),
    (np.zeros((1, 1, 4, 4), np.float32), ((2, 2, 2),), TypeError, r"max_pool2d: kernel_size must be"),
    (np.zeros((1, 1, 4, 4), np.float32), (2.5,), TypeError, r"max_pool2d: kernel_size must be"),
    (np.zeros((1, 1, 0, 4), np.float32), (2, 2, 1), ValueError, r"max_pool2d: input planes must be at least 1x1"),
])
def test_bad_inputs(kernels, x, args, error, match):
    with pytest.raises(error, match=match):
        ops.max_pool2d(kernels.tensor(x), *args)


def test_return_indices_unbatched_input_and_max_unpool(kernels):
    x = tie_free((2, 7, 8), seed=9)  # unbatched (C, H, W)
    t = kernels.tensor(x, requires_grad=True)
    y, indices = ops.max_pool2d(t, 3, 2, 1, dilation=(1, 2), return_indices=True)
    expected, where = max_pool2d_simple(x[None], 3, 2, 1, False, (1, 2))
    assert y.shape == expected.shape[1:] and indices.dtype == np.int64 and not indices.requires_grad
    np.testing.assert_array_equal(kernels.numpy(y), expected[0])
    np.testing.assert_array_equal(kernels.numpy(indices), where[0])
    grad_y = np.random.default_rng(10).standard_normal(y.shape)
    y.backward(kernels.array(grad_y))
    np.testing.assert_allclose(kernels.numpy(t.grad), max_pool2d_backward_simple(
        grad_y[None], where, (1,) + x.shape)[0], rtol=1e-12)
    assert minidl.gradcheck(lambda a: ops.max_pool2d(a, 3, 2, 1, dilation=(1, 2)), [t])

    # Unpooling, from windows that do not overlap (so no two values share an index).
    y, indices = ops.max_pool2d(t, 2, return_indices=True)
    pooled = kernels.tensor(kernels.numpy(y), requires_grad=True)
    restored = ops.max_unpool2d(pooled, indices, 2, output_size=x.shape[-2:])
    np.testing.assert_array_equal(kernels.numpy(restored), max_unpool2d_simple(
        kernels.numpy(y)[None], kernels.numpy(indices)[None], 7, 8)[0])
    assert minidl.gradcheck(lambda a: ops.max_unpool2d(a, indices, 2, output_size=(7, 8)), [pooled])


def test_max_unpool_default_size_and_bad_indices(kernels):
    x = kernels.tensor(np.arange(8.0).reshape(1, 2, 2, 2))
    indices = kernels.tensor(np.array([0, 3, 12, 15] * 2).reshape(1, 2, 2, 2))
    y = ops.max_unpool2d(x, indices, 2)
    assert y.shape == (1, 2, 4, 4) and kernels.numpy(y)[0, 1, 3, 3] == 7.0
    with pytest.raises(ValueError, match=r"max_unpool2d: indices must lie in \[0, 15\]"):
        ops.max_unpool2d(x, indices * 2, 2)


def test_empty_batch_with_indices(kernels):
    t = kernels.tensor(np.zeros((0, 2, 5, 5)), requires_grad=True)
    y, indices = ops.max_pool2d(t, 2, return_indices=True)
    assert y.shape == indices.shape == (0, 2, 2, 2)
    assert ops.max_unpool2d(y, indices, 2).shape == (0, 2, 4, 4)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
def test_indices_and_unpool_match_torch(kernels):
    x = np.maximum(np.random.default_rng(11).standard_normal((2, 3, 9, 10)), 0)
    _, indices = ops.max_pool2d(kernels.tensor(x), (3, 2), (2, 1), 1, (2, 1), True,
                                return_indices=True)
    _, tindices = torch.nn.functional.max_pool2d(torch.tensor(x), (3, 2), (2, 1), 1, (2, 1),
                                                 True, return_indices=True)
    np.testing.assert_array_equal(kernels.numpy(indices), tindices.numpy())
    y, indices = ops.max_pool2d(kernels.tensor(x), (3, 2), (2, 1), 1, return_indices=True)
    ty, tindices = torch.nn.functional.max_pool2d(torch.tensor(x), (3, 2), (2, 1), 1,
                                                  return_indices=True)
    np.testing.assert_array_equal(kernels.numpy(ops.max_unpool2d(y, indices, (3, 2), (2, 1), 1)),
                                  torch.nn.functional.max_unpool2d(ty, tindices, (3, 2), (2, 1),
                                                                   1).numpy())
