"""2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``) by im2col + GEMM.

For a chunk of B images, ``im2col`` copies every input patch into one column of a matrix

    cols[(c, ki, kj), (b, oh, ow)] = x[b, c, oh*sH + ki*dH - pH, ow*sW + kj*dW - pW]   (0 in the padding)

so that the convolution of group g becomes one large matrix product,

    y_g (O_g, B*OH*OW) = W_g (O_g, C_g*kH*kW) @ cols_g (C_g*kH*kW, B*OH*OW),

done by the BLAS (OpenBLAS on the CPU, cuBLAS on the GPU), all groups' products of a pass in
one stacked call (``steps.matmul``: ``cpu.matmul_many``, ``cuda.matmul_many`` -- on the GPU one
strided-batched GEMM, a 2-D one for a single group). Backward reuses the same pieces: with
dY_g the gradient in the same (O_g, B*OH*OW) layout,

    dW_g += dY_g @ cols_g^T          dcols_g = W_g^T @ dY_g          dx = col2im(dcols)

where ``col2im`` is the adjoint of im2col, written as a gather: every input pixel sums the
column entries it was copied into, so no two threads write one element (no atomics) and the
result is deterministic. The bias gradient is dY summed over N, OH and OW. ``conv.py`` holds
the same convolution as plain loops (``conv2d_simple``).

Memory: the columns of a whole AlexNet batch take gigabytes (128 x 3 x 227 x 227 input ->
363 x 387,200 floats), so the batch is processed in chunks whose columns fit in the
workspace (``workspace.py``), in buffers reused from call to call. When the whole batch is one
chunk, forward keeps its columns for backward (``workspace.keep``); otherwise backward
recomputes them chunk by chunk (one more im2col, cheaper than the two GEMMs it feeds). dW is
computed as its transpose, cols @ dY^T, the orientation OpenBLAS runs fastest when the long
pixel axis is the inner dimension.

The two devices differ only in their steps -- im2col, col2im, the layout changes between
the GEMM's (O, B*P) and the output's (B, O, P), and the stacked product -- which are Numba
loops and ``cpu.matmul_many`` on the CPU (``CPU_STEPS``) and the CUDA kernels in ``im2col.cu``
plus CuPy on the GPU (``CUDA_STEPS``); the chunk loop is the same code on ``xp``. Chunks are
sized by the workspace limit of the arrays' device (``workspace.workspace_bytes``).
"""
from types import SimpleNamespace

import numpy as np
from numba import njit

from .. import backend, cpu, cuda
from ..tensor import Function, is_grad_enabled
from . import workspace
from .conv_geometry import Geometry, check_inputs

_kernels = cuda.KernelFile(__file__)


# -- CPU kernels (Numba) --------------------------------------------------------------------------

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


@cpu.kernel
def _im2col_cpu_kernel(first, stop, x, cols, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w, out_h, out_w):
    # cols[(c, ki, kj), (b, oh, ow)] = x[b, c, oh*sH + ki*dH - pH, ow*sW + kj*dW - pW], 0 in the
    # padding.
    # One iteration owns one input plane x[b, c] and writes its stretch b*OH*OW ... of the
    # kH*kW rows (c, ki, kj): the plane stays in cache while its taps are copied out (a whole
    # row of cols would sweep the channel of every image once per tap), and the iterations
    # never touch the same memory. Planes are numbered channel-major, as in col2im below.
    # The copy is an explicit loop: a slice assignment compiles Numba's shape checks.
    batch, channels, height, width = x.shape
    for plane in range(first, stop):
        c = plane // batch
        b = plane % batch
        source_plane = x[b, c]
        for ki in range(kernel_h):
            for kj in range(kernel_w):
                target = cols[(c * kernel_h + ki) * kernel_w + kj]
                tap_w = kj * dilation_w  # the column offset of tap kj within a window
                lo, hi = _valid_outputs(tap_w, pad_w, stride_w, width, out_w)  # ow inside
                w_first = lo * stride_w + tap_w - pad_w
                for oh in range(out_h):
                    start = (b * out_h + oh) * out_w
                    h = oh * stride_h + ki * dilation_h - pad_h
                    if h < 0 or h >= height or hi == lo:
                        for ow in range(out_w):
                            target[start + ow] = 0
                        continue
                    source = source_plane[h]
                    for ow in range(lo):
                        target[start + ow] = 0
                    for ow in range(lo, hi):
                        target[start + ow] = source[w_first + (ow - lo) * stride_w]
                    for ow in range(hi, out_w):
                        target[start + ow] = 0


@cpu.kernel
def _col2im_cpu_kernel(first, stop, cols, dx, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w, out_h, out_w):
    # dx[b, c, h, w] = sum of cols[(c, ki, kj), (b, oh, ow)] over the taps with
    # oh*sH + ki*dH - pH = h and ow*sW + kj*dW - pW = w: the adjoint of im2col, as a gather.
    # One iteration owns one plane dx[b, c] (which stays in L1 cache) and is the only writer
    # of its pixels, so there are no races; each pixel adds its taps in (ki, kj) order, as the
    # CUDA col2im does, so the two give the same sums.
    # The inner loops run over 1-D row views, with a separate unit-stride loop (the common
    # case) that LLVM vectorises.
    batch, channels, height, width = dx.shape
    # The planes are numbered channel-major, (c, b), so that a thread's consecutive iterations
    # read consecutive stretches of the same rows of cols (the other kernels here and in
    # winograd.py that read or write one plane's stretch of a (rows, B*pixels) matrix do the
    # same).
    for plane in range(first, stop):
        c = plane // batch
        b = plane % batch
        dx_plane = dx[b, c]
        dx_plane[:, :] = 0
        for ki in range(kernel_h):
            for kj in range(kernel_w):
                row = (c * kernel_h + ki) * kernel_w + kj
                lo, hi = _valid_outputs(kj * dilation_w, pad_w, stride_w, width, out_w)
                shift = kj * dilation_w - pad_w
                for oh in range(out_h):
                    h = oh * stride_h + ki * dilation_h - pad_h
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


@cpu.kernel
def _to_output_cpu_kernel(first, stop, product, bias, has_bias, relu, y):
    # y[b, o, p] = product[o, b*P + p] + bias[o], then max(., 0) if relu (NaN stays NaN, as
    # in np.maximum): the GEMM's (O, B*P) layout turned into (B, O, P) in one pass, bias and
    # ReLU included. One iteration owns one row y[b, o] and reads one run of product.
    batch, out_channels, pixels = y.shape
    zero = y.dtype.type(0)
    for row in range(first, stop):  # channel-major: see _col2im_cpu_kernel
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


@cpu.kernel
def _to_product_cpu_kernel(first, stop, grad, y, relu, dy):
    # dy[o, b*P + p] = grad[b, o, p], times (y[b, o, p] > 0) if the ReLU was fused (the same
    # product as relu's backward, so a non-finite gradient at an inactive unit gives NaN
    # alike). The inverse layout change of _to_output_cpu_kernel; one iteration per (b, o).
    batch, out_channels, pixels = grad.shape
    one, zero = grad.dtype.type(1), grad.dtype.type(0)
    for row in range(first, stop):  # channel-major: see _col2im_cpu_kernel
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


# -- the steps, one set per device, same signatures -----------------------------------------------

def _im2col_cpu(x, cols, geo):
    _im2col_cpu_kernel(x.shape[0] * x.shape[1], x, cols, *geo.kernel_args())


def _col2im_cpu(cols, dx, geo):
    _col2im_cpu_kernel(dx.shape[0] * dx.shape[1], cols, dx, *geo.kernel_args())


def _to_output_cpu(product, bias, relu, y):
    """y (B, O, P) <- product (O, B*P) + bias, with max(., 0) if relu."""
    has_bias = bias is not None
    _to_output_cpu_kernel(y.shape[0] * y.shape[1], product,
                          bias if has_bias else np.empty(0, y.dtype), has_bias, relu, y)


def _to_product_cpu(grad, y, relu, dy):
    """dy (O, B*P) <- grad (B, O, P), times (y > 0) if relu."""
    _to_product_cpu_kernel(grad.shape[0] * grad.shape[1], grad, grad if y is None else y, relu, dy)


def _im2col_cuda(x, cols, geo):
    batch, channels, height, width = x.shape
    _kernels("conv_im2col", x.dtype)(cols.size, x, cols, batch, channels, height, width,
                                     *geo.kernel_args())


def _col2im_cuda(cols, dx, geo):
    batch, channels, height, width = dx.shape
    _kernels("conv_col2im", dx.dtype)(dx.size, cols, dx, batch, channels, height, width,
                                      *geo.kernel_args())


def _to_output_cuda(product, bias, relu, y):
    batch, out_channels, pixels = y.shape
    has_bias = bias is not None
    _kernels("conv_to_output", y.dtype)(y.size, product, bias if has_bias else y, y, batch,
                                        out_channels, pixels, has_bias, relu)


def _to_product_cuda(grad, y, relu, dy):
    batch, out_channels, pixels = grad.shape
    _kernels("conv_to_product", grad.dtype)(grad.size, grad, grad if y is None else y, dy, batch,
                                            out_channels, pixels, relu)


CPU_STEPS = SimpleNamespace(im2col=_im2col_cpu, col2im=_col2im_cpu, to_output=_to_output_cpu,
                            to_product=_to_product_cpu, matmul=cpu.matmul_many)
CUDA_STEPS = SimpleNamespace(im2col=_im2col_cuda, col2im=_col2im_cuda, to_output=_to_output_cuda,
                             to_product=_to_product_cuda, matmul=cuda.matmul_many)


# -- the Function ---------------------------------------------------------------------------------

def bytes_per_image(geo, itemsize):
    """Workspace bytes per image: its columns, or its GEMM output, whichever is larger."""
    return max(geo.rows, geo.out_channels) * geo.pixels * itemsize


class Im2colConv2dFunction(Function):
    def forward(self, x, weight, bias, stride, padding, groups, relu=False, dilation=(1, 1),
                padding_end=None):
        check_inputs(x, weight, bias, stride, padding, groups, dilation, padding_end)
        xp = backend.array_module(x)
        x = xp.ascontiguousarray(x)
        weight = xp.ascontiguousarray(weight)
        geo = Geometry(x.shape, weight.shape, stride, padding, groups, dilation, padding_end)
        steps = backend.pick(x, cpu=CPU_STEPS, cuda=CUDA_STEPS)
        self.geo, self.steps, self.relu = geo, steps, relu

        # (O, C_g, kH, kW) -> (groups, O_g, C_g*kH*kW): row (c, ki, kj) matches the cols rows.
        w = weight.reshape(groups, geo.out_per_group, geo.rows_per_group)
        y = xp.empty((geo.batch, geo.out_channels, geo.out_h, geo.out_w), dtype=x.dtype)
        chunks = geo.chunks(bytes_per_image(geo, x.dtype.itemsize), xp)
        rg, og, n_pix = geo.rows_per_group, geo.out_per_group, geo.pixels
        kept = None  # this batch's columns, if kept for backward (one chunk only)
        if len(chunks) == 1 and is_grad_enabled() and self.needs_input_grad[1]:
            kept = workspace.keep(xp, (geo.rows, geo.batch * n_pix), x.dtype)
        # With the ReLU fused, backward needs the output's sign: keep y (the caller's
        # array: it must not be written to, as with relu's saved output).
        self.save_for_backward(x, weight, kept, y if relu else None)
        for start, b in chunks:
            cols = kept if kept is not None else workspace.buffer(
                xp, "cols", (geo.rows, b * n_pix), x.dtype)
            steps.im2col(x[start:start + b], cols, geo)
            product = workspace.buffer(xp, "rows_by_pixels", (geo.out_channels, b * n_pix), x.dtype)
            steps.matmul(w, cols.reshape(groups, rg, b * n_pix), product.reshape(groups, og, b * n_pix))
            # (O, B, OH*OW) -> (B, O, OH*OW), adding the bias (and the ReLU) on the way.
            steps.to_output(product, bias, relu,
                            y[start:start + b].reshape(b, geo.out_channels, n_pix))
        return y

    def backward(self, grad_output):
        x, weight, kept, y = self.saved
        geo, steps = self.geo, self.steps
        xp = backend.array_module(x)
        need_x, need_w, need_b = self.needs_input_grad[:3]
        if not (need_x or need_w or need_b):
            return None, None, None, None, None, None, None, None, None
        grad_output = xp.ascontiguousarray(grad_output, dtype=x.dtype)
        rg, og, n_pix = geo.rows_per_group, geo.out_per_group, geo.pixels
        w = weight.reshape(geo.groups, og, rg)
        # dx is skipped when the input needs no gradient (the first layer's images): that
        # saves a GEMM and a col2im per chunk.
        grad_x = xp.empty_like(x) if need_x else None
        # dW is computed transposed, dW_g^T = cols_g @ dY_g^T (rg, og), and turned round once
        # at the end: with the long pixel axis as the inner dimension, that is the orientation
        # OpenBLAS runs fastest. zeros, not empty: an empty batch runs no chunk, and its
        # gradient is 0. Each product is stacked over the groups: (groups, rows, B*P).
        grad_wt = xp.zeros((geo.groups, rg, og), dtype=x.dtype) if need_w else None
        grad_b = xp.zeros(geo.out_channels, dtype=x.dtype) if need_b else None

        for start, b in geo.chunks(bytes_per_image(geo, x.dtype.itemsize), xp):
            # dY chunk in the GEMM layout (O, B*OH*OW).
            dy = workspace.buffer(xp, "rows_by_pixels", (geo.out_channels, b * n_pix), x.dtype)
            flat = (b, geo.out_channels, n_pix)
            steps.to_product(grad_output[start:start + b].reshape(flat),
                             None if y is None else y[start:start + b].reshape(flat), self.relu, dy)
            if need_b:
                grad_b += dy.sum(axis=1)
            if not (need_x or need_w):
                continue
            cols, dcols = self._columns(x, kept, start, b, need_w)
            dy3 = dy.reshape(geo.groups, og, b * n_pix)
            if need_w:
                cols3 = cols.reshape(geo.groups, rg, b * n_pix)
                if start == 0:
                    steps.matmul(cols3, dy3.transpose(0, 2, 1), grad_wt)
                else:
                    partial = workspace.buffer(xp, "partial_dw", grad_wt.shape, x.dtype)
                    steps.matmul(cols3, dy3.transpose(0, 2, 1), partial)
                    grad_wt += partial
            if need_x:
                # cols has given all it had to dW: dcols may overwrite it.
                steps.matmul(w.transpose(0, 2, 1), dy3, dcols.reshape(geo.groups, rg, b * n_pix))
                steps.col2im(dcols, grad_x[start:start + b], geo)

        grad_w = None
        if need_w:
            grad_w = xp.ascontiguousarray(grad_wt.transpose(0, 2, 1)).reshape(weight.shape)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None

    def _columns(self, x, kept, start, images, need_w):
        """(cols, dcols) for the chunk of ``images`` at ``start``: forward's kept columns (the
        whole batch, one chunk) and a workspace for dcols, so that kept stays intact for a
        second backward (retain_graph); or the columns recomputed into the workspace, which
        dcols then overwrites group by group."""
        xp, geo = backend.array_module(x), self.geo
        shape = (geo.rows, images * geo.pixels)
        if kept is not None:
            return kept, workspace.buffer(xp, "cols", shape, x.dtype)
        cols = workspace.buffer(xp, "cols", shape, x.dtype)
        if need_w:
            self.steps.im2col(x[start:start + images], cols, geo)
        return cols, cols
