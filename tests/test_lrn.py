"""local_response_norm: the plain-loop simple versions (forward and the backward formula), float64
gradchecks, both conventions, PyTorch, bad inputs, on every kernel mode (Numba on the CPU, the
CUDA C through the CPU shim, and a real GPU)."""
import os

import numpy as np
import pytest

import minidl
from minidl import layers, ops
from minidl.ops.lrn import local_response_norm_backward_simple, local_response_norm_simple
from minidl.testing import nvrtc

try:
    import torch
except ImportError:  # pragma: no cover - torch is only for comparisons
    torch = None

CU_FILE = os.path.join(os.path.dirname(minidl.__file__), "ops", "lrn.cu")

# (input shape, size, beta): channels 6 so that windows clip at both channel edges; even and
# odd sizes; size 1; a window wider than all the channels; beta 0.75 takes the CPU's
# square-root path, the others its pow path.
CONFIGS = [
    ((2, 6, 3, 4), 5, 0.75),
    ((2, 6, 3, 4), 3, 0.6),
    ((1, 6, 2, 3), 4, 0.75),
    ((1, 6, 2, 3), 2, 1.3),
    ((2, 6, 1, 5), 1, 0.75),
    ((1, 4, 3, 3), 9, 0.75),
    ((1, 7, 2, 2), 6, 0.5),
]
IDS = [f"C{c[0][1]}-size{c[1]}-beta{c[2]}" for c in CONFIGS]


def alpha_for(size):
    return 0.2 / size  # big enough that the sum of squares matters, with inputs ~ 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("convention", ["paper", "caffe"])
@pytest.mark.parametrize("shape, size, beta", CONFIGS, ids=IDS)
def test_forward_and_backward_match_loops(kernels, shape, size, beta, convention, dtype):
    rng = np.random.default_rng(0)
    x = (2 * rng.standard_normal(shape)).astype(dtype)
    grad_y = rng.standard_normal(shape).astype(dtype)
    alpha, k = alpha_for(size), 1.5
    plain_alpha = alpha / size if convention == "caffe" else alpha
    t = kernels.tensor(x, requires_grad=True)
    y = ops.local_response_norm(t, size, alpha, beta, k, convention=convention)
    assert y.dtype == dtype and y.shape == shape
    tol = 2e-6 if dtype == np.float32 else 1e-13
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(kernels.numpy(y), local_response_norm_simple(x64, size, plain_alpha, beta, k),
                               rtol=tol, atol=tol)
    y.backward(kernels.array(grad_y))
    assert t.grad.dtype == dtype
    expected = local_response_norm_backward_simple(x64, grad_y.astype(np.float64), size, plain_alpha, beta, k)
    np.testing.assert_allclose(kernels.numpy(t.grad), expected, rtol=5 * tol, atol=5 * tol)


@pytest.mark.parametrize("convention", ["paper", "caffe"])
@pytest.mark.parametrize("shape, size, beta", CONFIGS, ids=IDS)
def test_gradcheck(kernels, shape, size, beta, convention):
    x = 2 * np.random.default_rng(1).standard_normal(shape)
    t = kernels.tensor(x, requires_grad=True)
    assert minidl.gradcheck(
        lambda a: ops.local_response_norm(a, size, alpha_for(size), beta, 1.5, convention=convention), [t])


def test_pixels_split_across_tasks(kernels):
    # One image with many pixels: the CPU splits the pixels between tasks, the last one short.
    rng = np.random.default_rng(2)
    x = 3 * rng.standard_normal((1, 5, 17, 37))
    grad_y = rng.standard_normal(x.shape)
    t = kernels.tensor(x, requires_grad=True)
    y = ops.local_response_norm(t, 3, 0.05, 0.75, 2.0)
    np.testing.assert_allclose(kernels.numpy(y), local_response_norm_simple(x, 3, 0.05, 0.75, 2.0), rtol=1e-13)
    y.backward(kernels.array(grad_y))
    np.testing.assert_allclose(kernels.numpy(t.grad),
                               local_response_norm_backward_simple(x, grad_y, 3, 0.05, 0.75, 2.0), rtol=1e-12, atol=1e-13)


def test_running_sums_do_not_drift(kernels):
    # Huge activations enter and leave the window before small ones. A float32 running sum
    # keeps rounding errors of order ulp(1e8) = 8 (here it ends at -256 instead of 3e-4, an
    # error of 1% in s); the CPU kernel's float64 sums do not.
    x = np.full((1, 64, 1, 3), 1e-2, np.float32)
    x[0, :8] = 1e4 * (1 + np.random.default_rng(7).random((8, 1, 3)))
    y = kernels.numpy(ops.local_response_norm(kernels.tensor(x), 5, 1e-4, 0.75, 2.0))
    expected = local_response_norm_simple(x.astype(np.float64), 5, 1e-4, 0.75, 2.0)
    np.testing.assert_allclose(y, expected, rtol=2e-6)


def test_non_contiguous_input_and_empty_batch(kernels):
    x = np.random.default_rng(8).standard_normal((2, 4, 3, 10))[:, ::-1, :, ::2]  # a strided view
    y = ops.local_response_norm(kernels.tensor(x), 3, 0.1, 0.75, 1.0)
    np.testing.assert_allclose(kernels.numpy(y), local_response_norm_simple(x, 3, 0.1, 0.75, 1.0), rtol=1e-13)
    t = kernels.tensor(np.zeros((0, 6, 3, 3), np.float32), requires_grad=True)
    y = ops.local_response_norm(t, 5)
    y.backward(kernels.array(np.zeros(y.shape, np.float32)))
    assert y.shape == (0, 6, 3, 3) and t.grad.shape == (0, 6, 3, 3)


def test_no_grad_saves_nothing_and_gives_the_same_output(kernels):
    x = np.random.default_rng(3).standard_normal((2, 6, 3, 3)).astype(np.float32)
    with minidl.no_grad():
        y0 = ops.local_response_norm(kernels.tensor(x, requires_grad=True), 5)
    y1 = ops.local_response_norm(kernels.tensor(x, requires_grad=True), 5)
    assert y0.creator is None
    np.testing.assert_array_equal(kernels.numpy(y0), kernels.numpy(y1))


def test_layer_uses_the_paper_form_by_default(kernels):
    x = np.random.default_rng(4).standard_normal((1, 8, 2, 2)).astype(np.float32)
    y = layers.LocalResponseNorm(5, alpha=0.1, beta=0.75, k=2.0)(kernels.tensor(x))
    np.testing.assert_allclose(kernels.numpy(y), local_response_norm_simple(x.astype(np.float64), 5, 0.1, 0.75, 2.0),
                               rtol=2e-6)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("convention", ["paper", "caffe"])
@pytest.mark.parametrize("shape, size, beta", CONFIGS + [((2, 96, 5, 5), 5, 0.75)],
                         ids=IDS + ["alexnet"])
def test_matches_torch(kernels, shape, size, beta, convention):
    rng = np.random.default_rng(5)
    x, grad_y = 2 * rng.standard_normal(shape), rng.standard_normal(shape)
    alpha = alpha_for(size)
    t = kernels.tensor(x, requires_grad=True)
    y = ops.local_response_norm(t, size, alpha, beta, 1.5, convention=convention)
    y.backward(kernels.array(grad_y))
    # torch divides alpha by size: the paper's alpha is torch's alpha / size.
    torch_alpha = alpha * size if convention == "paper" else alpha
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.local_response_norm(tx, size, torch_alpha, beta, 1.5)
    ty.backward(torch.tensor(grad_y))
    np.testing.assert_allclose(kernels.numpy(y), ty.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(kernels.numpy(t.grad), tx.grad.numpy(), rtol=1e-11, atol=1e-12)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
def test_alexnet_constants_match_torch_layer_in_float32(kernels):
    # The paper's layer (alpha 1e-4) is torch.nn.LocalResponseNorm(5, alpha=5e-4).
    x = np.maximum(20 * np.random.default_rng(6).standard_normal((2, 16, 6, 6)), 0).astype(np.float32)
    y = ops.local_response_norm(kernels.tensor(x), 5, alpha=1e-4, beta=0.75, k=2.0)
    expected = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(torch.tensor(x)).numpy()
    assert y.dtype == np.float32
    np.testing.assert_allclose(kernels.numpy(y), expected, rtol=2e-6, atol=1e-6)


@pytest.mark.skipif(not nvrtc.available(), reason="NVRTC not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_source_compiles_under_nvrtc(dtype):
    ptx = nvrtc.compile_file(CU_FILE, dtype)
    assert ".entry lrn_forward(" in ptx and ".entry lrn_backward(" in ptx


@pytest.mark.parametrize("x, kwargs, error, match", [
    (np.zeros((6, 4), np.float32), {}, ValueError,
     r"local_response_norm: input must have at least 3 dimensions \(N, C, ...\), got shape \(6, 4\)"),
    (np.zeros((1, 6, 4, 4), np.int32), {}, TypeError,
     r"local_response_norm: input has dtype int32; expected float32 or float64"),
    (np.zeros((1, 6, 4, 4), np.float32), {"size": 0}, ValueError,
     r"local_response_norm: size must be a positive int"),
    (np.zeros((1, 6, 4, 4), np.float32), {"size": 2.5}, TypeError,
     r"local_response_norm: size must be a positive int"),
    (np.zeros((1, 6, 4, 4), np.float32), {"convention": "torch"}, ValueError,
     r"local_response_norm: convention must be 'paper' .* or 'caffe' .*, got 'torch'"),
])
def test_bad_inputs(kernels, x, kwargs, error, match):
    kwargs = {"size": 5, **kwargs}
    with pytest.raises(error, match=match):
        ops.local_response_norm(kernels.tensor(x), **kwargs)


@pytest.mark.parametrize("shape", [(2, 6, 3), (1, 5, 2, 3, 2), (0, 1, 2)], ids=["3-D", "5-D", "empty"])
def test_any_number_of_spatial_dimensions(kernels, shape):
    x = np.random.default_rng(20).standard_normal(shape)
    t = kernels.tensor(x, requires_grad=True)
    y = ops.local_response_norm(t, 3, alpha=1e-2, beta=0.75, k=1.0)
    flat = x.reshape(shape[0], shape[1], -1, 1) if x.size else x.reshape(shape[0], shape[1], 0, 1)
    np.testing.assert_allclose(kernels.numpy(y), local_response_norm_simple(flat, 3, 1e-2, 0.75, 1.0)
                               .reshape(shape), rtol=1e-12)
    if x.size:
        assert minidl.gradcheck(lambda a: ops.local_response_norm(a, 3, alpha=1e-2, k=1.0), [t])
