"""2-D average pooling over (N, C, H, W) or unbatched (C, H, W): ``avg_pool2d`` and
``adaptive_avg_pool2d``, with the semantics of their ``torch.nn.functional`` namesakes.

Both average each output's window of the input plane; they differ only in where the windows
are. ``avg_pool2d`` (kernel k, stride s, padding p, per axis; PyTorch's rule): the window of
output i starts at ``i * s - p``, is cut at the end of the padded input (``H + p``) -- that
length is the window's size *with* padding -- and then to the input itself::

    y[i, j] = sum of x over the window inside the input / divisor
    divisor = divisor_override, else (size with padding if count_include_pad, else size
              inside the input), rows times columns

The output size follows max-pooling's rule (``ceil_mode`` included; padding at most half the
kernel). ``adaptive_avg_pool2d`` to (OH, OW): the window of output i holds rows
``floor(i * H / OH)`` to ``ceil((i + 1) * H / OH)`` (exclusive), its divisor is its size.

So both are one algorithm over tables: per output row i, the input rows [h_lo[i], h_hi[i])
it sums and its divisor's row factor div_h[i] (likewise columns). Backward, each input
element gathers g / divisor from the outputs whose windows hold it -- the rows
[row_first[h], row_end[h]) and columns [col_first[w], col_end[w]), another pair of tables
(windows move forward monotonically, so these are ranges) -- in ascending output order.
Forward and backward are the same loops on both devices (Numba: one loop iteration per
plane; ``avgpool.cu``: one thread per output or input element), so they give the same bits.
"""

import numpy as np


from .. import backend, cpu, cuda
from ..tensor import Function
from . import checks
from .pool import _output_size, as_batch

_kernels = cuda.KernelFile(__file__)

OP = "avg_pool2d"
ADAPTIVE = "adaptive_avg_pool2d"


# -- simple versions: the definitions in plain loops ----------------------------------------------

def avg_pool2d_simple(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                      count_include_pad=True, divisor_override=None):
    """avg_pool2d of a NumPy array (N, C, H, W) by plain loops, in float64."""
    kh, kw = checks.int_pair(OP, "kernel_size", kernel_size, 1)
    sh, sw = (kh, kw) if stride is None else checks.int_pair(OP, "stride", stride, 1)
    ph, pw = checks.int_pair(OP, "padding", padding, 0)
    n, c, h, w = x.shape
    out_h, out_w = _output_size(h, kh, sh, ph, ceil_mode), _output_size(w, kw, sw, pw, ceil_mode)
    y = np.zeros((n, c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            r0, q0 = i * sh - ph, j * sw - pw
            r1, q1 = min(r0 + kh, h + ph), min(q0 + kw, w + pw)
            size_with_padding = (r1 - r0) * (q1 - q0)
            r0, q0, r1, q1 = max(r0, 0), max(q0, 0), min(r1, h), min(q1, w)
            divisor = divisor_override or (size_with_padding if count_include_pad
                                           else (r1 - r0) * (q1 - q0))
            for b in range(n):
                for ch in range(c):
                    y[b, ch, i, j] = sum(float(x[b, ch, r, q]) for r in range(r0, r1)
                                         for q in range(q0, q1)) / divisor
    return y


def adaptive_avg_pool2d_simple(x, output_size):
    """adaptive_avg_pool2d of a NumPy array (N, C, H, W) to ``output_size`` (OH, OW), in float64."""
    n, c, h, w = x.shape
    out_h, out_w = output_size
    y = np.zeros((n, c, out_h, out_w))
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, -(-((i + 1) * h) // out_h)
        for j in range(out_w):
            q0, q1 = (j * w) // out_w, -(-((j + 1) * w) // out_w)
            y[:, :, i, j] = x[:, :, r0:r1, q0:q1].astype(np.float64).sum(axis=(2, 3)) / (
                (r1 - r0) * (q1 - q0))
    return y


# -- CPU kernels (Numba) --------------------------------------------------------------------------

@cpu.kernel
def _forward_cpu_kernel(first, stop, x, y, h_lo, h_hi, w_lo, w_hi, div_h, div_w, divisor_override):
    # y[p, i, j] = sum of x[p, h_lo[i]:h_hi[i], w_lo[j]:w_hi[j]] (rows, then columns) divided
    # by divisor_override if non-zero, else by div_h[i] * div_w[j]. One loop iteration owns
    # one (n, c) plane p.
    planes, out_h, out_w = y.shape
    zero = x.dtype.type(0)
    for p in range(first, stop):
        for i in range(out_h):
            for j in range(out_w):
                total = zero
                for h in range(h_lo[i], h_hi[i]):
                    for w in range(w_lo[j], w_hi[j]):
                        total += x[p, h, w]
                if divisor_override != 0:
                    y[p, i, j] = total / divisor_override
                else:
                    y[p, i, j] = total / x.dtype.type(div_h[i] * div_w[j])


@cpu.kernel
def _backward_cpu_kernel(first, stop, g, grad_x, div_h, div_w, divisor_override, row_first,
                         row_end, col_first, col_end):
    # grad_x[p, h, w] = sum of g[p, i, j] / divisor(i, j) over the outputs whose window holds
    # (h, w): i in [row_first[h], row_end[h]), j in [col_first[w], col_end[w]), ascending.
    # One loop iteration owns one plane p (a gather: each element written once).
    planes, height, width = grad_x.shape
    zero = g.dtype.type(0)
    for p in range(first, stop):
        for h in range(height):
            for w in range(width):
                total = zero
                for i in range(row_first[h], row_end[h]):
                    for j in range(col_first[w], col_end[w]):
                        if divisor_override != 0:
                            total += g[p, i, j] / divisor_override
                        else:
                            total += g[p, i, j] / g.dtype.type(div_h[i] * div_w[j])
                grad_x[p, h, w] = total


# -- drivers: one per device, same signature ------------------------------------------------------
# x (planes, H, W); ``tables`` holds the window tables (see _Windows).

def _forward_cpu(x, tables, out_h, out_w):
    y = np.empty((x.shape[0], out_h, out_w), dtype=x.dtype)
    _forward_cpu_kernel(x.shape[0], x, y, *tables.forward_args(np, x.dtype))
    return y


def _backward_cpu(g, tables, height, width):
    grad_x = np.empty((g.shape[0], height, width), dtype=g.dtype)
    _backward_cpu_kernel(g.shape[0], g, grad_x, *tables.backward_args(np, g.dtype))
    return grad_x


def _forward_cuda(x, tables, out_h, out_w):
    xp = backend.array_module(x)
    y = xp.empty((x.shape[0], out_h, out_w), dtype=x.dtype)
    _kernels("avg_pool2d_forward", x.dtype)(y.size, x, y, *tables.forward_args(xp, x.dtype),
                                            x.shape[1], x.shape[2], out_h, out_w)
    return y


def _backward_cuda(g, tables, height, width):
    xp = backend.array_module(g)
    grad_x = xp.empty((g.shape[0], height, width), dtype=g.dtype)
    _kernels("avg_pool2d_backward", g.dtype)(grad_x.size, g, grad_x,
                                             *tables.backward_args(xp, g.dtype), height, width,
                                             g.shape[1], g.shape[2])
    return grad_x


# -- the Function ---------------------------------------------------------------------------------

def _gather_ranges(lo, hi, size):
    """For each input index, the [first, end) range of the windows [lo[o], hi[o]) holding it:
    both ends move forward with o, so the first is the first o with hi[o] > index and the end
    the first o with lo[o] > index."""
    index = np.arange(size)
    first = np.searchsorted(np.asarray(hi), index, side="right")
    end = np.searchsorted(np.asarray(lo), index, side="right")
    return first.astype(np.int32), np.maximum(first, end).astype(np.int32)


class _Windows:
    """The window tables of one pooling: rows and columns each as (lo, hi, divisor factor)."""

    def __init__(self, rows, columns, divisor_override, height, width):
        (self.h_lo, self.h_hi, self.div_h), (self.w_lo, self.w_hi, self.div_w) = rows, columns
        self.divisor_override = divisor_override or 0
        self.row_first, self.row_end = _gather_ranges(self.h_lo, self.h_hi, height)
        self.col_first, self.col_end = _gather_ranges(self.w_lo, self.w_hi, width)

    def forward_args(self, xp, dtype):
        arrays = [xp.asarray(a, dtype=np.int32) for a in (self.h_lo, self.h_hi, self.w_lo,
                                                          self.w_hi, self.div_h, self.div_w)]
        return (*arrays, np.dtype(dtype).type(self.divisor_override))

    def backward_args(self, xp, dtype):
        arrays = [xp.asarray(a, dtype=np.int32) for a in (self.row_first, self.row_end,
                                                          self.col_first, self.col_end)]
        return (xp.asarray(self.div_h, dtype=np.int32), xp.asarray(self.div_w, dtype=np.int32),
                np.dtype(dtype).type(self.divisor_override), *arrays)


def _pool_axis(size, kernel, stride, pad, ceil_mode, count_include_pad):
    """(lo, hi, divisor factor) per output along one axis of avg_pool2d."""
    out = _output_size(size, kernel, stride, pad, ceil_mode)
    lo, hi, factor = [], [], []
    for i in range(out):
        start = i * stride - pad
        end = min(start + kernel, size + pad)
        lo.append(max(start, 0))
        hi.append(min(end, size))
        factor.append(end - start if count_include_pad else hi[-1] - lo[-1])
    return lo, hi, factor


def _adaptive_axis(size, out):
    lo = [(i * size) // out for i in range(out)]
    hi = [-(-((i + 1) * size) // out) for i in range(out)]
    return lo, hi, [b - a for a, b in zip(lo, hi)]


class AvgPool2dFunction(Function):
    op = OP

    def forward(self, x, windows):
        self.input_shape = tuple(x.shape)
        x = as_batch(self.op, x)
        xp = backend.array_module(x)
        n, c, h, w = x.shape
        out_h, out_w = len(windows.h_lo), len(windows.w_lo)
        forward = backend.pick(x, cpu=_forward_cpu, cuda=_forward_cuda)
        y = forward(xp.ascontiguousarray(x).reshape(n * c, h, w), windows, out_h, out_w)
        self.windows, self.x_shape = windows, x.shape
        return y.reshape(self.input_shape[:-2] + (out_h, out_w))

    def backward(self, grad_y):
        xp = backend.array_module(grad_y)
        n, c, h, w = self.x_shape
        g = xp.ascontiguousarray(grad_y).reshape(n * c, grad_y.shape[-2], grad_y.shape[-1])
        backward = backend.pick(g, cpu=_backward_cpu, cuda=_backward_cuda)
        return backward(g, self.windows, h, w).reshape(self.input_shape), None


def _input_planes(op, x):
    data = getattr(x, "data", x)
    checks.float_array(op, "input", data)
    if data.ndim not in (3, 4):
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W) or 3-D (C, H, W), "
                         f"got shape {tuple(data.shape)}")
    h, w = data.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"{op}: input planes must be at least 1x1, got {h}x{w}")
    return h, w


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Average pooling over the last two axes of ``x`` (N, C, H, W) or (C, H, W), as
    ``torch.nn.functional.avg_pool2d`` (same arguments; see the module docstring for the
    divisor). Padding is zeros, at most half the kernel."""
    h, w = _input_planes(OP, x)
    kernel = checks.int_pair(OP, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else checks.int_pair(OP, "stride", stride, 1)
    pad = checks.int_pair(OP, "padding", padding, 0)
    if divisor_override is not None:
        divisor_override = checks.integer(OP, "divisor_override", divisor_override, 1)
    for axis, k, p, size in (("height", kernel[0], pad[0], h), ("width", kernel[1], pad[1], w)):
        if 2 * p > k:
            raise ValueError(f"{OP}: padding must be at most half the kernel size, got padding {p} "
                             f"for a kernel of {k} along the {axis}")
        if k > size + 2 * p:
            raise ValueError(f"{OP}: kernel {kernel} is larger than the padded input "
                             f"({h + 2 * pad[0]}, {w + 2 * pad[1]})")
    windows = _Windows(
        _pool_axis(h, kernel[0], stride[0], pad[0], ceil_mode, count_include_pad),
        _pool_axis(w, kernel[1], stride[1], pad[1], ceil_mode, count_include_pad),
        divisor_override, h, w)
    return AvgPool2dFunction.apply(x, windows)


class AdaptiveAvgPool2dFunction(AvgPool2dFunction):
    op = ADAPTIVE


def adaptive_avg_pool2d(x, output_size):
    """Average pooling of ``x`` (N, C, H, W) or (C, H, W) to the output size (OH, OW) (an int,
    a pair, or a pair with None for "as the input"), as
    ``torch.nn.functional.adaptive_avg_pool2d``. Windows may overlap (13 -> 6: windows of 3)."""
    h, w = _input_planes(ADAPTIVE, x)
    sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * 2
    if len(sizes) != 2:
        raise TypeError(f"{ADAPTIVE}: output_size must be an int or a pair, got {output_size!r}")
    sizes = tuple(size if s is None else s for s, size in zip(sizes, (h, w)))
    out_h, out_w = checks.int_pair(ADAPTIVE, "output_size", sizes, 1)
    windows = _Windows(_adaptive_axis(h, out_h), _adaptive_axis(w, out_w), None, h, w)
    return AdaptiveAvgPool2dFunction.apply(x, windows)
