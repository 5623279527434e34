"""conv2d by Winograd F(2x2, 3x3): the transform matrices, forward against the plain-loop
reference, float64 gradcheck, agreement with im2col, batch chunking, the choice made by
algorithm="auto", and bad requests -- each numerical test on every kernel mode."""
import numpy as np
import pytest

import minidl
from minidl.layers import Conv2d
from minidl.ops import workspace
from minidl.ops import winograd
from minidl.ops.conv import conv2d, conv2d_simple

# (N, C, H, W), O, padding, groups, bias
CONFIGS = [
    ((2, 3, 6, 6), 4, 1, 1, True),       # even output: the tiles cover it exactly
    ((2, 4, 7, 5), 6, 1, 2, True),       # odd output in both directions, groups 2
    ((1, 3, 5, 8), 5, 0, 1, False),      # no padding: 3x6 output
    ((2, 6, 4, 4), 6, 2, 3, True),       # padding 2, groups 3
    ((3, 2, 1, 1), 3, 1, 1, True),       # a 1x1 image: the one tile is mostly padding
    ((1, 2, 3, 9), 4, (0, 1), 1, True),  # different padding per side: 1x9 output
]
IDS = ["even", "odd-groups2", "no-padding", "pad2-groups3", "1x1-image", "mixed-padding"]


def make_inputs(config, dtype, seed=0):
    (n, c, h, w), o, padding, groups, has_bias = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((o, c // groups, 3, 3)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype) if has_bias else None
    return x, weight, bias, padding, groups


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def test_transform_matrices_compute_a_2x2_correlation():
    """A^T [(G g G^T) * (B^T d B)] A is the 3x3 correlation of the 4x4 tile d with g."""
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    u, v = winograd.G @ g @ winograd.G.T, winograd.B_T @ d @ winograd.B_T.T
    y = winograd.A_T @ (u * v) @ winograd.A_T.T
    expected = np.array([[np.sum(d[r:r + 3, s:s + 3] * g) for s in range(2)] for r in range(2)])
    np.testing.assert_allclose(y, expected, atol=1e-12)
    np.testing.assert_allclose(winograd.G_KRON @ g.reshape(9),
                               (winograd.G @ g @ winograd.G.T).reshape(16), atol=1e-14)


def test_input_transform_kernel_matches_the_matrices(kernels):
    """The hand-expanded tile transform equals B^T d B for every tile (no padding)."""
    rng = np.random.default_rng(1)
    padded = np.zeros((2, 3, 8, 10))  # zero border, so no tile needs the kernel's padding
    padded[:, :, 1:7, 1:9] = rng.standard_normal((2, 3, 6, 8))
    tiling = winograd._Tiling(padded.shape, (4, 3, 3, 3), (0, 0), 1)  # 6x8 output: 3x4 tiles
    v = kernels.array(np.zeros((16, 3, 2 * tiling.tiles)))
    steps = winograd.CPU_STEPS if kernels.name == "cpu" else winograd.CUDA_STEPS
    steps.input_transform(kernels.array(padded), v, tiling)
    v = kernels.numpy(v)
    for b in range(2):
        for c in range(3):
            for th in range(tiling.tiles_h):
                for tw in range(tiling.tiles_w):
                    d = padded[b, c, 2 * th:2 * th + 4, 2 * tw:2 * tw + 4]
                    column = b * tiling.tiles + th * tiling.tiles_w + tw
                    np.testing.assert_allclose(v[:, c, column].reshape(4, 4),
                                               winograd.B_T @ d @ winograd.B_T.T, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(kernels, config, dtype):
    x, w, b, padding, groups = make_inputs(config, dtype)
    y = conv2d(kernels.tensor(x), kernels.tensor(w), None if b is None else kernels.tensor(b),
               padding=padding, groups=groups, algorithm="winograd")
    expected = conv2d_simple(x, w, b, (1, 1), pair(padding), groups)
    assert y.dtype == dtype and y.shape == expected.shape
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(kernels.numpy(y), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_gradcheck(kernels, config):
    x, w, b, padding, groups = make_inputs(config, np.float64)
    tensors = [kernels.tensor(x, requires_grad=True), kernels.tensor(w, requires_grad=True)]
    if b is not None:
        tensors.append(kernels.tensor(b, requires_grad=True))

    def fn(xt, wt, bt=None):
        return conv2d(xt, wt, bt, padding=padding, groups=groups, algorithm="winograd")

    assert minidl.gradcheck(fn, tensors)


def forward_backward(kernels, x, w, b, padding, groups, algorithm, need=(True, True, True)):
    xt, wt, bt = (kernels.tensor(a, requires_grad=r) for a, r in zip((x, w, b), need))
    y = conv2d(xt, wt, bt, padding=padding, groups=groups, algorithm=algorithm)
    g = np.random.default_rng(7).standard_normal(y.shape).astype(x.dtype)
    y.backward(kernels.tensor(g))
    return [kernels.numpy(a) if a is not None else None
            for a in (y, xt.grad, wt.grad, bt.grad)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_agrees_with_im2col_on_an_alexnet_like_layer(kernels, dtype):
    """conv4 of AlexNet in miniature (13x13, padding 1, groups 2), float32 and float64."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 16, 13, 13)).astype(dtype)
    w = (0.1 * rng.standard_normal((12, 8, 3, 3))).astype(dtype)
    b = rng.standard_normal(12).astype(dtype)
    fast = forward_backward(kernels, x, w, b, 1, 2, "winograd")
    plain = forward_backward(kernels, x, w, b, 1, 2, "im2col")
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for name, a, c in zip(("y", "dx", "dw", "db"), fast, plain):
        scale = max(1.0, float(np.abs(c).max()))
        np.testing.assert_allclose(a, c, rtol=0, atol=tol * scale, err_msg=name)


def test_only_the_needed_gradients(kernels):
    """The first layer's input needs no gradient; a frozen weight needs none either."""
    x, w, b, padding, groups = make_inputs(CONFIGS[1], np.float64)
    full = forward_backward(kernels, x, w, b, padding, groups, "winograd")
    no_x = forward_backward(kernels, x, w, b, padding, groups, "winograd", (False, True, True))
    no_w = forward_backward(kernels, x, w, b, padding, groups, "winograd", (True, False, False))
    assert no_x[1] is None and no_w[2] is None and no_w[3] is None
    np.testing.assert_allclose(no_x[2], full[2], atol=1e-12)
    np.testing.assert_allclose(no_x[3], full[3], atol=1e-12)
    np.testing.assert_allclose(no_w[1], full[1], atol=1e-12)


@pytest.mark.parametrize("images_per_chunk", [1, 2])
@pytest.mark.parametrize("keep", [True, False])
def test_batch_chunking_gives_the_same_result(kernels, monkeypatch, images_per_chunk, keep):
    """A batch of 5 in chunks of 1 or 2 images, with V kept from forward or recomputed."""
    x, w, b, padding, groups = make_inputs(((5, 4, 7, 6), 6, 1, 2, True), np.float64)
    whole = forward_backward(kernels, x, w, b, padding, groups, "winograd")
    tiling = winograd._Tiling(x.shape, w.shape, (1, 1), 2)
    per_image = 16 * 6 * tiling.tiles * x.dtype.itemsize
    assert tiling.bytes_per_image(x.dtype.itemsize) == per_image
    monkeypatch.setattr(workspace, "WORKSPACE_BYTES", images_per_chunk * per_image)
    assert tiling.geo.chunk_size(per_image) == images_per_chunk
    if not keep:
        monkeypatch.setattr(workspace, "KEEP_BYTES", 0)
    chunked = forward_backward(kernels, x, w, b, padding, groups, "winograd")
    for name, a, c in zip(("y", "dx", "dw", "db"), whole, chunked):
        np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12, err_msg=name)


def test_empty_batch_and_non_contiguous_input(kernels):
    x, w, b, padding, groups = make_inputs(CONFIGS[0], np.float64)
    y = conv2d(kernels.tensor(x[:0]), kernels.tensor(w), kernels.tensor(b), padding=1)
    assert y.shape == (0, 4, 6, 6)
    strided = np.asfortranarray(x)
    y = conv2d(kernels.tensor(strided), kernels.tensor(w), kernels.tensor(b), padding=1)
    np.testing.assert_allclose(kernels.numpy(y), conv2d_simple(x, w, b, (1, 1), (1, 1), 1),
                               atol=1e-10)


def test_auto_picks_winograd_only_for_3x3_stride_1():
    x = minidl.Tensor(np.zeros((1, 2, 9, 9), np.float32))
    w3, w5 = (minidl.Tensor(np.zeros((2, 2, k, k), np.float32), requires_grad=True) for k in (3, 5))
    assert conv2d(x, w3, padding=1).creator.name == "WinogradConv2dFunction"
    assert conv2d(x, w3, padding=1, algorithm="im2col").creator.name == "Im2colConv2dFunction"
    assert conv2d(x, w3, stride=2).creator.name == "Im2colConv2dFunction"
    assert conv2d(x, w5).creator.name == "Im2colConv2dFunction"


def test_layer_passes_the_algorithm_on():
    layer = Conv2d(2, 3, 3, padding=1, algorithm="im2col")
    assert "algorithm='im2col'" in repr(layer)
    y = layer(minidl.Tensor(np.ones((1, 2, 4, 4), np.float32)))
    assert y.creator.name == "Im2colConv2dFunction"
    with pytest.raises(ValueError, match="Conv2d: algorithm must be one of"):
        Conv2d(2, 3, 3, algorithm="fft")


@pytest.mark.parametrize("weight_shape, stride, pattern", [
    ((2, 2, 5, 5), 1, r"algorithm='winograd' needs a 3x3 kernel at stride 1, got kernel \(5, 5\)"),
    ((2, 2, 3, 3), 2, r"needs a 3x3 kernel at stride 1, got kernel \(3, 3\) and stride \(2, 2\)"),
])
def test_winograd_refuses_other_geometries(weight_shape, stride, pattern):
    x = minidl.Tensor(np.zeros((1, 2, 9, 9), np.float32))
    w = minidl.Tensor(np.zeros(weight_shape, np.float32))
    with pytest.raises(ValueError, match=pattern):
        conv2d(x, w, stride=stride, algorithm="winograd")


def test_unknown_algorithm_is_refused():
    x = minidl.Tensor(np.zeros((1, 2, 9, 9), np.float32))
    w = minidl.Tensor(np.zeros((2, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"conv2d: algorithm must be one of 'auto', 'im2col', "
                                         r"'winograd', got 'fft'"):
        conv2d(x, w, algorithm="fft")
