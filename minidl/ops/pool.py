"""2-D max pooling over (N, C, H, W), with the semantics of ``torch.nn.functional.max_pool2d``.

Forward keeps, for every output, the position of its maximum (``argmax``: the flat index
``h * W + w`` into the input plane, int32). Backward then routes each output gradient to that
one input element, so the gradient is exact and deterministic: ties are broken in forward
(first maximum in window scan order, rows then columns; a NaN wins, as in PyTorch) and the
backward sums are always formed in the same order, ascending output index, on the CPU (a
scatter, one loop iteration per (n, c) plane) and on the GPU (a gather, one thread per input
element, no atomics).

Output size, per spatial axis (PyTorch's rule)::

    out = floor((H + 2 * pad - kernel) / stride) + 1                      ceil_mode=False
    out = ceil((H + 2 * pad - kernel) / stride) + 1, minus 1 if the last
          window would start at or past H + pad (inside the right padding) ceil_mode=True

Padding is implicit -infinity and at most half the kernel, so every window holds at least one
real input element.
"""

import numpy as np
from numba import njit, prange

from .. import backend, cuda
from ..autograd import Function
from . import _checks

_kernels = cuda.KernelFile(__file__)

OP = "max_pool2d"


def _output_size(size, kernel, stride, pad, ceil_mode):
    span = size + 2 * pad - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the input or the left padding
    return out


def _parse_options(x_shape, kernel_size, stride, padding):
    """Check the pooling options against the input shape; return them as pairs of ints."""
    def ints(name, value, low):
        pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
        if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                     and v >= low for v in pair):
            what = "positive" if low > 0 else "non-negative"
            raise ValueError(f"{OP}: {name} must be a {what} int or a pair of {what} ints, "
                             f"got {value!r}")
        return int(pair[0]), int(pair[1])

    kernel = ints("kernel_size", kernel_size, 1)
    stride = kernel if stride is None else ints("stride", stride, 1)
    pad = ints("padding", padding, 0)
    for axis, k, p in (("height", kernel[0], pad[0]), ("width", kernel[1], pad[1])):
        if 2 * p > k:
            raise ValueError(f"{OP}: padding must be at most half the kernel size, got padding {p} "
                             f"for a kernel of {k} along the {axis}")
    h, w = x_shape[2], x_shape[3]
    if h < 1 or w < 1:
        raise ValueError(f"{OP}: input planes must be at least 1x1, got {h}x{w}")
    if kernel[0] > h + 2 * pad[0] or kernel[1] > w + 2 * pad[1]:
        raise ValueError(f"{OP}: kernel {kernel} is larger than the padded input "
                         f"({h + 2 * pad[0]}, {w + 2 * pad[1]}) (input {h}x{w}, padding {pad})")
    if h * w >= 2 ** 31:
        raise ValueError(f"{OP}: an input plane of {h}x{w} is too large for int32 argmax indices")
    return kernel, stride, pad


# -- CPU kernels (Numba) ------------------------------------------------------------------------

@njit(inline="always", cache=True)
def _window_max(plane, h_lo, h_hi, w_lo, w_hi, nan_wins):
    # First maximum of plane[h_lo:h_hi, w_lo:w_hi] in scan order (rows, then columns: the
    # strict '>' keeps the earliest). With nan_wins, 'v != v' lets a NaN win as in PyTorch; it
    # is a separate flag because that extra test makes the loop three times slower, and it is
    # only needed for planes that hold a NaN.
    width = plane.shape[1]
    best = plane[h_lo, w_lo]
    best_at = h_lo * width + w_lo
    for h in range(h_lo, h_hi):
        for w in range(w_lo, w_hi):
            v = plane[h, w]
            if v > best or (nan_wins and v != v):
                best = v
                best_at = h * width + w
    return best, best_at


@njit(inline="always", cache=True)
def _pool_plane(plane, y, argmax, kh, kw, sh, sw, ph, pw, nan_wins):
    # y[i, j], argmax[i, j] for one plane: the window maximum of every output.
    height, width = plane.shape
    out_h, out_w = y.shape
    for i in range(out_h):
        h0 = i * sh - ph
        h_lo, h_hi = max(h0, 0), min(h0 + kh, height)
        for j in range(out_w):
            w0 = j * sw - pw
            best, best_at = _window_max(plane, h_lo, h_hi, max(w0, 0), min(w0 + kw, width),
                                        nan_wins)
            y[i, j] = best
            argmax[i, j] = best_at


@njit(parallel=True, cache=True)
def _forward_cpu_kernel(x, y, argmax, kh, kw, sh, sw, ph, pw):
    # y[p, i, j] = max of x[p] over rows i*sh-ph ... +kh, columns j*sw-pw ... +kw, clipped to
    # the input (padding is -inf, and every window holds a real element). One prange
    # iteration owns one (n, c) plane p.
    planes, height, width = x.shape
    for p in prange(planes):
        plane = x[p]
        has_nan = False
        for h in range(height):
            for w in range(width):
                has_nan |= plane[h, w] != plane[h, w]
        # Literal flags, so that the plane loop is compiled twice, once without the NaN test,
        # and the choice is made once per plane (not per window: 1.2x faster).
        if has_nan:
            _pool_plane(plane, y[p], argmax[p], kh, kw, sh, sw, ph, pw, True)
        else:
            _pool_plane(plane, y[p], argmax[p], kh, kw, sh, sw, ph, pw, False)


@njit(parallel=True, cache=True)
def _backward_cpu_kernel(grad_y, argmax, grad_x):
    # grad_x[p, a] = sum of grad_y[p, o] over the outputs o whose argmax is a. One prange
    # iteration owns one plane p, so the scatter has no races, and it adds in ascending o --
    # the same order as the GPU's gather, hence the same bits.
    planes, n_out = grad_y.shape
    n_in = grad_x.shape[1]
    for p in prange(planes):
        for a in range(n_in):
            grad_x[p, a] = 0
        for o in range(n_out):
            grad_x[p, argmax[p, o]] += grad_y[p, o]


# -- drivers ------------------------------------------------------------------------------------

def _forward_cpu(x, out_h, out_w, kernel, stride, pad):
    n, c, h, w = x.shape
    y = np.empty((n, c, out_h, out_w), dtype=x.dtype)
    argmax = np.empty((n, c, out_h, out_w), dtype=np.int32)
    with backend.cpu_threads_for(x.size):
        _forward_cpu_kernel(x.reshape(n * c, h, w), y.reshape(n * c, out_h, out_w),
                            argmax.reshape(n * c, out_h, out_w), kernel[0], kernel[1],
                            stride[0], stride[1], pad[0], pad[1])
    return y, argmax


def _backward_cpu(grad_y, argmax, x_shape):
    n, c, h, w = x_shape
    grad_x = np.empty(x_shape, dtype=grad_y.dtype)
    planes, n_out = n * c, grad_y.shape[2] * grad_y.shape[3]
    with backend.cpu_threads_for(grad_x.size):
        _backward_cpu_kernel(grad_y.reshape(planes, n_out), argmax.reshape(planes, n_out),
                             grad_x.reshape(planes, h * w))
    return grad_x


def _forward_cuda(x, out_h, out_w, kernel, stride, pad):
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    y = xp.empty((n, c, out_h, out_w), dtype=x.dtype)
    argmax = xp.empty((n, c, out_h, out_w), dtype=np.int32)
    total = y.size
    _kernels("max_pool2d_forward", x.dtype)(
        total, np.int64(total), x, y, argmax, np.int32(h), np.int32(w), np.int32(out_h),
        np.int32(out_w), np.int32(kernel[0]), np.int32(kernel[1]), np.int32(stride[0]),
        np.int32(stride[1]), np.int32(pad[0]), np.int32(pad[1]))
    return y, argmax


def _backward_cuda(grad_y, argmax, x_shape, kernel, stride, pad):
    xp = backend.array_module(grad_y)
    n, c, h, w = x_shape
    out_h, out_w = grad_y.shape[2], grad_y.shape[3]
    grad_x = xp.empty(x_shape, dtype=grad_y.dtype)
    total = grad_x.size
    _kernels("max_pool2d_backward", grad_y.dtype)(
        total, np.int64(total), grad_y, argmax, grad_x, np.int32(h), np.int32(w),
        np.int32(out_h), np.int32(out_w), np.int32(kernel[0]), np.int32(kernel[1]),
        np.int32(stride[0]), np.int32(stride[1]), np.int32(pad[0]), np.int32(pad[1]))
    return grad_x


class MaxPool2dFunction(Function):
    def forward(self, x, kernel_size=2, stride=None, padding=0, ceil_mode=False):
        _checks.float_array(OP, "input", x, ndim=4, layout="N, C, H, W")
        kernel, stride, pad = _parse_options(x.shape, kernel_size, stride, padding)
        out_h = _output_size(x.shape[2], kernel[0], stride[0], pad[0], ceil_mode)
        out_w = _output_size(x.shape[3], kernel[1], stride[1], pad[1], ceil_mode)
        xp = backend.array_module(x)
        x = xp.ascontiguousarray(x)
        if backend.uses_cuda_kernels(x):
            y, argmax = _forward_cuda(x, out_h, out_w, kernel, stride, pad)
        else:
            y, argmax = _forward_cpu(x, out_h, out_w, kernel, stride, pad)
        self.x_shape, self.dtype = x.shape, x.dtype
        self.options = (kernel, stride, pad)
        self.save_for_backward(argmax)
        return y

    def backward(self, grad_y):
        (argmax,) = self.saved
        xp = backend.array_module(argmax)
        grad_y = xp.ascontiguousarray(grad_y, dtype=self.dtype)
        if backend.uses_cuda_kernels(grad_y):
            return _backward_cuda(grad_y, argmax, self.x_shape, *self.options)
        return _backward_cpu(grad_y, argmax, self.x_shape)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max pooling over the last two axes of ``x`` (N, C, H, W), as ``torch.nn.functional.max_pool2d``.

    ``kernel_size``, ``stride`` (default: ``kernel_size``) and ``padding`` are ints or
    (height, width) pairs; windows may overlap (AlexNet pools 3x3 with stride 2). Padding is
    implicit -inf and at most half the kernel. With ``ceil_mode`` the output rounds up, except
    that a window may not start in the right padding. The gradient goes to the first maximum
    of each window (rows, then columns).
    """
    return MaxPool2dFunction.apply(x, kernel_size=kernel_size, stride=stride, padding=padding,
                                   ceil_mode=bool(ceil_mode))
