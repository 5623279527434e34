"""2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``) by im2col + GEMM.

For a chunk of B images, ``im2col`` copies every input patch into one column of a matrix

    cols[(c, ki, kj), (b, oh, ow)] = x[b, c, oh*sH + ki - pH, ow*sW + kj - pW]   (0 in the padding)

so that the convolution of group g becomes one large matrix product,

    y_g (O_g, B*OH*OW) = W_g (O_g, C_g*kH*kW) @ cols_g (C_g*kH*kW, B*OH*OW),

done by the BLAS (``xp.matmul``: OpenBLAS on the CPU, cuBLAS on the GPU). Backward reuses the
same pieces: with dY_g the gradient in the same (O_g, B*OH*OW) layout,

    dW_g += dY_g @ cols_g^T          dcols_g = W_g^T @ dY_g          dx = col2im(dcols)

where ``col2im`` is the adjoint of im2col, written as a gather: every input pixel sums the
column entries it was copied into, so no two threads write one element (no atomics) and the
result is deterministic. The bias gradient is dY summed over N, OH and OW.

Memory: the columns of a whole AlexNet batch take gigabytes (128 x 3 x 227 x 227 input ->
363 x 387,200 floats), so the batch is processed in chunks whose columns fit in
``WORKSPACE_BYTES``. The chunk's buffers (columns, and the GEMM output in (O, B*OH*OW)
layout) are kept between calls and reused -- a fresh multi-megabyte array takes a page fault
per 4 KiB page when first written, which about doubles the cost of filling it. When the
whole batch is one chunk, forward keeps its columns for backward (in a fresh array, within
the ``KEEP_COLUMNS_BYTES`` budget shared by all layers alive); otherwise backward recomputes
them chunk by chunk (one more im2col, cheaper than the two GEMMs it feeds, but ~190 ms of an
AlexNet step at batch 32 on 2 cores). dW is computed as its transpose, cols @ dY^T, the
orientation OpenBLAS runs fastest when the long pixel axis is the inner dimension.

Speed on a small CPU: OpenBLAS's worker threads spin for ~0.1 s after each product, and on 2
cores they then take half the CPU from the Numba loops that follow (im2col here, and every
other op). Setting OPENBLAS_THREAD_TIMEOUT=4 in the environment before NumPy is first imported
stops that; ``benchmarks/conv_bench.py`` measures both.

The CPU runs im2col/col2im as Numba loops below, the GPU as the CUDA kernels in ``conv.cu``;
everything else is the same code on ``xp``.

3x3 convolutions at stride 1 (AlexNet's conv3-5, all of EuroNet's) go by default to
``winograd.py`` instead, which does 2.25x fewer multiply-adds; ``conv2d(algorithm=...)``
chooses. It shares this module's input checks, workspace and budget for kept arrays.
"""
import threading
import weakref

import numpy as np
from numba import njit, prange

from .. import backend, cuda
from ..autograd import Function, is_grad_enabled
from ..tensor import Tensor
from . import _checks

OP = "conv2d"

# Upper bound (bytes) on each workspace buffer of one chunk of images: the columns, and the
# GEMM output in (O, B*OH*OW) layout. The batch is split into chunks that fit (one image at
# least). Larger chunks mean fewer, larger GEMMs: with AlexNet at batch 32 on 2 cores, 256 MiB
# (one chunk for conv1 and conv2) measured 3-5 % faster than 128 MiB and ~20 % faster than
# 32 MiB. The buffers stay allocated between calls (see clear_workspace).
WORKSPACE_BYTES = 256 * 2**20

# Forward may keep its columns for backward, which then skips recomputing them (one im2col
# per layer, ~190 ms of an AlexNet step at batch 32 on 2 cores). It does so only when the
# whole batch is one chunk and while the columns kept by all layers alive together stay under
# this many bytes, taken greedily in forward order: in AlexNet at batch 32 that is conv1 to
# conv4 (489 MB), at batch 128 conv3 and conv4 (500 MB; the step's peak resident size stayed
# at 2.76 GiB, PyTorch's is 3.8), in EuroNet at batch 50 all but the last conv. The peak
# memory of a step grows by at most this much. 0 turns keeping off.
KEEP_COLUMNS_BYTES = 512 * 2**20

_kernels = cuda.KernelFile(__file__)


# --------------------------------------------------------------------------------------------
# Numba kernels (CPU)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _valid_outputs(k, pad, stride, size, out_size):
    """The outputs o in [lo, hi) whose tap k reads inside the input: 0 <= o*stride + k - pad < size."""
    lo = 0
    if pad - k > 0:
        lo = (pad - k + stride - 1) // stride
    last = size - 1 + pad - k  # o*stride <= last
    hi = last // stride + 1 if last >= 0 else 0
    hi = min(hi, out_size)
    lo = min(lo, out_size)
    return lo, max(lo, hi)


@njit(parallel=True, cache=True)
def _im2col_cpu(x, cols, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w):
    # cols[(c, ki, kj), (b, oh, ow)] = x[b, c, oh*sH + ki - pH, ow*sW + kj - pW], 0 in the padding.
    # One iteration owns one row (c, ki, kj) of cols: it writes that row start to end, so the
    # writes are sequential and the iterations never touch the same memory. The copies are
    # slices (measured 1.5x faster than an element loop for AlexNet's conv1).
    batch, channels, height, width = x.shape
    taps = kernel_h * kernel_w
    for row in prange(channels * taps):
        c = row // taps
        ki = (row // kernel_w) % kernel_h
        kj = row % kernel_w
        lo, hi = _valid_outputs(kj, pad_w, stride_w, width, out_w)  # ow inside the input
        w_first = lo * stride_w + kj - pad_w
        w_stop = w_first + (hi - lo - 1) * stride_w + 1
        for b in range(batch):
            for oh in range(out_h):
                start = (b * out_h + oh) * out_w
                h = oh * stride_h + ki - pad_h
                if h < 0 or h >= height or hi == lo:
                    cols[row, start:start + out_w] = 0
                    continue
                cols[row, start:start + lo] = 0
                cols[row, start + lo:start + hi] = x[b, c, h, w_first:w_stop:stride_w]
                cols[row, start + hi:start + out_w] = 0


@njit(parallel=True, cache=True)
def _col2im_cpu(cols, dx, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w):
    # dx[b, c, h, w] = sum of cols[(c, ki, kj), (b, oh, ow)] over the taps with
    # oh*sH + ki - pH = h and ow*sW + kj - pW = w: the adjoint of im2col, as a gather.
    # One iteration owns one plane dx[b, c] (which stays in L1 cache) and is the only writer
    # of its pixels, so there are no races; each pixel adds its taps in (ki, kj) order, as the
    # CUDA col2im does, so the two give the same sums.
    # The inner loops run over 1-D row views, with a separate unit-stride loop (the common
    # case) that LLVM vectorises: measured 2-3x faster than indexing dx[b, c, h, w] directly.
    batch, channels, height, width = dx.shape
    # The planes are numbered channel-major, (c, b), so that a thread's consecutive iterations
    # read consecutive stretches of the same rows of cols: 1.3x faster than (b, c) order on
    # AlexNet's conv2 (the other kernels here and in winograd.py that read or write one
    # plane's stretch of a (rows, B*pixels) matrix do the same).
    for plane in prange(channels * batch):
        c = plane // batch
        b = plane % batch
        dx_plane = dx[b, c]
        dx_plane[:, :] = 0
        for ki in range(kernel_h):
            for kj in range(kernel_w):
                row = (c * kernel_h + ki) * kernel_w + kj
                lo, hi = _valid_outputs(kj, pad_w, stride_w, width, out_w)
                shift = kj - pad_w
                for oh in range(out_h):
                    h = oh * stride_h + ki - pad_h
                    if h < 0 or h >= height:
                        continue
                    start = (b * out_h + oh) * out_w
                    source = cols[row, start:start + out_w]
                    target = dx_plane[h]
                    if stride_w == 1:
                        for ow in range(lo, hi):
                            target[ow + shift] += source[ow]
                    else:
                        for ow in range(lo, hi):
                            target[ow * stride_w + shift] += source[ow]


@njit(parallel=True, cache=True)
def _product_to_output_cpu(product, bias, has_bias, relu, y):
    # y[b, o, p] = product[o, b*P + p] + bias[o], then max(., 0) if relu (NaN stays NaN, as
    # in np.maximum): the GEMM's (O, B*P) layout turned into (B, O, P) in one pass, bias and
    # ReLU included. One iteration owns one row y[b, o] and reads one run of product.
    batch, out_channels, pixels = y.shape
    zero = y.dtype.type(0)
    for row in prange(out_channels * batch):  # channel-major: see _col2im_cpu
        o = row // batch
        b = row % batch
        source = product[o, b * pixels:(b + 1) * pixels]
        target = y[b, o]
        for p in range(pixels):
            v = source[p]
            if has_bias:
                v = v + bias[o]
            if relu and v < zero:
                v = zero
            target[p] = v


@njit(parallel=True, cache=True)
def _grad_to_product_cpu(grad, y, relu, dy):
    # dy[o, b*P + p] = grad[b, o, p], times (y[b, o, p] > 0) if the ReLU was fused (the same
    # product as relu's backward, so a non-finite gradient at an inactive unit gives NaN
    # alike). The inverse layout change of _product_to_output_cpu; one iteration per (b, o).
    batch, out_channels, pixels = grad.shape
    one, zero = grad.dtype.type(1), grad.dtype.type(0)
    for row in prange(out_channels * batch):  # channel-major: see _col2im_cpu
        o = row // batch
        b = row % batch
        source = grad[b, o]
        target = dy[o, b * pixels:(b + 1) * pixels]
        if relu:
            active = y[b, o]
            for p in range(pixels):
                target[p] = source[p] * (one if active[p] > zero else zero)
        else:
            for p in range(pixels):
                target[p] = source[p]


# --------------------------------------------------------------------------------------------
# The two data-movement steps, on the CPU (Numba) or through the CUDA kernels
# --------------------------------------------------------------------------------------------
class _Geometry:
    """Sizes of one convolution, derived once from the input and weight shapes."""

    def __init__(self, x_shape, w_shape, stride, padding, groups):
        self.batch, self.channels, self.height, self.width = x_shape
        self.out_channels, _, self.kernel_h, self.kernel_w = w_shape
        self.stride_h, self.stride_w = stride
        self.pad_h, self.pad_w = padding
        self.groups = groups
        self.out_h = (self.height + 2 * self.pad_h - self.kernel_h) // self.stride_h + 1
        self.out_w = (self.width + 2 * self.pad_w - self.kernel_w) // self.stride_w + 1
        self.pixels = self.out_h * self.out_w  # columns per image
        self.rows = self.channels * self.kernel_h * self.kernel_w  # rows of cols, all groups
        self.rows_per_group = self.rows // groups
        self.out_per_group = self.out_channels // groups

    def kernel_args(self):
        return (self.kernel_h, self.kernel_w, self.stride_h, self.stride_w,
                self.pad_h, self.pad_w, self.out_h, self.out_w)

    def chunk_size(self, itemsize):
        """Images per chunk: its columns and its GEMM output each fit in WORKSPACE_BYTES (or
        it is 1 image),
        and the chunks are of near-equal size (32 images in chunks of 30 then 2 would waste
        the second GEMM)."""
        per_image = max(self.rows, self.out_channels) * self.pixels * itemsize
        largest = max(1, min(self.batch, WORKSPACE_BYTES // max(1, per_image)))
        n_chunks = -(-self.batch // largest)
        return max(1, -(-self.batch // max(1, n_chunks)))


def _im2col(x, cols, geo, on_cuda):
    if on_cuda:
        batch, channels, height, width = x.shape
        _kernels("im2col", x.dtype)(
            cols.size, x, cols, np.int64(batch), np.int32(channels), np.int32(height),
            np.int32(width), *(np.int32(v) for v in geo.kernel_args()))
    else:
        _im2col_cpu(x, cols, *geo.kernel_args())


def _to_output(product, bias, relu, y, on_cuda):
    """y (B, O, P) <- product (O, B*P) + bias, with max(., 0) if relu."""
    if on_cuda:
        out_channels, (batch, _, pixels) = product.shape[0], y.shape
        source = product.reshape(out_channels, batch, pixels).transpose(1, 0, 2)
        if bias is None:
            y[...] = source
        else:
            backend.array_module(y).add(source, bias.reshape(1, -1, 1), out=y)
        if relu:
            backend.array_module(y).maximum(y, 0, out=y)
        return
    has_bias = bias is not None
    with backend.cpu_threads_for(y.size):
        _product_to_output_cpu(product, bias if has_bias else np.empty(0, y.dtype), has_bias,
                               relu, y)


def _to_product(grad, y, relu, dy, on_cuda):
    """dy (O, B*P) <- grad (B, O, P), times (y > 0) if relu."""
    xp = backend.array_module(grad)
    if on_cuda:
        out_channels, (batch, _, pixels) = dy.shape[0], grad.shape
        target = dy.reshape(out_channels, batch, pixels)
        if relu:
            xp.multiply(grad.transpose(1, 0, 2), (y > 0).transpose(1, 0, 2), out=target)
        else:
            target[...] = grad.transpose(1, 0, 2)
        return
    with backend.cpu_threads_for(grad.size):
        _grad_to_product_cpu(grad, grad if y is None else y, relu, dy)


def _col2im(cols, dx, geo, on_cuda):
    if on_cuda:
        batch, channels, height, width = dx.shape
        _kernels("col2im", dx.dtype)(
            dx.size, cols, dx, np.int64(batch), np.int32(channels), np.int32(height),
            np.int32(width), *(np.int32(v) for v in geo.kernel_args()))
    else:
        _col2im_cpu(cols, dx, *geo.kernel_args())


# --------------------------------------------------------------------------------------------
# Reusable workspace
# --------------------------------------------------------------------------------------------
_workspace = threading.local()


def _buffer(xp, role, shape, dtype):
    """A C-contiguous array of ``shape`` carved from a per-thread buffer kept between calls.

    The buffer grows to the largest size asked for under ``role`` and is then reused; the
    caller must be done with it before asking for the same role again. Never return it.
    """
    buffers = _workspace.__dict__.setdefault("buffers", {})
    key = (xp.__name__, role, np.dtype(dtype).str)
    size = int(np.prod(shape))
    flat = buffers.get(key)
    if flat is None or flat.size < size:
        buffers.pop(key, None)  # free the old one before allocating its successor
        flat = xp.empty(size, dtype=dtype)
        buffers[key] = flat
    return flat[:size].reshape(shape)


_kept = {"bytes": 0}
_kept_lock = threading.Lock()


def _reserve_kept(nbytes):
    """Count ``nbytes`` of kept columns against KEEP_COLUMNS_BYTES; False if they do not fit."""
    with _kept_lock:
        if _kept["bytes"] + nbytes > KEEP_COLUMNS_BYTES:
            return False
        _kept["bytes"] += nbytes
        return True


def _unreserve_kept(nbytes):
    with _kept_lock:
        _kept["bytes"] -= nbytes


def _kept_columns(xp, shape, dtype):
    """A fresh columns array counted against the budget until it is garbage (or None)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if not _reserve_kept(nbytes):
        return None
    cols = xp.empty(shape, dtype=dtype)
    # Freed with the graph (Function.release drops it) or when the graph is dropped
    # without a backward: either way the budget gets the bytes back.
    try:
        weakref.finalize(cols, _unreserve_kept, nbytes)
    except TypeError:  # an array type without weak references: do not keep
        _unreserve_kept(nbytes)
        return None
    return cols


def clear_workspace():
    """Free the buffers conv2d keeps between calls (they are recreated on the next call)."""
    _workspace.__dict__.pop("buffers", None)


# --------------------------------------------------------------------------------------------
# Forward and backward
# --------------------------------------------------------------------------------------------
def _check_inputs(x, weight, bias, stride, padding, groups):
    _checks.float_array(OP, "input", x, ndim=4, layout="N, C, H, W")
    _checks.float_array(OP, "weight", weight, ndim=4,
                        layout="out_channels, in_channels // groups, kH, kW")
    if bias is not None:
        _checks.float_array(OP, "bias", bias)
    _checks.same_dtype(OP, input=x, weight=weight, bias=bias)
    _checks.positive_ints(OP, stride=stride, groups=groups)
    _checks.non_negative_ints(OP, padding=padding)
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    channels = x.shape[1]
    if out_channels % groups:
        raise ValueError(f"{OP}: groups={groups} must divide the out channels, but weight has "
                         f"{out_channels} (weight shape {tuple(weight.shape)})")
    if channels % groups:
        raise ValueError(f"{OP}: groups={groups} must divide the input channels, but input has "
                         f"{channels} (input shape {tuple(x.shape)})")
    if channels != channels_per_group * groups:
        raise ValueError(
            f"{OP}: input has {channels} channels (shape {tuple(x.shape)}) but weight "
            f"{tuple(weight.shape)} with groups={groups} expects weight.shape[1] * groups = "
            f"{channels_per_group * groups}")
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"{OP}: bias must have shape ({out_channels},), one value per output "
                         f"channel, got shape {tuple(bias.shape)}")
    padded = (x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1])
    if kernel_h > padded[0] or kernel_w > padded[1]:
        raise ValueError(f"{OP}: kernel {kernel_h}x{kernel_w} is larger than the padded input "
                         f"{padded[0]}x{padded[1]} (input {x.shape[2]}x{x.shape[3]}, "
                         f"padding {padding}); expected a kernel no larger than the padded input")


class Conv2dFunction(Function):
    def forward(self, x, weight, bias, stride, padding, groups, relu=False):
        _check_inputs(x, weight, bias, stride, padding, groups)
        xp = backend.array_module(x)
        x = xp.ascontiguousarray(x)
        weight = xp.ascontiguousarray(weight)
        geo = _Geometry(x.shape, weight.shape, stride, padding, groups)
        on_cuda = backend.uses_cuda_kernels(x)
        self.geo, self.on_cuda, self.relu = geo, on_cuda, relu

        # (O, C_g, kH, kW) -> (groups, O_g, C_g*kH*kW): row (c, ki, kj) matches the cols rows.
        w = weight.reshape(groups, geo.out_per_group, geo.rows_per_group)
        y = xp.empty((geo.batch, geo.out_channels, geo.out_h, geo.out_w), dtype=x.dtype)
        chunk = geo.chunk_size(x.dtype.itemsize)
        rg, og, n_pix = geo.rows_per_group, geo.out_per_group, geo.pixels
        kept = None  # this batch's columns, if kept for backward (see KEEP_COLUMNS_BYTES)
        if chunk == geo.batch and is_grad_enabled() and self.needs_input_grad[1]:
            kept = _kept_columns(xp, (geo.rows, geo.batch * n_pix), x.dtype)
        # With the ReLU fused, backward needs the output's sign: keep y (the caller's
        # array: it must not be written to, as with relu's saved output).
        self.save_for_backward(x, weight, kept, y if relu else None)
        for start in range(0, geo.batch, chunk):
            b = min(chunk, geo.batch - start)
            cols = kept if kept is not None else _buffer(xp, "cols", (geo.rows, b * n_pix), x.dtype)
            _im2col(x[start:start + b], cols, geo, on_cuda)
            product = _buffer(xp, "rows_by_pixels", (geo.out_channels, b * n_pix), x.dtype)
            for g in range(groups):
                xp.matmul(w[g], cols[g * rg:(g + 1) * rg], out=product[g * og:(g + 1) * og])
            # (O, B, OH*OW) -> (B, O, OH*OW), adding the bias (and the ReLU) on the way.
            _to_output(product, bias, relu, y[start:start + b].reshape(b, geo.out_channels, n_pix),
                       on_cuda)
        return y

    def backward(self, grad_output):
        x, weight, kept, y = self.saved
        geo, on_cuda = self.geo, self.on_cuda
        xp = backend.array_module(x)
        need_x, need_w, need_b = self.needs_input_grad[:3]
        if not (need_x or need_w or need_b):
            return None, None, None, None, None, None, None
        grad_output = xp.ascontiguousarray(grad_output, dtype=x.dtype)
        groups, rg, og, n_pix = geo.groups, geo.rows_per_group, geo.out_per_group, geo.pixels

        w = weight.reshape(groups, og, rg)
        # dx is skipped when the input needs no gradient (the first layer's images): that
        # saves a GEMM and a col2im per chunk.
        grad_x = xp.empty_like(x) if need_x else None
        # dW is computed transposed, dW_g^T = cols_g @ dY_g^T (rg, og), and turned round once
        # at the end: with the long pixel axis as the inner dimension, OpenBLAS runs this
        # orientation 1.3-4x faster than dY_g @ cols_g^T on AlexNet's and EuroNet's shapes
        # (e.g. conv1 at batch 32: 142 vs 480 ms, 2 cores).
        # zeros, not empty: an empty batch runs no chunk, and its gradient is 0.
        grad_wt = xp.zeros((groups, rg, og), dtype=x.dtype) if need_w else None
        grad_b = xp.zeros(geo.out_channels, dtype=x.dtype) if need_b else None

        chunk = geo.chunk_size(x.dtype.itemsize)
        for start in range(0, geo.batch, chunk):
            b = min(chunk, geo.batch - start)
            # dY chunk in the GEMM layout (O, B*OH*OW).
            dy = _buffer(xp, "rows_by_pixels", (geo.out_channels, b * n_pix), x.dtype)
            flat = (b, geo.out_channels, n_pix)
            _to_product(grad_output[start:start + b].reshape(flat),
                        None if y is None else y[start:start + b].reshape(flat), self.relu, dy,
                        on_cuda)
            if need_b:
                grad_b += dy.sum(axis=1)
            if not (need_x or need_w):
                continue
            if kept is not None:
                # forward's columns of the whole batch (then one chunk); dcols goes to the
                # workspace so that kept stays intact for a second backward (retain_graph).
                cols = kept
                dcols = _buffer(xp, "cols", (geo.rows, b * n_pix), x.dtype)
            else:
                cols = dcols = _buffer(xp, "cols", (geo.rows, b * n_pix), x.dtype)
                if need_w:
                    _im2col(x[start:start + b], cols, geo, on_cuda)
            for g in range(groups):
                dy_g, cols_g = dy[g * og:(g + 1) * og], cols[g * rg:(g + 1) * rg]
                if need_w:
                    if start == 0:
                        xp.matmul(cols_g, dy_g.T, out=grad_wt[g])
                    else:
                        grad_wt[g] += xp.matmul(cols_g, dy_g.T)
                if need_x:
                    # cols_g has given all it had to dW_g: dcols_g may overwrite it.
                    xp.matmul(w[g].T, dy_g, out=dcols[g * rg:(g + 1) * rg])
            if need_x:
                _col2im(dcols, grad_x[start:start + b], geo, on_cuda)

        grad_w = None
        if need_w:
            grad_w = xp.ascontiguousarray(grad_wt.transpose(0, 2, 1)).reshape(weight.shape)
        return grad_x, grad_w, grad_b, None, None, None, None


ALGORITHMS = ("auto", "im2col", "winograd")


def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1, relu=False, algorithm="auto"):
    """2-D convolution of ``x`` (N, C, H, W) with ``weight`` (O, C // groups, kH, kW).

    Returns (N, O, OH, OW) with OH = (H + 2*pH - kH) // sH + 1 (likewise OW); ``bias`` is
    (O,) or None; ``stride`` and ``padding`` are an int or an (h, w) pair. ``groups`` splits
    the channels: output channels [g*O/groups, (g+1)*O/groups) see only input channels
    [g*C/groups, (g+1)*C/groups). Same semantics as ``torch.nn.functional.conv2d``.

    ``relu=True`` returns ``relu(conv2d(...))`` with the ReLU fused: it is applied while the
    output is written, and its backward mask while the gradient is read, so it costs no pass
    over memory of its own, and the pre-activation output is never kept for backward.

    ``algorithm`` picks how it is computed: ``"im2col"`` (this module, any geometry),
    ``"winograd"`` (F(2x2, 3x3) in ``winograd.py``: 3x3 kernels at stride 1 only, 2.25x fewer
    multiply-adds) or ``"auto"``, which takes Winograd wherever it applies. Both give the
    same results up to float rounding.
    """
    for name, value in (("input", x), ("weight", weight), ("bias", bias)):
        if value is None and name == "bias":
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{OP}: {name} must be a minidl Tensor, got {type(value).__name__}")
    stride, padding = _int_pair("stride", stride), _int_pair("padding", padding)
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"{OP}: groups must be a positive int, got {groups!r}")
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"{OP}: relu must be True or False, got {relu!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{OP}: algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, "
                         f"got {algorithm!r}")
    # Imported here, not at the top: winograd.py builds on this module's checks and workspace.
    from . import winograd
    function = Conv2dFunction
    if algorithm == "winograd" or (algorithm == "auto"
                                   and winograd.supports(weight.shape, stride)):
        function = winograd.WinogradConv2dFunction
    return function.apply(x, weight, bias, stride, padding, int(groups), bool(relu))


def _int_pair(name, value):
    """An int or a pair of ints -> a pair of Python ints; anything else is an error."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  for v in items):
        raise TypeError(f"{OP}: {name} must be an int or a pair of ints, got {value!r}")
    return int(items[0]), int(items[1])
