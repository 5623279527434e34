"""2-D max pooling over (N, C, H, W) or unbatched (C, H, W), with the semantics of
``torch.nn.functional.max_pool2d`` (dilation and ``return_indices`` included), and its partial
inverse ``max_unpool2d``.

Forward keeps, for every output, the position of its maximum (``argmax``: the flat index
``h * W + w`` into the input plane, int32). Backward then routes each output gradient to that
one input element, so the gradient is exact and deterministic: ties are broken in forward
(first maximum in window scan order, rows then columns; a NaN wins, as in PyTorch) and the
backward sums are always formed in the same order, ascending output index, on the CPU (a
scatter, one loop iteration per (n, c) plane) and on the GPU (a gather, one thread per input
element, no atomics).

A window of output (i, j) reads rows ``i * stride - pad + r * dilation`` for r < kernel (and
the same for columns): with dilation d > 1 it skips d - 1 rows between taps. Output size, per
spatial axis (PyTorch's rule), with the window's span ``e = dilation * (kernel - 1) + 1``::

    out = floor((H + 2 * pad - e) / stride) + 1                           ceil_mode=False
    out = ceil((H + 2 * pad - e) / stride) + 1, minus 1 if the last
          window would start at or past H + pad (inside the right padding) ceil_mode=True

Padding is implicit -infinity and at most half the kernel. A window must hold at least one
real input element (only a dilation larger than the input can break that: refused by name).
``return_indices=True`` also returns the argmax as int64 flat indices ``h * W + w`` into each
plane, as PyTorch does; ``max_unpool2d`` puts values back at such indices (zeros elsewhere),
written once against ``xp`` (a scatter in forward, a gather in backward).
"""

import math

import numpy as np
from numba import njit

from .. import backend, cpu, cuda
from ..tensor import Function, Tensor
from . import checks

_kernels = cuda.KernelFile(__file__)

OP = "max_pool2d"


# -- simple version: the definition in plain loops ------------------------------------------------

def _output_size(size, kernel, stride, pad, ceil_mode, dilation=1):
    span = dilation * (kernel - 1) + 1
    if ceil_mode:
        out = math.ceil((size + 2 * pad - span) / stride) + 1
        if (out - 1) * stride >= size + pad:  # no window may start in the right padding
            out -= 1
        return out
    return (size + 2 * pad - span) // stride + 1


def max_pool2d_simple(x, kernel_size, stride=None, padding=0, ceil_mode=False, dilation=1):
    """The output and, per output, the flat index of its window's first maximum, by plain loops
    over a NumPy array (N, C, H, W): what the kernels below compute, and what the tests check
    them against."""
    kh, kw = checks.int_pair(OP, "kernel_size", kernel_size, 1)
    sh, sw = (kh, kw) if stride is None else checks.int_pair(OP, "stride", stride, 1)
    ph, pw = checks.int_pair(OP, "padding", padding, 0)
    dh, dw = checks.int_pair(OP, "dilation", dilation, 1)
    n, c, h, w = x.shape
    out_h = _output_size(h, kh, sh, ph, ceil_mode, dh)
    out_w = _output_size(w, kw, sw, pw, ceil_mode, dw)
    y = np.empty((n, c, out_h, out_w), dtype=x.dtype)
    argmax = np.empty((n, c, out_h, out_w), dtype=np.int64)
    for b in range(n):
        for ch in range(c):
            for i in range(out_h):
                for j in range(out_w):
                    best, best_at = -math.inf, -1
                    for r in range(i * sh - ph, i * sh - ph + (kh - 1) * dh + 1, dh):
                        for q in range(j * sw - pw, j * sw - pw + (kw - 1) * dw + 1, dw):
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


def max_unpool2d_simple(x, indices, out_h, out_w):
    """y[n, c] = zeros (out_h, out_w) with x[n, c, o] written at flat index indices[n, c, o]."""
    n, c = x.shape[:2]
    y = np.zeros((n, c, out_h * out_w), dtype=x.dtype)
    for b in range(n):
        for ch in range(c):
            for value, at in zip(x[b, ch].reshape(-1), indices[b, ch].reshape(-1)):
                y[b, ch, at] = value
    return y.reshape(n, c, out_h, out_w)


# -- CPU kernels (Numba) --------------------------------------------------------------------------

@njit(inline="always", cache=True)
def _first_tap(start, dilation):
    # The first of start, start + d, start + 2d, ... that is >= 0.
    if start >= 0:
        return start
    return start + ((-start + dilation - 1) // dilation) * dilation


@njit(inline="always", cache=True)
def _window_max(plane, h_lo, h_hi, w_lo, w_hi, dh, dw, nan_wins):
    # First maximum of plane[h_lo:h_hi:dh, w_lo:w_hi:dw] in scan order (rows, then columns:
    # the strict '>' keeps the earliest). With nan_wins, 'v != v' lets a NaN win as in
    # PyTorch; it is a separate flag because that extra test slows the loop down several
    # times, and it is only needed for planes that hold a NaN.
    # Two-argument ranges where the steps are 1: Numba's three-argument range is a slower
    # loop even with a literal step of 1.
    width = plane.shape[1]
    best = plane[h_lo, w_lo]
    best_at = h_lo * width + w_lo
    if dh == 1 and dw == 1:
        for h in range(h_lo, h_hi):
            for w in range(w_lo, w_hi):
                v = plane[h, w]
                if v > best or (nan_wins and v != v):
                    best = v
                    best_at = h * width + w
        return best, best_at
    for h in range(h_lo, h_hi, dh):
        for w in range(w_lo, w_hi, dw):
            v = plane[h, w]
            if v > best or (nan_wins and v != v):
                best = v
                best_at = h * width + w
    return best, best_at


@njit(inline="always", cache=True)
def _pool_plane(plane, y, argmax, kh, kw, sh, sw, ph, pw, dh, dw, nan_wins):
    # y[i, j], argmax[i, j] for one plane: the window maximum of every output.
    height, width = plane.shape
    out_h, out_w = y.shape
    for i in range(out_h):
        h0 = i * sh - ph
        h_lo, h_hi = _first_tap(h0, dh), min(h0 + (kh - 1) * dh + 1, height)
        for j in range(out_w):
            w0 = j * sw - pw
            best, best_at = _window_max(plane, h_lo, h_hi, _first_tap(w0, dw),
                                        min(w0 + (kw - 1) * dw + 1, width), dh, dw, nan_wins)
            y[i, j] = best
            argmax[i, j] = best_at


@cpu.kernel
def _forward_cpu_kernel(first, stop, x, y, argmax, kh, kw, sh, sw, ph, pw, dh, dw):
    # y[p, i, j] = max of x[p] over rows i*sh-ph + r*dh (r < kh), columns j*sw-pw + q*dw
    # (q < kw), clipped to the input (padding is -inf, and every window holds a real element).
    # One loop iteration owns one (n, c) plane p.
    planes, height, width = x.shape
    for p in range(first, stop):
        plane = x[p]
        has_nan = False
        for h in range(height):
            for w in range(width):
                has_nan |= plane[h, w] != plane[h, w]
        # The common case -- no NaN, no dilation -- has a loop of its own, compiled with literal
        # flags: without the NaN test and with unit steps. Everything else shares one loop.
        if dh == 1 and dw == 1 and not has_nan:
            _pool_plane(plane, y[p], argmax[p], kh, kw, sh, sw, ph, pw, 1, 1, False)
        else:
            _pool_plane(plane, y[p], argmax[p], kh, kw, sh, sw, ph, pw, dh, dw, has_nan)


@cpu.kernel
def _backward_cpu_kernel(first, stop, grad_y, argmax, grad_x):
    # grad_x[p, a] = sum of grad_y[p, o] over the outputs o whose argmax is a. One loop
    # iteration owns one plane p, so the scatter has no races, and it adds in ascending o --
    # the same order as the GPU's gather, hence the same bits.
    planes, n_out = grad_y.shape
    n_in = grad_x.shape[1]
    for p in range(first, stop):
        for a in range(n_in):
            grad_x[p, a] = 0
        for o in range(n_out):
            grad_x[p, argmax[p, o]] += grad_y[p, o]


# -- drivers: one per device, same signature ------------------------------------------------------

def _forward_cpu(x, out_h, out_w, kernel, stride, pad, dilation):
    n, c, h, w = x.shape
    y = np.empty((n, c, out_h, out_w), dtype=x.dtype)
    argmax = np.empty((n, c, out_h, out_w), dtype=np.int32)
    _forward_cpu_kernel(n * c, x.reshape(n * c, h, w), y.reshape(n * c, out_h, out_w),
                        argmax.reshape(n * c, out_h, out_w), *kernel, *stride, *pad, *dilation)
    return y, argmax


def _backward_cpu(grad_y, argmax, x_shape, kernel, stride, pad, dilation):
    n, c, h, w = x_shape
    grad_x = np.empty(x_shape, dtype=grad_y.dtype)
    planes, n_out = n * c, grad_y.shape[2] * grad_y.shape[3]
    _backward_cpu_kernel(planes, grad_y.reshape(planes, n_out), argmax.reshape(planes, n_out),
                         grad_x.reshape(planes, h * w))
    return grad_x


def _forward_cuda(x, out_h, out_w, kernel, stride, pad, dilation):
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    y = xp.empty((n, c, out_h, out_w), dtype=x.dtype)
    argmax = xp.empty((n, c, out_h, out_w), dtype=np.int32)
    _kernels("max_pool2d_forward", x.dtype)(y.size, x, y, argmax, h, w, out_h, out_w,
                                            *kernel, *stride, *pad, *dilation)
    return y, argmax


def _backward_cuda(grad_y, argmax, x_shape, kernel, stride, pad, dilation):
    xp = backend.array_module(grad_y)
    n, c, h, w = x_shape
    out_h, out_w = grad_y.shape[2], grad_y.shape[3]
    grad_x = xp.empty(x_shape, dtype=grad_y.dtype)
    _kernels("max_pool2d_backward", grad_y.dtype)(grad_x.size, grad_y, argmax, grad_x, h, w,
                                                  out_h, out_w, *kernel, *stride, *pad, *dilation)
    return grad_x


# -- the Functions --------------------------------------------------------------------------------

def as_batch(op, x, layout="N, C, H, W"):
    """``x`` (N, C, H, W) as it is, or unbatched (C, H, W) as a batch of one; TypeError or
    ValueError naming ``op`` for anything else."""
    checks.float_array(op, "input", x)
    if x.ndim == 3:
        return x.reshape((1,) + tuple(x.shape))
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D ({layout}) or 3-D (C, H, W), "
                         f"got shape {tuple(x.shape)}")
    return x


def _check_window_reaches_input(size, kernel, stride, pad, dilation, out, axis):
    for i in range(min(out, -(-pad // stride) + 1)):  # only windows starting in the padding
        start = i * stride - pad
        first = start if start >= 0 else start + (-start + dilation - 1) // dilation * dilation
        if first >= min(start + (kernel - 1) * dilation + 1, size):
            raise ValueError(f"{OP}: dilation {dilation} leaves output {i} along the {axis} with "
                             f"no input element in its window (input {size}, padding {pad})")


def _parse_options(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """Check the pooling options against the input shape (N, C, H, W); return them as pairs of
    ints, and the output size."""
    kernel = checks.int_pair(OP, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else checks.int_pair(OP, "stride", stride, 1)
    pad = checks.int_pair(OP, "padding", padding, 0)
    dilation = checks.int_pair(OP, "dilation", dilation, 1)
    for axis, k, p in (("height", kernel[0], pad[0]), ("width", kernel[1], pad[1])):
        if 2 * p > k:
            raise ValueError(f"{OP}: padding must be at most half the kernel size, got padding {p} "
                             f"for a kernel of {k} along the {axis}")
    h, w = x_shape[2], x_shape[3]
    if h < 1 or w < 1:
        raise ValueError(f"{OP}: input planes must be at least 1x1, got {h}x{w}")
    span = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))
    if span[0] > h + 2 * pad[0] or span[1] > w + 2 * pad[1]:
        raise ValueError(f"{OP}: kernel {kernel} with dilation {dilation} is larger than the padded "
                         f"input ({h + 2 * pad[0]}, {w + 2 * pad[1]}) (input {h}x{w}, padding {pad})")
    if h * w >= 2 ** 31:
        raise ValueError(f"{OP}: an input plane of {h}x{w} is too large for int32 argmax indices")
    out = tuple(_output_size(size, k, s, p, ceil_mode, d)
                for size, k, s, p, d in zip((h, w), kernel, stride, pad, dilation))
    for axis, args in (("height", (h, kernel[0], stride[0], pad[0], dilation[0], out[0])),
                       ("width", (w, kernel[1], stride[1], pad[1], dilation[1], out[1]))):
        _check_window_reaches_input(*args, axis)
    return kernel, stride, pad, dilation, out


class MaxPool2dFunction(Function):
    def forward(self, x, kernel_size=2, stride=None, padding=0, ceil_mode=False, dilation=1,
                indices_out=None):
        self.input_shape = tuple(x.shape)
        x = as_batch(OP, x)
        kernel, stride, pad, dilation, (out_h, out_w) = _parse_options(
            x.shape, kernel_size, stride, padding, dilation, ceil_mode)
        xp = backend.array_module(x)
        x = xp.ascontiguousarray(x)
        forward = backend.pick(x, cpu=_forward_cpu, cuda=_forward_cuda)
        y, argmax = forward(x, out_h, out_w, kernel, stride, pad, dilation)
        self.x_shape, self.dtype = x.shape, x.dtype
        self.options = (kernel, stride, pad, dilation)
        self.save_for_backward(argmax)
        if indices_out is not None:  # apply returns one tensor: the indices come back here
            indices_out.append(argmax.astype(np.int64).reshape(y.shape[4 - len(self.input_shape):]))
        return y.reshape(y.shape[4 - len(self.input_shape):])

    def backward(self, grad_y):
        (argmax,) = self.saved
        xp = backend.array_module(argmax)
        grad_y = xp.ascontiguousarray(grad_y, dtype=self.dtype).reshape(argmax.shape)
        backward = backend.pick(grad_y, cpu=_backward_cpu, cuda=_backward_cuda)
        return backward(grad_y, argmax, self.x_shape, *self.options).reshape(self.input_shape)


class MaxUnpool2dFunction(Function):
    def forward(self, x, indices, out_h, out_w):
        xp = backend.array_module(x)
        n, c = x.shape[:2]
        planes = xp.arange(n * c).reshape(n * c, 1)
        flat = xp.asarray(indices).reshape(n * c, x.shape[2] * x.shape[3])  # sizes, not -1: n may be 0
        y = xp.zeros((n * c, out_h * out_w), dtype=x.dtype)
        y[planes, flat] = x.reshape(flat.shape)
        self.flat, self.planes, self.x_shape = flat, planes, x.shape
        return y.reshape(n, c, out_h, out_w)

    def backward(self, grad_y):
        n, c = self.x_shape[:2]
        grad_x = grad_y.reshape(n * c, grad_y.shape[2] * grad_y.shape[3])[self.planes, self.flat]
        return grad_x.reshape(self.x_shape), None, None, None


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max pooling over the last two axes of ``x`` (N, C, H, W) or (C, H, W), as
    ``torch.nn.functional.max_pool2d`` (same argument order).

    ``kernel_size``, ``stride`` (default: ``kernel_size``), ``padding`` and ``dilation`` are
    ints or (height, width) pairs; windows may overlap (AlexNet pools 3x3 with stride 2).
    Padding is implicit -inf and at most half the kernel. With ``ceil_mode`` the output rounds
    up, except that a window may not start in the right padding. The gradient goes to the
    first maximum of each window (rows, then columns). ``return_indices=True`` returns
    ``(output, indices)``, the indices an int64 tensor of flat positions ``h * W + w`` in each
    input plane (what ``max_unpool2d`` takes).
    """
    if not return_indices:
        return MaxPool2dFunction.apply(x, kernel_size=kernel_size, stride=stride, padding=padding,
                                       ceil_mode=bool(ceil_mode), dilation=dilation)
    found = []
    y = MaxPool2dFunction.apply(x, kernel_size=kernel_size, stride=stride, padding=padding,
                                ceil_mode=bool(ceil_mode), dilation=dilation, indices_out=found)
    return y, Tensor(found[0])


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    """The partial inverse of ``max_pool2d``, as ``torch.nn.functional.max_unpool2d``: zeros of
    the pooled input's size with each value of ``x`` at its ``indices`` (flat ``h * W + w``).

    The size is ``(H - 1) * stride - 2 * padding + kernel_size`` per axis unless
    ``output_size`` ((H, W), or a full shape whose last two entries are used) says otherwise.
    ``x`` is (N, C, H, W) or (C, H, W); ``indices`` has its shape.
    """
    op = "max_unpool2d"
    data = x.data if isinstance(x, Tensor) else x
    index = indices.data if isinstance(indices, Tensor) else indices
    checks.float_array(op, "input", data)
    if data.ndim not in (3, 4):
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W) or 3-D (C, H, W), "
                         f"got shape {tuple(data.shape)}")
    if not hasattr(index, "dtype") or index.dtype.kind not in "iu" or index.shape != data.shape:
        raise ValueError(f"{op}: indices must be integers of the input's shape {tuple(data.shape)}")
    kernel = checks.int_pair(op, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else checks.int_pair(op, "stride", stride, 1)
    pad = checks.int_pair(op, "padding", padding, 0)
    if output_size is None:
        out_h, out_w = ((size - 1) * s - 2 * p + k for size, s, p, k
                        in zip(data.shape[-2:], stride, pad, kernel))
    else:
        out_h, out_w = checks.int_pair(op, "output_size", tuple(output_size)[-2:], 1)
    if index.size and (int(index.min()) < 0 or int(index.max()) >= out_h * out_w):
        raise ValueError(f"{op}: indices must lie in [0, {out_h * out_w - 1}] for an output of "
                         f"{out_h}x{out_w}, got values from {int(index.min())} to {int(index.max())}")
    unbatched = data.ndim == 3
    if unbatched:
        x = x.reshape((1,) + tuple(data.shape)) if isinstance(x, Tensor) else data[None]
        index = index[None]
    y = MaxUnpool2dFunction.apply(x, index, out_h, out_w)
    return y.reshape(y.shape[1:]) if unbatched else y
