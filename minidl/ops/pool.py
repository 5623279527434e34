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

import math

import numpy as np
from numba import njit, prange

from .. import backend, cpu, cuda
from ..tensor import Function
from . import checks

_kernels = cuda.KernelFile(__file__)

OP = "max_pool2d"


# -- simple version: the definition in plain loops ------------------------------------------------

def max_pool2d_simple(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """The output and, per output, the flat index of its window's first maximum, by plain loops
    over a NumPy array (N, C, H, W): what the kernels below compute, and what the tests check
    them against."""
    kh, kw = checks.int_pair(OP, "kernel_size", kernel_size, 1)
    sh, sw = (kh, kw) if stride is None else checks.int_pair(OP, "stride", stride, 1)
    ph, pw = checks.int_pair(OP, "padding", padding, 0)
    n, c, h, w = x.shape

    def out_size(size, k, s, p):
        if ceil_mode:
            out = math.ceil((size + 2 * p - k) / s) + 1
            if (out - 1) * s >= size + p:  # no window may start in the right padding
                out -= 1
            return out
        return (size + 2 * p - k) // s + 1

    out_h, out_w = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    y = np.empty((n, c, out_h, out_w), dtype=x.dtype)
    argmax = np.empty((n, c, out_h, out_w), dtype=np.int64)
    for b in range(n):
        for ch in range(c):
            for i in range(out_h):
                for j in range(out_w):
                    best, best_at = -math.inf, -1
                    for r in range(i * sh - ph, i * sh - ph + kh):
                        for q in range(j * sw - pw, j * sw - pw + kw):
                            if 0 <= r < h and 0 <= q < w and x[b, ch, r, q] > best:
                                best, best_at = x[b, ch, r, q], r * w + q
                    y[b, ch, i, j], argmax[b, ch, i, j] = best, best_at
    return y, argmax


def max_pool2d_backward_simple(grad_y, argmax, x_shape):
    """grad_x: each output's gradient added to the input element its argmax names."""
    grad_x = np.zeros(x_shape, dtype=grad_y.dtype)
    n, c = x_shape[:2]
    for b in range(n):
        for ch in range(c):
            plane = grad_x[b, ch].reshape(-1)
            for at, g in zip(argmax[b, ch].reshape(-1), grad_y[b, ch].reshape(-1)):
                plane[at] += g
    return grad_x


# -- CPU kernels (Numba) --------------------------------------------------------------------------

@njit(inline="always", cache=True)
def _window_max(plane, h_lo, h_hi, w_lo, w_hi, nan_wins):
    # First maximum of plane[h_lo:h_hi, w_lo:w_hi] in scan order (rows, then columns: the
    # strict '>' keeps the earliest). With nan_wins, 'v != v' lets a NaN win as in PyTorch; it
    # is a separate flag because that extra test slows the loop down several times, and it is
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


@cpu.parallel_kernel
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
        # and the choice is made once per plane rather than once per window.
        if has_nan:
            _pool_plane(plane, y[p], argmax[p], kh, kw, sh, sw, ph, pw, True)
        else:
            _pool_plane(plane, y[p], argmax[p], kh, kw, sh, sw, ph, pw, False)


@cpu.parallel_kernel
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


# -- drivers: one per device, same signature ------------------------------------------------------

def _forward_cpu(x, out_h, out_w, kernel, stride, pad):
    n, c, h, w = x.shape
    y = np.empty((n, c, out_h, out_w), dtype=x.dtype)
    argmax = np.empty((n, c, out_h, out_w), dtype=np.int32)
    _forward_cpu_kernel(x.reshape(n * c, h, w), y.reshape(n * c, out_h, out_w),
                        argmax.reshape(n * c, out_h, out_w), *kernel, *stride, *pad)
    return y, argmax


def _backward_cpu(grad_y, argmax, x_shape, kernel, stride, pad):
    n, c, h, w = x_shape
    grad_x = np.empty(x_shape, dtype=grad_y.dtype)
    planes, n_out = n * c, grad_y.shape[2] * grad_y.shape[3]
    _backward_cpu_kernel(grad_y.reshape(planes, n_out), argmax.reshape(planes, n_out),
                         grad_x.reshape(planes, h * w))
    return grad_x


def _forward_cuda(x, out_h, out_w, kernel, stride, pad):
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    y = xp.empty((n, c, out_h, out_w), dtype=x.dtype)
    argmax = xp.empty((n, c, out_h, out_w), dtype=np.int32)
    _kernels("max_pool2d_forward", x.dtype)(y.size, x, y, argmax, h, w, out_h, out_w,
                                            *kernel, *stride, *pad)
    return y, argmax


def _backward_cuda(grad_y, argmax, x_shape, kernel, stride, pad):
    xp = backend.array_module(grad_y)
    n, c, h, w = x_shape
    out_h, out_w = grad_y.shape[2], grad_y.shape[3]
    grad_x = xp.empty(x_shape, dtype=grad_y.dtype)
    _kernels("max_pool2d_backward", grad_y.dtype)(grad_x.size, grad_y, argmax, grad_x, h, w,
                                                  out_h, out_w, *kernel, *stride, *pad)
    return grad_x


# -- the Function ---------------------------------------------------------------------------------

def _output_size(size, kernel, stride, pad, ceil_mode):
    span = size + 2 * pad - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the input or the left padding
    return out


def _parse_options(x_shape, kernel_size, stride, padding):
    """Check the pooling options against the input shape; return them as pairs of ints."""
    kernel = checks.int_pair(OP, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else checks.int_pair(OP, "stride", stride, 1)
    pad = checks.int_pair(OP, "padding", padding, 0)
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


class MaxPool2dFunction(Function):
    def forward(self, x, kernel_size=2, stride=None, padding=0, ceil_mode=False):
        checks.float_array(OP, "input", x, ndim=4, layout="N, C, H, W")
        kernel, stride, pad = _parse_options(x.shape, kernel_size, stride, padding)
        out_h = _output_size(x.shape[2], kernel[0], stride[0], pad[0], ceil_mode)
        out_w = _output_size(x.shape[3], kernel[1], stride[1], pad[1], ceil_mode)
        xp = backend.array_module(x)
        x = xp.ascontiguousarray(x)
        forward = backend.pick(x, cpu=_forward_cpu, cuda=_forward_cuda)
        y, argmax = forward(x, out_h, out_w, kernel, stride, pad)
        self.x_shape, self.dtype = x.shape, x.dtype
        self.options = (kernel, stride, pad)
        self.save_for_backward(argmax)
        return y

    def backward(self, grad_y):
        (argmax,) = self.saved
        xp = backend.array_module(argmax)
        grad_y = xp.ascontiguousarray(grad_y, dtype=self.dtype)
        backward = backend.pick(grad_y, cpu=_backward_cpu, cuda=_backward_cuda)
        return backward(grad_y, argmax, self.x_shape, *self.options)


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
