"""space_to_depth and pixel_unshuffle: the plain-loop reference, the backward as the adjoint,
float64 gradcheck, PyTorch's pixel_unshuffle, bad inputs -- on every kernel mode."""
import numpy as np
import pytest

import minidl
from minidl import ops
from minidl.ops.space_to_depth import space_to_depth_simple

# (N, C, H, W), block, padding, output size (None: the default)
CONFIGS = [
    ((2, 3, 8, 8), 2, (0, 0), None),          # exact blocks
    ((1, 3, 11, 9), 4, (0, 0), None),         # a partial last block, filled with zeros
    ((2, 2, 7, 6), 3, (2, 1), None),          # padding before (and the default after)
    ((1, 3, 23, 23), 4, (0, 0), (7, 7)),      # AlexNet's conv1 in miniature: 5 + 3 - 1 blocks
    ((1, 2, 9, 9), 2, (1, 1), (3, 2)),        # an output smaller than the input: rows dropped
    ((1, 1, 2, 3), 1, (1, 0), (4, 4)),        # block 1: padding only
]
IDS = ["exact", "partial", "padded", "conv1", "cropped", "block1"]


def default_size(shape, block, padding):
    return tuple(-(-(size + 2 * pad) // block) for size, pad in zip(shape[2:], padding))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_loops_and_backward_is_the_adjoint(kernels, config, dtype):
    shape, block, padding, size = config
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    xt = kernels.tensor(x, requires_grad=True)
    y = ops.space_to_depth(xt, block, padding, size)
    expected = space_to_depth_simple(x, block, padding, size or default_size(shape, block, padding))
    assert y.dtype == dtype and y.shape == expected.shape
    np.testing.assert_array_equal(kernels.numpy(y), expected)  # a copy: exact
    # <S x, g> = <x, S^T g> for every x and g: the backward is the forward's transpose.
    g = rng.standard_normal(y.shape).astype(dtype)
    y.backward(kernels.tensor(g))
    dx = kernels.numpy(xt.grad)
    basis = np.zeros_like(x)
    for index in [(0, 0, 0, 0), tuple(s - 1 for s in shape), (0, shape[1] - 1, shape[2] // 2, 1)]:
        basis[...] = 0
        basis[index] = 1
        moved = space_to_depth_simple(basis, block, padding, y.shape[2:])
        assert dx[index] == pytest.approx(float((moved * g).sum()), abs=1e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_gradcheck(kernels, config):
    shape, block, padding, size = config
    x = kernels.tensor(np.random.default_rng(1).standard_normal(shape), requires_grad=True)
    assert minidl.gradcheck(lambda a: ops.space_to_depth(a, block, padding, size), [x])


def test_pixel_unshuffle_matches_torch(kernels):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 12)).astype(np.float32)
    for factor in (1, 2, 4):
        expected = torch.nn.functional.pixel_unshuffle(torch.from_numpy(x), factor).numpy()
        np.testing.assert_array_equal(kernels.numpy(ops.pixel_unshuffle(kernels.tensor(x), factor)),
                                      expected)


def test_pixel_unshuffle_without_torch_keeps_the_channel_order():
    x = np.arange(2 * 2 * 4 * 4, dtype=np.float64).reshape(2, 2, 4, 4)
    y = ops.pixel_unshuffle(x, 2).data
    for c in range(2):
        for r in range(2):
            for q in range(2):
                np.testing.assert_array_equal(y[:, c * 4 + r * 2 + q], x[:, c, r::2, q::2])


@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.space_to_depth(np.zeros((2, 3, 4)), 2), ValueError,
     r"space_to_depth: input must be 4-D \(N, C, H, W\), got shape \(2, 3, 4\)"),
    (lambda: ops.space_to_depth(np.zeros((1, 1, 4, 4)), 0), ValueError,
     r"space_to_depth: block must be"),
    (lambda: ops.space_to_depth(np.zeros((1, 1, 4, 4), np.int64), 2), TypeError,
     r"space_to_depth: input has dtype int64; expected float32 or float64"),
    (lambda: ops.space_to_depth(np.zeros((1, 1, 4, 4)), 2, padding=-1), ValueError,
     r"space_to_depth: padding"),
    (lambda: ops.pixel_unshuffle(np.zeros((1, 1, 6, 4)), 4), ValueError,
     r"pixel_unshuffle: height and width must be multiples of downscale_factor=4, "
     r"got input shape \(1, 1, 6, 4\)"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()
