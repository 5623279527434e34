"""conv2d by im2col (algorithm="im2col"; test_winograd.py covers the Winograd path): forward
against a plain-loop reference, float64 gradcheck, batch chunking, torch, NVRTC and bad inputs
-- each numerical test on every kernel mode (cpu, cuda_on_cpu, cuda)."""
from types import SimpleNamespace

import numpy as np
import pytest

import minidl
from minidl.ops import im2col, workspace
from minidl.ops.conv import conv2d, conv2d_simple
from minidl.ops.conv_geometry import Geometry
from minidl.testing import nvrtc


# (N, C, H, W), (O, kH, kW), stride, padding, groups, bias
CONFIGS = [
    ((2, 3, 7, 7), (4, 3, 3), 1, 0, 1, True),
    ((2, 4, 9, 8), (6, 3, 3), 2, 1, 2, True),              # groups 2, stride and padding
    ((1, 6, 10, 11), (9, 5, 3), (3, 2), (2, 1), 3, False),  # groups 3, non-square everything
    ((3, 2, 8, 6), (3, 2, 4), (1, 2), (0, 2), 1, False),    # padding wider than needed
    ((2, 3, 23, 23), (4, 11, 11), 4, 0, 1, True),           # AlexNet conv1 in miniature
    ((2, 5, 4, 4), (3, 1, 1), 1, 0, 1, True),               # 1x1
    ((2, 2, 5, 1), (3, 3, 3), 3, 1, 1, True),               # some taps read only padding
]
IDS = ["3x3", "groups2-stride2-pad1", "groups3-nonsquare", "wide-kernel-pad", "11x11-stride4", "1x1",
       "padding-only-taps"]


def make_inputs(config, dtype, seed=0):
    (n, c, h, w), (o, kh, kw), stride, padding, groups, has_bias = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((o, c // groups, kh, kw)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype) if has_bias else None
    return x, weight, bias, stride, padding, groups


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(kernels, config, dtype):
    x, w, b, stride, padding, groups = make_inputs(config, dtype)
    y = conv2d(kernels.tensor(x), kernels.tensor(w), None if b is None else kernels.tensor(b),
               stride=stride, padding=padding, groups=groups, algorithm="im2col")
    expected = conv2d_simple(x, w, b, pair(stride), pair(padding), groups)
    assert y.dtype == dtype
    assert y.shape == expected.shape
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(kernels.numpy(y), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("config", CONFIGS[:4] + CONFIGS[6:], ids=IDS[:4] + IDS[6:])
def test_gradcheck(kernels, config):
    x, w, b, stride, padding, groups = make_inputs(config, np.float64)
    tensors = [kernels.tensor(x, requires_grad=True), kernels.tensor(w, requires_grad=True)]
    if b is not None:
        tensors.append(kernels.tensor(b, requires_grad=True))

    def fn(xt, wt, bt=None):
        return conv2d(xt, wt, bt, stride=stride, padding=padding, groups=groups,
                      algorithm="im2col")

    assert minidl.gradcheck(fn, tensors)


def run_forward_backward(kernels, x, w, b, stride, padding, groups, grad_seed=1):
    xt = kernels.tensor(x, requires_grad=True)
    wt = kernels.tensor(w, requires_grad=True)
    bt = kernels.tensor(b, requires_grad=True)
    y = conv2d(xt, wt, bt, stride=stride, padding=padding, groups=groups, algorithm="im2col")
    g = np.random.default_rng(grad_seed).standard_normal(y.shape).astype(x.dtype)
    y.backward(kernels.tensor(g))
    return [kernels.numpy(a) for a in (y, xt.grad, wt.grad, bt.grad)]


@pytest.mark.parametrize("workspace_images", [1, 2])
def test_batch_chunking_gives_the_same_result(kernels, monkeypatch, workspace_images):
    """A workspace of 1 or 2 images' columns splits a batch of 5 into 5 or 3 chunks."""
    x, w, b, stride, padding, groups = make_inputs(((5, 4, 9, 7), (6, 3, 3), 2, 1, 2, True),
                                                   np.float64)
    whole = run_forward_backward(kernels, x, w, b, stride, padding, groups)
    geo = Geometry(x.shape, w.shape, (2, 2), (1, 1), 2)
    per_image = geo.rows * geo.pixels * x.dtype.itemsize
    assert im2col.bytes_per_image(geo, x.dtype.itemsize) == per_image
    monkeypatch.setattr(workspace, "WORKSPACE_BYTES", workspace_images * per_image)
    monkeypatch.setattr(workspace, "GPU_WORKSPACE_MAX", workspace_images * per_image)
    assert geo.chunk_size(per_image) == workspace_images
    chunked = run_forward_backward(kernels, x, w, b, stride, padding, groups)
    for name, a, c in zip(("y", "dx", "dw", "db"), whole, chunked):
        np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(whole[0], conv2d_simple(x, w, b, (2, 2), (1, 1), 2), atol=1e-10)


def test_gradcheck_with_chunking(kernels, monkeypatch):
    monkeypatch.setattr(workspace, "WORKSPACE_BYTES", 1)  # one image per chunk
    monkeypatch.setattr(workspace, "GPU_WORKSPACE_MAX", 1)
    x, w, b, stride, padding, groups = make_inputs(((3, 2, 5, 6), (4, 3, 2), 1, 1, 2, True),
                                                   np.float64)
    tensors = [kernels.tensor(a, requires_grad=True) for a in (x, w, b)]
    assert minidl.gradcheck(lambda *t: conv2d(*t, stride=stride, padding=padding, groups=groups),
                            tensors)


def test_chunk_sizes_are_balanced(monkeypatch):
    geo = Geometry((32, 3, 227, 227), (96, 3, 11, 11), (4, 4), (0, 0), 1)
    per_image = geo.rows * geo.pixels * 4
    monkeypatch.setattr(workspace, "WORKSPACE_BYTES", 30 * per_image)
    assert geo.chunk_size(per_image) == 16  # two chunks of 16, not 30 + 2
    assert geo.chunks(per_image) == [(0, 16), (16, 16)]
    monkeypatch.setattr(workspace, "WORKSPACE_BYTES", 1024 * 2**20)
    assert geo.chunk_size(per_image) == 32


def test_workspace_limits_follow_the_gpus_free_memory(monkeypatch):
    """The CPU keeps its limits; a GPU's are fractions of the memory it had free when first
    asked, within the CPU's values and the GPU maxima, so an AlexNet batch of 128 is one chunk
    there (conv1's columns: 128 x 363 x 3025 floats, 563 MB) and its columns are kept."""
    class FakeGpu:  # the part of CuPy the budgets read
        def __init__(self, device, free):
            self.cuda = SimpleNamespace(Device=lambda: SimpleNamespace(id=device, mem_info=(free, 2 * free)))

    monkeypatch.setattr(workspace, "_free_at_first_use", {})
    assert workspace.workspace_bytes(np) == workspace.WORKSPACE_BYTES
    assert workspace.keep_bytes(np) == workspace.KEEP_BYTES
    h200 = FakeGpu(0, 140 * 2**30)
    assert workspace.workspace_bytes(h200) == workspace.GPU_WORKSPACE_MAX == 4 * 2**30
    assert workspace.keep_bytes(h200) == workspace.GPU_KEEP_MAX == 8 * 2**30
    assert workspace.workspace_bytes(FakeGpu(0, 2**30)) == 4 * 2**30  # free memory read once per device
    small = FakeGpu(1, 16 * 2**30)
    assert workspace.workspace_bytes(small) == 2**30 and workspace.keep_bytes(small) == 2 * 2**30
    tiny = FakeGpu(2, 2**30)
    assert workspace.workspace_bytes(tiny) == workspace.WORKSPACE_BYTES  # never below the CPU's
    geo = Geometry((128, 3, 227, 227), (96, 3, 11, 11), (4, 4), (0, 0), 1)
    per_image = im2col.bytes_per_image(geo, 4)
    assert geo.chunks(per_image, h200) == [(0, 128)]
    assert len(geo.chunks(per_image)) > 1  # the CPU's workspace splits it
    assert geo.rows * 128 * geo.pixels * 4 <= workspace.keep_bytes(h200)


def test_matches_torch_alexnet_like(kernels):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    cases = [  # conv1 (11x11 stride 4) and conv2 (5x5 pad 2 groups 2), smaller images
        ((4, 3, 39, 39), (16, 3, 11, 11), 4, 0, 1),
        ((4, 16, 9, 9), (32, 8, 5, 5), 1, 2, 2),
    ]
    for x_shape, w_shape, stride, padding, groups in cases:
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = (0.1 * rng.standard_normal(w_shape)).astype(np.float32)
        b = rng.standard_normal(w_shape[0]).astype(np.float32)
        ours = run_forward_backward(kernels, x, w, b, stride, padding, groups)
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.conv2d(xt, wt, bt, stride=stride, padding=padding, groups=groups)
        g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
        y.backward(torch.tensor(g))
        theirs = [y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()]
        for name, a, t in zip(("y", "dx", "dw", "db"), ours, theirs):
            np.testing.assert_allclose(a, t, rtol=1e-4, atol=1e-3, err_msg=name)


def test_only_the_needed_gradients(kernels):
    x, w, b, stride, padding, groups = make_inputs(CONFIGS[1], np.float64)
    _, full_dx, full_dw, _ = run_forward_backward(kernels, x, w, b, stride, padding, groups)
    g = np.random.default_rng(1).standard_normal((2, 6, 5, 4))

    def backward(x_grad, w_grad, b_grad):
        xt = kernels.tensor(x, requires_grad=x_grad)
        wt = kernels.tensor(w, requires_grad=w_grad)
        bt = kernels.tensor(b, requires_grad=b_grad)
        y = conv2d(xt, wt, bt, stride=stride, padding=padding, groups=groups)
        y.backward(kernels.tensor(g))
        return xt.grad, wt.grad, bt.grad

    dx, dw, db = backward(False, True, False)  # the first layer: the image needs no gradient
    assert dx is None and db is None
    np.testing.assert_allclose(kernels.numpy(dw), full_dw, rtol=1e-12, atol=1e-12)
    dx, dw, db = backward(True, False, False)  # frozen weights
    assert dw is None and db is None
    np.testing.assert_allclose(kernels.numpy(dx), full_dx, rtol=1e-12, atol=1e-12)


def test_backward_is_deterministic(kernels):
    x, w, b, stride, padding, groups = make_inputs(((3, 4, 11, 10), (6, 5, 5), 1, 2, 2, True),
                                                   np.float32)
    first = run_forward_backward(kernels, x, w, b, stride, padding, groups)
    second = run_forward_backward(kernels, x, w, b, stride, padding, groups)
    for a, c in zip(first, second):
        assert np.array_equal(a, c)


def test_non_contiguous_input_and_empty_batch(kernels):
    x, w, b, stride, padding, groups = make_inputs(CONFIGS[0], np.float64)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values
    assert not xt.flags.c_contiguous
    y = conv2d(kernels.tensor(xt), kernels.tensor(w), kernels.tensor(b))
    np.testing.assert_allclose(kernels.numpy(y), conv2d_simple(x, w, b, (1, 1), (0, 0), 1),
                               atol=1e-10)
    empty = conv2d(kernels.tensor(x[:0]), kernels.tensor(w), kernels.tensor(b))
    assert empty.shape == (0, 4, 5, 5)


def test_workspace_is_reused():
    x, w, b, stride, padding, groups = make_inputs(CONFIGS[1], np.float32)
    conv2d(minidl.Tensor(x), minidl.Tensor(w), minidl.Tensor(b), stride=stride,
           padding=padding, groups=groups)
    buffers = dict(workspace._buffers.by_role)
    conv2d(minidl.Tensor(x), minidl.Tensor(w), minidl.Tensor(b), stride=stride,
           padding=padding, groups=groups)
    for key, array in workspace._buffers.by_role.items():
        assert array is buffers[key]


def test_conv2d_layer(kernels):
    layer = kernels.module(minidl.layers.Conv2d(4, 6, 3, stride=2, padding=1, groups=2))
    x = np.random.default_rng(0).standard_normal((2, 4, 7, 7)).astype(np.float32)
    y = layer(kernels.tensor(x))
    expected = conv2d_simple(x, layer.weight.numpy(), layer.bias.numpy(), (2, 2), (1, 1), 2)
    np.testing.assert_allclose(kernels.numpy(y), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not nvrtc.available(), reason="NVRTC library not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_source_compiles_with_nvrtc(dtype):
    ptx = nvrtc.compile_file(im2col._kernels.path, dtype)
    assert ".entry conv_im2col" in ptx and ".entry conv_col2im" in ptx


# -- bad inputs ----------------------------------------------------------------------------
def t(shape, dtype=np.float32):
    return minidl.Tensor(np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: conv2d(t((8, 8)), t((4, 3, 3, 3))), ValueError,
     r"conv2d: input must be 4-D \(N, C, H, W; or unbatched C, H, W\), got shape \(8, 8\)"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 3, 3, 3)), stride=2, padding="same"), ValueError,
     r"conv2d: padding='same' needs stride 1 \(as in PyTorch\), got stride \(2, 2\)"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 3, 3, 3)), padding="full"), ValueError,
     r"conv2d: padding must be an int, a pair of ints, 'valid' or 'same', got 'full'"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 3, 3, 3)), dilation=2, algorithm="winograd"),
     ValueError, r"conv2d: algorithm='winograd' has no dilation or uneven padding"),
    (lambda: conv2d(t((1, 3, 5, 5)), t((4, 3, 3, 3)), dilation=3), ValueError,
     r"conv2d: kernel 3x3 with dilation \(3, 3\) is larger than the padded input 5x5"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 3, 3))), ValueError, r"conv2d: weight must be 4-D"),
    (lambda: conv2d(t((1, 5, 8, 8)), t((4, 3, 3, 3))), ValueError,
     r"conv2d: input has 5 channels .* expects weight.shape\[1\] \* groups = 3"),
    (lambda: conv2d(t((1, 4, 8, 8)), t((5, 2, 3, 3)), groups=2), ValueError,
     r"conv2d: groups=2 must divide the out channels, but weight has 5"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 1, 3, 3)), groups=2), ValueError,
     r"conv2d: groups=2 must divide the input channels, but input has 3"),
    (lambda: conv2d(t((1, 3, 4, 4)), t((4, 3, 7, 3)), padding=1), ValueError,
     r"conv2d: kernel 7x3 is larger than the padded input 6x6"),
    (lambda: conv2d(t((1, 3, 8, 8), np.int64), t((4, 3, 3, 3), np.int64)), TypeError,
     r"conv2d: input has dtype int64; expected float32 or float64"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 3, 3, 3), np.float64)), TypeError,
     r"conv2d: inputs must share one dtype, but input is float32, weight is float64"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 3, 3, 3)), t((3,))), ValueError,
     r"conv2d: bias must have shape \(4,\).*got shape \(3,\)"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 3, 3, 3)), t((4,), np.float64)), TypeError,
     r"conv2d: inputs must share one dtype.*bias is float64"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 3, 3, 3)), stride=0), ValueError,
     r"conv2d: stride must be a positive int or a pair of positive ints, got 0"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 3, 3, 3)), padding=-1), ValueError,
     r"conv2d: padding must be a non-negative int or a pair of non-negative ints, got -1"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 3, 3, 3)), stride=1.5), TypeError,
     r"conv2d: stride must be a positive int or a pair of positive ints, got 1.5"),
    (lambda: conv2d(t((1, 3, 8, 8)), t((4, 3, 3, 3)), groups=0), ValueError,
     r"conv2d: groups must be a positive int, got 0"),
    (lambda: conv2d([[1.0]], t((4, 3, 3, 3))), TypeError,
     r"conv2d: input must be a minidl Tensor or an array, got list"),
])
def test_bad_inputs(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# -- dilation, "same"/"valid" padding, unbatched input -------------------------------------------
# (x shape, (O, kH, kW), stride, padding, dilation, groups)
OPTION_CONFIGS = [
    ((2, 4, 8, 8), (2, 3, 3), (3, 2), (2, 1), (4, 4), 2),  # PyTorch's own sample: big dilation
    ((1, 4, 5, 5), (1, 2, 3), 2, 1, (2, 3), 1),
    ((1, 4, 5, 5), (1, 2, 3), 1, "same", 3, 1),             # uneven "same": one more row after
    ((2, 3, 6, 7), (4, 3, 3), 1, "same", 1, 1),             # even "same": Winograd's case
    ((1, 4, 5, 5), (2, 2, 3), 2, "valid", 1, 2),
    ((4, 6, 5), (3, 3, 2), 1, "same", (2, 1), 1),           # unbatched (C, H, W)
]
OPTION_IDS = ["dilation4-groups2", "dilation2x3", "same-dilation3-uneven", "same-3x3", "valid",
              "unbatched-same"]


def option_inputs(config, seed=0):
    shape, (o, kh, kw), stride, padding, dilation, groups = config
    rng = np.random.default_rng(seed)
    c = shape[-3]
    return (rng.standard_normal(shape), rng.standard_normal((o, c // groups, kh, kw)),
            rng.standard_normal(o))


@pytest.mark.parametrize("config", OPTION_CONFIGS, ids=OPTION_IDS)
def test_dilation_and_padding_options(kernels, config):
    x, w, b = option_inputs(config)
    _, _, stride, padding, dilation, groups = config
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = conv2d(kernels.tensor(x), kernels.tensor(w), kernels.tensor(b), **options)
    batched = x if x.ndim == 4 else x[None]
    expected = conv2d_simple(batched, w, b, stride, padding, groups, dilation)
    np.testing.assert_allclose(kernels.numpy(y), expected if x.ndim == 4 else expected[0],
                               rtol=1e-10, atol=1e-10)
    tensors = [kernels.tensor(a, requires_grad=True) for a in (x, w, b)]
    assert minidl.gradcheck(lambda *ts: conv2d(*ts, **options), tensors)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # PyTorch's own
@pytest.mark.parametrize("config", OPTION_CONFIGS, ids=OPTION_IDS)
def test_dilation_and_padding_options_match_torch(config):
    torch = pytest.importorskip("torch")
    x, w, b = option_inputs(config, seed=1)
    _, _, stride, padding, dilation, groups = config
    tensors = [minidl.Tensor(a, requires_grad=True) for a in (x, w, b)]
    y = conv2d(*tensors, stride=stride, padding=padding, dilation=dilation, groups=groups)
    grad = np.random.default_rng(2).standard_normal(y.shape)
    y.backward(grad)
    ts = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    ty = torch.nn.functional.conv2d(*ts, stride=stride, padding=padding, dilation=dilation,
                                    groups=groups)
    ty.backward(torch.tensor(grad))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for mine, theirs in zip(tensors, ts):
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_conv2d_layer_takes_pytorchs_arguments():
    layer = minidl.layers.Conv2d(4, 6, 3, 1, "same", 2, 2, bias=False, dtype=np.float64)
    x = np.random.default_rng(3).standard_normal((1, 4, 7, 6))
    y = layer(minidl.Tensor(x))
    np.testing.assert_allclose(y.numpy(), conv2d_simple(x, layer.weight.numpy(), None, 1, "same", 2, 2),
                               rtol=1e-10, atol=1e-12)
    assert "dilation=(2, 2)" in repr(layer) and "padding='same'" in repr(layer)
