"""conv2d by Winograd F(4x4, 3x3) and F(2x2, 5x5), and strided convolutions by space-to-depth
then Winograd: the transform matrices, forward against the plain-loop definition, float64
gradcheck, agreement with im2col, batch chunking, the choice made by algorithm="auto", and bad
requests -- each numerical test on every kernel mode."""
import numpy as np
import pytest

import minidl
from minidl.layers import Conv2d
from minidl.ops import workspace
from minidl.ops import winograd
from minidl.ops.conv import conv2d, conv2d_simple

# (N, C, H, W), O, kernel, padding, groups, bias
CONFIGS = [
    ((2, 3, 8, 8), 4, 3, 1, 1, True),       # 8x8 output: the 4x4 blocks cover it exactly
    ((2, 4, 7, 5), 6, 3, 1, 2, True),       # 7x5 output: partial blocks both ways, groups 2
    ((1, 3, 5, 8), 5, 3, 0, 1, False),      # no padding: 3x6 output
    ((2, 6, 4, 4), 6, 3, 2, 3, True),       # padding 2, groups 3
    ((3, 2, 1, 1), 3, 3, 1, 1, True),       # a 1x1 image: the one tile is mostly padding
    ((1, 2, 3, 9), 4, 3, (0, 1), 1, True),  # different padding per side: 1x9 output
    ((2, 4, 7, 6), 4, 5, 2, 2, True),       # 5x5 (AlexNet's conv2 in miniature): 7x6 output
    ((1, 3, 6, 9), 2, 5, 0, 1, False),      # 5x5, no padding: 2x5 output
    ((2, 2, 3, 3), 3, 5, (1, 2), 1, True),  # 5x5 larger than the image, padding per side
]
IDS = ["3x3-even", "3x3-odd-groups2", "3x3-no-padding", "3x3-pad2-groups3", "3x3-1x1-image",
       "3x3-mixed-padding", "5x5-groups2", "5x5-no-padding", "5x5-mixed-padding"]


def make_inputs(config, dtype, seed=0):
    (n, c, h, w), o, k, padding, groups, has_bias = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((o, c // groups, k, k)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype) if has_bias else None
    return x, weight, bias, padding, groups


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("r", [3, 5])
def test_transform_matrices_compute_a_correlation(r):
    """A^T [(G g G^T) * (B^T d B)] A is the r x r correlation of the 6x6 tile d with g."""
    m, a_t, g_matrix, g_kron = winograd.VARIANTS[r]
    assert m + r - 1 == 6
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((6, 6)), rng.standard_normal((r, r))
    u, v = g_matrix @ g @ g_matrix.T, winograd.B_T @ d @ winograd.B_T.T
    y = a_t @ (u * v) @ a_t.T
    expected = np.array([[np.sum(d[i:i + r, j:j + r] * g) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(y, expected, atol=1e-12)
    np.testing.assert_allclose(g_kron @ g.reshape(r * r), u.reshape(36), atol=1e-14)


@pytest.mark.parametrize("r", [3, 5])
def test_tile_kernels_match_the_matrices(kernels, r):
    """The hand-expanded transforms equal B^T d B and A^T e A for every tile, and their
    adjoints B e B^T and A g A^T (no padding; every tile whole)."""
    m, a_t, _, _ = winograd.VARIANTS[r]
    rng = np.random.default_rng(1)
    tiles_h, tiles_w = 2, 3
    # An input whose tiles need no padding: (m*tiles + r - 1) pixels a side, no pad.
    x = rng.standard_normal((2, 3, m * tiles_h + r - 1, m * tiles_w + r - 1))
    tiling = winograd._Tiling(x.shape, (4, 3, r, r), (0, 0), 1)
    assert (tiling.tiles_h, tiling.tiles_w) == (tiles_h, tiles_w)
    steps = winograd.CPU_STEPS if kernels.name == "cpu" else winograd.CUDA_STEPS
    v = kernels.array(np.zeros((36, 3, 2 * tiling.tiles)))
    steps.input_transform(kernels.array(x), v, tiling)
    e = rng.standard_normal((36, 3, 2 * tiling.tiles))
    y = kernels.array(np.zeros((2, 3, m * tiles_h, m * tiles_w)))
    steps.output_transform(kernels.array(e), None, False, y, tiling)
    g = rng.standard_normal((2, 3, m * tiles_h, m * tiles_w))
    dm = kernels.array(np.zeros((36, 3, 2 * tiling.tiles)))
    steps.output_adjoint(kernels.array(g), None, False, dm, tiling)
    dx = kernels.array(np.zeros(x.shape))
    steps.input_adjoint(kernels.array(e), dx, tiling)
    v, y, dm, dx = (kernels.numpy(a) for a in (v, y, dm, dx))
    expected_dx = np.zeros(x.shape)
    for b in range(2):
        for c in range(3):
            for th in range(tiles_h):
                for tw in range(tiles_w):
                    column = b * tiling.tiles + th * tiles_w + tw
                    d = x[b, c, m * th:m * th + 6, m * tw:m * tw + 6]
                    np.testing.assert_allclose(v[:, c, column].reshape(6, 6),
                                               winograd.B_T @ d @ winograd.B_T.T, atol=1e-12)
                    block = a_t @ e[:, c, column].reshape(6, 6) @ a_t.T
                    np.testing.assert_allclose(y[b, c, m * th:m * th + m, m * tw:m * tw + m],
                                               block, atol=1e-12)
                    gb = g[b, c, m * th:m * th + m, m * tw:m * tw + m]
                    np.testing.assert_allclose(dm[:, c, column].reshape(6, 6),
                                               a_t.T @ gb @ a_t, atol=1e-12)
                    expected_dx[b, c, m * th:m * th + 6, m * tw:m * tw + 6] += (
                        winograd.B_T.T @ e[:, c, column].reshape(6, 6) @ winograd.B_T)
    np.testing.assert_allclose(dx, expected_dx, atol=1e-11)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(kernels, config, dtype):
    x, w, b, padding, groups = make_inputs(config, dtype)
    y = conv2d(kernels.tensor(x), kernels.tensor(w), None if b is None else kernels.tensor(b),
               padding=padding, groups=groups, algorithm="winograd")
    expected = conv2d_simple(x, w, b, (1, 1), pair(padding), groups)
    assert y.dtype == dtype and y.shape == expected.shape
    # float32: the larger tiles' rounding is a few 1e-6 of the output's scale (module doc).
    tol = 3e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(kernels.numpy(y), expected, rtol=0,
                               atol=tol * np.abs(expected).max())


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
@pytest.mark.parametrize("k, padding, size", [(3, 1, 13), (5, 2, 27)], ids=["conv4", "conv2"])
def test_agrees_with_im2col_on_alexnet_like_layers(kernels, dtype, k, padding, size):
    """AlexNet's conv4 (13x13, 3x3) and conv2 (27x27, 5x5) in miniature, groups 2."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 16, size, size)).astype(dtype)
    w = (0.1 * rng.standard_normal((12, 8, k, k))).astype(dtype)
    b = rng.standard_normal(12).astype(dtype)
    fast = forward_backward(kernels, x, w, b, padding, 2, "winograd")
    plain = forward_backward(kernels, x, w, b, padding, 2, "im2col")
    tol = 3e-5 if dtype == np.float32 else 1e-12
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
    x, w, b, padding, groups = make_inputs(((5, 4, 7, 6), 6, 3, 1, 2, True), np.float64)
    whole = forward_backward(kernels, x, w, b, padding, groups, "winograd")
    tiling = winograd._Tiling(x.shape, w.shape, (1, 1), 2)
    per_image = 36 * 6 * tiling.tiles * x.dtype.itemsize
    assert tiling.bytes_per_image(x.dtype.itemsize) == per_image
    monkeypatch.setattr(workspace, "WORKSPACE_BYTES", images_per_chunk * per_image)
    assert tiling.geo.chunk_size(per_image) == images_per_chunk
    if not keep:
        monkeypatch.setattr(workspace, "KEEP_BYTES", 0)
    chunked = forward_backward(kernels, x, w, b, padding, groups, "winograd")
    for name, a, c in zip(("y", "dx", "dw", "db"), whole, chunked):
        np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12, err_msg=name)


def test_chunks_and_constants_follow_the_inputs_device(kernels, monkeypatch):
    """Forward and backward chunk the batch by the workspace limit of the input's own array
    module (a GPU's is larger than the CPU's), and kron(G, G) reaches a device once, not at
    every call."""
    from minidl import backend
    asked = []
    limit = workspace.workspace_bytes
    monkeypatch.setattr(workspace, "workspace_bytes", lambda xp=np: asked.append(xp) or limit(xp))
    x, w, b, padding, groups = make_inputs(CONFIGS[0], np.float64)
    forward_backward(kernels, x, w, b, padding, groups, "winograd")
    xp = backend.array_module(kernels.array(x))
    assert len(asked) == 2 and all(a is xp for a in asked)
    g_kron = winograd.VARIANTS[3][3]
    first = workspace.constant(xp, "test_g_kron", g_kron)
    assert workspace.constant(xp, "test_g_kron", g_kron) is first
    assert backend.array_module(first) is xp
    np.testing.assert_array_equal(backend.to_numpy(first) if xp is not np else first, g_kron)


def test_empty_batch_and_non_contiguous_input(kernels):
    x, w, b, padding, groups = make_inputs(CONFIGS[0], np.float64)
    y = conv2d(kernels.tensor(x[:0]), kernels.tensor(w), kernels.tensor(b), padding=1)
    assert y.shape == (0, 4, 8, 8)
    strided = np.asfortranarray(x)
    y = conv2d(kernels.tensor(strided), kernels.tensor(w), kernels.tensor(b), padding=1)
    np.testing.assert_allclose(kernels.numpy(y), conv2d_simple(x, w, b, (1, 1), (1, 1), 1),
                               atol=1e-10)


def test_auto_picks_winograd_only_for_3x3_and_5x5_at_stride_1():
    x = minidl.Tensor(np.zeros((1, 2, 9, 9), np.float32))
    w3, w5, w7 = (minidl.Tensor(np.zeros((2, 2, k, k), np.float32), requires_grad=True)
                  for k in (3, 5, 7))
    assert conv2d(x, w3, padding=1).creator.name == "WinogradConv2dFunction"
    assert conv2d(x, w5, padding=2).creator.name == "WinogradConv2dFunction"
    assert conv2d(x, w3, padding=1, algorithm="im2col").creator.name == "Im2colConv2dFunction"
    assert conv2d(x, w3, stride=2).creator.name == "Im2colConv2dFunction"
    assert conv2d(x, w7).creator.name == "Im2colConv2dFunction"
    w35 = minidl.Tensor(np.zeros((2, 2, 3, 5), np.float32), requires_grad=True)
    assert conv2d(x, w35).creator.name == "Im2colConv2dFunction"


def test_layer_passes_the_algorithm_on():
    layer = Conv2d(2, 3, 3, padding=1, algorithm="im2col")
    assert "algorithm='im2col'" in repr(layer)
    y = layer(minidl.Tensor(np.ones((1, 2, 4, 4), np.float32)))
    assert y.creator.name == "Im2colConv2dFunction"
    with pytest.raises(ValueError, match="Conv2d: algorithm must be one of"):
        Conv2d(2, 3, 3, algorithm="fft")


@pytest.mark.parametrize("weight_shape, stride, pattern", [
    ((2, 2, 7, 7), 1, r"algorithm='winograd' needs a 3x3 or 5x5 kernel at stride 1 \(or a square "
                      r"k x k one at stride s with ceil\(k / s\) = 3 or 5\), got kernel \(7, 7\)"),
    ((2, 2, 3, 3), 2, r"needs a 3x3 or 5x5 kernel at stride 1 .*got kernel \(3, 3\) and "
                      r"stride \(2, 2\)"),
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


# -- strided convolutions: space-to-depth, then Winograd ------------------------------------------
# (N, C, H, W), O, kernel, stride, padding, groups, bias
STRIDED = [
    ((2, 3, 31, 31), 4, 11, 4, 0, 1, True),   # AlexNet's conv1 in miniature: 6x6 output
    ((2, 3, 30, 29), 4, 11, 4, 2, 1, True),   # padded, input not a multiple of the stride
    ((1, 4, 13, 12), 6, 5, 2, 2, 2, True),    # 5x5 at stride 2: 3x3 after; groups 2
    ((2, 2, 9, 10), 3, 6, 2, 1, 1, False),    # an even kernel
    ((1, 3, 20, 20), 2, 9, 3, (1, 2), 1, True),  # stride 3, padding per side
    ((1, 2, 30, 30), 2, 10, 2, 0, 1, True),   # 10x10 at stride 2: 5x5 after, F(2x2, 5x5)
]
STRIDED_IDS = ["conv1", "conv1-padded", "5x5-s2-groups2", "6x6-s2", "9x9-s3", "10x10-s2"]


def make_strided(config, dtype, seed=0):
    (n, c, h, w), o, k, stride, padding, groups, has_bias = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((o, c // groups, k, k)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype) if has_bias else None
    return x, weight, bias, stride, padding, groups


@pytest.mark.parametrize("config", STRIDED, ids=STRIDED_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_forward_matches_reference(kernels, config, dtype):
    x, w, b, stride, padding, groups = make_strided(config, dtype)
    y = conv2d(kernels.tensor(x), kernels.tensor(w), None if b is None else kernels.tensor(b),
               stride=stride, padding=padding, groups=groups, algorithm="winograd")
    expected = conv2d_simple(x, w, b, pair(stride), pair(padding), groups)
    assert y.dtype == dtype and y.shape == expected.shape
    tol = 3e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(kernels.numpy(y), expected, rtol=0,
                               atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("config", STRIDED, ids=STRIDED_IDS)
def test_strided_gradcheck(kernels, config):
    x, w, b, stride, padding, groups = make_strided(config, np.float64)
    x = x[:1, :, :min(x.shape[2], 16), :min(x.shape[3], 16)]  # small enough for differences
    tensors = [kernels.tensor(x, requires_grad=True), kernels.tensor(w, requires_grad=True)]
    if b is not None:
        tensors.append(kernels.tensor(b, requires_grad=True))

    def fn(xt, wt, bt=None):
        return conv2d(xt, wt, bt, stride=stride, padding=padding, groups=groups,
                      algorithm="winograd")

    assert minidl.gradcheck(fn, tensors)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_agrees_with_im2col_on_conv1(kernels, dtype):
    """AlexNet's conv1 geometry (11x11, stride 4, 3 channels) with its fused ReLU."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 67, 67)).astype(dtype)
    w = (0.05 * rng.standard_normal((8, 3, 11, 11))).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    results = {}
    for algorithm in ("auto", "im2col"):
        xt, wt, bt = (kernels.tensor(a, requires_grad=True) for a in (x, w, b))
        y = conv2d(xt, wt, bt, stride=4, relu=True, algorithm=algorithm)
        g = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
        y.backward(kernels.tensor(g))
        results[algorithm] = [kernels.numpy(a) for a in (y, xt.grad, wt.grad, bt.grad)]
    tol = 3e-5 if dtype == np.float32 else 1e-12
    for name, a, c in zip(("y", "dx", "dw", "db"), results["auto"], results["im2col"]):
        scale = max(1.0, float(np.abs(c).max()))
        np.testing.assert_allclose(a, c, rtol=0, atol=tol * scale, err_msg=name)


def test_auto_takes_space_to_depth_where_it_gives_a_winograd_kernel():
    x = minidl.Tensor(np.zeros((1, 3, 35, 35), np.float32))

    def first_op(k, stride, **options):
        w = minidl.Tensor(np.zeros((2, 3 // options.get("groups", 1), k, k), np.float32),
                          requires_grad=True)
        y = conv2d(x, w, stride=stride, **options)
        return y.creator.name, y.creator.inputs[1].creator  # the weights, rearranged or not

    name, before = first_op(11, 4)
    assert name == "WinogradConv2dFunction" and before.name == "SpaceToDepthFunction"
    assert first_op(5, 2)[0] == "WinogradConv2dFunction"
    assert first_op(3, 2)[0] == "Im2colConv2dFunction"  # ceil(3/2) = 2: no Winograd kernel
    assert first_op(7, 2)[0] == "Im2colConv2dFunction"  # 4
    assert first_op(11, 4, algorithm="im2col")[0] == "Im2colConv2dFunction"
    assert first_op(11, 4, dilation=2)[0] == "Im2colConv2dFunction"


def test_strided_errors_name_the_callers_shapes():
    x = minidl.Tensor(np.zeros((1, 4, 35, 35), np.float32))
    w = minidl.Tensor(np.zeros((2, 3, 11, 11), np.float32))
    with pytest.raises(ValueError, match=r"input has 4 channels \(shape \(1, 4, 35, 35\)\) but "
                                         r"weight \(2, 3, 11, 11\)"):
        conv2d(x, w, stride=4)
