"""Dropout: the counter-based mask against an independent NumPy splitmix64, bit-identical masks
on the CPU and through the CUDA C, statistics of the mask, eval identity, gradients, bad p."""
import os
import sys

import numpy as np
import pytest

import minidl
from minidl import layers, ops
from minidl.testing import nvrtc
from minidl.testing.cuda_on_cpu import cuda_kernels_on_cpu

dropout_module = sys.modules["minidl.ops.dropout"]  # ops.dropout is the function
CU_FILE = os.path.join(os.path.dirname(minidl.__file__), "ops", "dropout.cu")


def splitmix64_keep(seed, n, p):
    """Independent reference: element i is kept iff u = (splitmix64(seed, i) >> 11) / 2**53 >= p,
    with NumPy's wrapping uint64 array arithmetic and a float comparison."""
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (i + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / 2.0 ** 53  # exact: 53-bit integers
    return u >= p


def seed_of(generator_seed):
    """The seed dropout draws from np.random.default_rng(generator_seed)."""
    return np.random.default_rng(generator_seed).integers(0, 2 ** 64, dtype=np.uint64)


def test_hash_is_splitmix64():
    # the first outputs of Vigna's splitmix64 from state 0
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    got = [int(dropout_module._hash(np.uint64(0), np.uint64(i))) for i in range(3)]
    assert got == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_forward_matches_reference_mask(kernels, dtype, p):
    x = np.random.default_rng(0).standard_normal((37, 29)).astype(dtype)
    y = kernels.numpy(ops.dropout(kernels.tensor(x), p, generator=np.random.default_rng(11)))
    keep = splitmix64_keep(seed_of(11), x.size, p).reshape(x.shape)
    expected = np.where(keep, x * dtype(1 / (1 - p)), 0).astype(dtype)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, expected)


def test_cpu_and_cuda_kernels_give_identical_masks_and_gradients():
    x = np.random.default_rng(1).standard_normal((3, 4, 50, 7)).astype(np.float32)
    g = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    outputs, grads = [], []
    for shim in (False, True):
        minidl.manual_seed(123)
        with cuda_kernels_on_cpu() if shim else _nothing():
            t = minidl.Tensor(x, requires_grad=True)
            y = ops.dropout(t, 0.3)
            y.backward(g)
        outputs.append(y.numpy())
        grads.append(t.grad.numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(grads[0], grads[1])
    assert 0.6 < (outputs[0] != 0).mean() < 0.8


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_statistics(kernels, p):
    n = 200_000
    y = kernels.numpy(ops.dropout(kernels.tensor(np.ones(n, dtype=np.float32)), p,
                                  generator=np.random.default_rng(3)))
    kept = y != 0
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(kept.mean() - (1 - p)) < 5 * sigma
    # inverted scaling preserves the mean: E[y] = (1 - p) * 1 / (1 - p) = 1
    assert abs(y.astype(np.float64).mean() - 1) < 5 * np.sqrt(p / (1 - p) / n)
    np.testing.assert_array_equal(np.unique(y), [0, np.float32(1 / (1 - p))])
    # neighbours are independent: both kept with probability (1 - p)^2
    both = (kept[:-1] & kept[1:]).mean()
    assert abs(both - (1 - p) ** 2) < 5 * np.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n) + 1e-3


def test_same_seed_same_mask_and_successive_calls_differ(kernels):
    x = kernels.tensor(np.ones((64, 64), dtype=np.float32))
    a = kernels.numpy(ops.dropout(x, 0.5, generator=np.random.default_rng(5)))
    b = kernels.numpy(ops.dropout(x, 0.5, generator=np.random.default_rng(5)))
    np.testing.assert_array_equal(a, b)
    minidl.manual_seed(9)
    c = kernels.numpy(ops.dropout(x, 0.5))
    d = kernels.numpy(ops.dropout(x, 0.5))  # the default generator has moved on
    minidl.manual_seed(9)
    e = kernels.numpy(ops.dropout(x, 0.5))
    np.testing.assert_array_equal(c, e)
    assert (c != d).mean() > 0.3


def test_mask_follows_logical_index_not_memory_layout(kernels):
    x = np.random.default_rng(6).standard_normal((8, 13)).astype(np.float32)
    transposed = kernels.tensor(x).T  # a non-contiguous view
    a = ops.dropout(transposed, 0.4, generator=np.random.default_rng(7))
    b = ops.dropout(kernels.tensor(np.ascontiguousarray(x.T)), 0.4, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(kernels.numpy(a), kernels.numpy(b))


def test_eval_and_p_zero_are_the_identity_and_draw_nothing(kernels):
    x = kernels.tensor(np.random.default_rng(8).standard_normal((4, 5)).astype(np.float32),
                       requires_grad=True)
    generator = np.random.default_rng(0)
    state = generator.bit_generator.state
    assert ops.dropout(x, 0.5, training=False, generator=generator) is x
    assert ops.dropout(x, 0.0, generator=generator) is x
    assert generator.bit_generator.state == state


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_backward_is_the_same_mask_scaled(kernels, p):
    x = np.random.default_rng(9).uniform(0.5, 1.5, (20, 30)).astype(np.float32)  # no zeros
    g = np.random.default_rng(10).standard_normal(x.shape).astype(np.float32)
    t = kernels.tensor(x, requires_grad=True)
    y = ops.dropout(t, p, generator=np.random.default_rng(12))
    y.backward(kernels.array(g))
    keep = kernels.numpy(y) != 0
    assert y.dtype == np.float32 and t.grad.dtype == np.float32
    np.testing.assert_array_equal(kernels.numpy(t.grad), np.where(keep, g * np.float32(1 / (1 - p)), 0))


@pytest.mark.parametrize("shape, p", [((7,), 0.3), ((4, 6), 0.5), ((2, 3, 5), 0.7)])
def test_gradcheck(kernels, shape, p):
    x = kernels.tensor(np.random.default_rng(13).standard_normal(shape), requires_grad=True)
    # a fresh generator per call, so every evaluation of the finite differences sees one mask
    assert minidl.gradcheck(lambda t: ops.dropout(t, p, generator=np.random.default_rng(14)), [x])


def test_layer_follows_train_and_eval():
    layer = layers.Dropout(0.5, generator=np.random.default_rng(0))
    x = minidl.Tensor(np.ones((10, 10), dtype=np.float32))
    assert (layer(x).numpy() == 0).any()
    layer.eval()
    assert layer(x) is x


def test_empty_input(kernels):
    y = ops.dropout(kernels.tensor(np.zeros((0, 4), dtype=np.float32)), 0.5)
    assert y.shape == (0, 4)


@pytest.mark.parametrize("p", [-0.1, 1.01, 1.5, float("nan"), "0.5", None, True])
def test_bad_p(p):
    x = minidl.Tensor(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match=r"dropout: p must be a probability in \[0, 1\]"):
        ops.dropout(x, p)


def test_bad_input_dtype():
    with pytest.raises(TypeError, match="dropout: input has dtype int64; expected float32 or float64"):
        ops.dropout(minidl.Tensor(np.arange(4)), 0.5)
    with pytest.raises(TypeError, match="dropout: input has dtype float16"):
        ops.dropout(minidl.Tensor(np.ones(4, dtype=np.float16)), 0.5)


@pytest.mark.skipif(not nvrtc.available(), reason="NVRTC not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_cu_compiles_with_nvrtc(dtype):
    ptx = nvrtc.compile_file(CU_FILE, dtype)
    assert ".entry dropout_apply(" in ptx
    if dtype == np.float32:
        assert ".f64" not in ptx, "the float32 kernel computes in double somewhere"


def test_p_one_zeroes_everything_and_0d_input_keeps_its_shape(kernels):
    x = kernels.tensor(np.ones((3, 4)), requires_grad=True)
    y = ops.dropout(x, 1.0)
    y.backward(kernels.array(np.ones((3, 4))))
    assert not kernels.numpy(y).any() and not kernels.numpy(x.grad).any()
    scalar = kernels.tensor(np.array(2.0), requires_grad=True)
    y = ops.dropout(scalar, 0.5, generator=np.random.default_rng(0))
    y.backward()
    assert y.shape == () and scalar.grad.shape == () and kernels.numpy(y) in (0.0, 4.0)
