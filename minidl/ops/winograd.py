"""3x3, stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016).

A 2x2 block of outputs of a 3x3 filter g reads a 4x4 tile d of the (padded) input. Winograd
showed it can be had with 16 multiplications instead of 36:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise over the 4x4 entries)

    B^T = [1  0 -1  0]      G = [ 1    0    0 ]      A^T = [1  1  1  0]
          [0  1  1  0]          [1/2  1/2  1/2]            [0  1 -1 -1]
          [0 -1  1  0]          [1/2 -1/2  1/2]
          [0  1  0 -1]          [ 0    0    1 ]

Summed over input channels, the elementwise products become 16 matrix products, one per
entry (i, j) of the 4x4 tile:

    U[(i,j)] (O, C)  = (G g G^T)[i, j] for every filter           (filter transform)
    V[(i,j)] (C, BT) = (B^T d B)[i, j] for every channel and tile  (input transform)
    M[(i,j)] (O, BT) = U[(i,j)] @ V[(i,j)]                          (16 GEMMs, per group)
    y tile           = A^T M A, plus the bias                       (output transform)

That is 16 multiply-adds per (output channel, input channel, tile of 4 outputs) where im2col
does 36: 2.25x fewer, and the GEMMs read V (4 floats per input pixel) instead of im2col's
columns (9 per pixel). Backward is the same pieces run by their adjoints:

    dM = A dY A^T        dV[(i,j)] = U[(i,j)]^T @ dM[(i,j)]     dx = sum over tiles of B dV B^T
    dU[(i,j)] = dM[(i,j)] @ V[(i,j)]^T                           dW = G^T dU G

Every constant is 0, +-1 or +-1/2, so the float32 rounding error stays at the level of im2col's
(tests compare both with a float64 reference). Tiles overlap by 2 pixels in each direction;
outputs past an odd OH or OW are computed on zero padding and dropped.

The filter transforms are two small matrix products (kron(G, G) is 16 x 9). The CPU runs the
tile transforms as the Numba loops below (``CPU_STEPS``), the GPU as the CUDA kernels in
``winograd.cu`` (``CUDA_STEPS``); the chunk loop and the GEMMs are the same code on ``xp``.
``conv2d`` (``conv.py``) picks this algorithm for 3x3, stride-1 convolutions
(``algorithm="auto"``); its ``conv2d_simple`` is the definition both algorithms are tested
against. Chunks and kept arrays follow ``workspace.py``'s policy, as for im2col.
"""
from types import SimpleNamespace

import numpy as np
from numba import prange

from .. import backend, cpu, cuda
from ..tensor import Function, is_grad_enabled
from . import workspace
from .conv_geometry import OP, Geometry, check_inputs

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
# U[(i, j)] = sum over (a, b) of G[i, a] g[a, b] G[j, b]: the filter transform as one matrix.
G_KRON = np.kron(G, G)  # (16, 9)

_kernels = cuda.KernelFile(__file__)


# -- CPU kernels (Numba) --------------------------------------------------------------------------
# Each works a plane (one image, one channel) at a time, one row of tiles at a time, with loops
# over the tiles of the row that LLVM vectorises.

@cpu.parallel_kernel
def _input_transform_cpu_kernel(x, v, pad_h, pad_w, tiles_h, tiles_w):
    # v[(i, j), c, (b, th, tw)] = (B^T d B)[i, j], d = the 4x4 input tile at rows
    # 2*th - pad_h .. +3 and columns 2*tw - pad_w .. +3 (0 outside x).
    # One iteration owns the plane x[b, c]: it copies it into a zero-padded scratch plane (so
    # the tile loops need no bounds tests), then for each row of tiles combines the 4 input
    # rows by B^T (t = B^T d, whole rows at once) and each tile's 4 columns of t by B.
    batch, channels, height, width = x.shape
    n_tiles = tiles_h * tiles_w
    for plane in prange(channels * batch):  # channel-major: see im2col._col2im_cpu_kernel
        c = plane // batch
        b = plane % batch
        padded = np.zeros((2 * tiles_h + 2, 2 * tiles_w + 2), x.dtype)
        padded[pad_h:pad_h + height, pad_w:pad_w + width] = x[b, c]
        t = np.empty((4, 2 * tiles_w + 2), x.dtype)
        for th in range(tiles_h):
            d0, d1, d2, d3 = padded[2 * th], padded[2 * th + 1], padded[2 * th + 2], padded[2 * th + 3]
            for p in range(2 * tiles_w + 2):
                t[0, p] = d0[p] - d2[p]
                t[1, p] = d1[p] + d2[p]
                t[2, p] = d2[p] - d1[p]
                t[3, p] = d1[p] - d3[p]
            start = b * n_tiles + th * tiles_w
            for i in range(4):
                row = t[i]
                v0 = v[4 * i, c, start:start + tiles_w]
                v1 = v[4 * i + 1, c, start:start + tiles_w]
                v2 = v[4 * i + 2, c, start:start + tiles_w]
                v3 = v[4 * i + 3, c, start:start + tiles_w]
                for tw in range(tiles_w):
                    s = 2 * tw
                    v0[tw] = row[s] - row[s + 2]
                    v1[tw] = row[s + 1] + row[s + 2]
                    v2[tw] = row[s + 2] - row[s + 1]
                    v3[tw] = row[s + 1] - row[s + 3]


@cpu.parallel_kernel
def _output_transform_cpu_kernel(m, bias, has_bias, relu, y, tiles_h, tiles_w):
    # y[b, o, 2*th + a, 2*tw + q] = (A^T e A)[a, q] + bias[o] (then max(., 0) if relu), with
    # e[i, j] = m[(i, j), o, (b, th, tw)]; outputs past OH or OW are dropped.
    # One iteration owns the plane y[b, o]; per row of tiles it combines the 16 rows of m
    # (s = A^T e, then s A) into a 2-row scratch strip, which is copied into y.
    batch, out_channels, out_h, out_w = y.shape
    n_tiles = tiles_h * tiles_w
    zero = y.dtype.type(0)
    for plane in prange(out_channels * batch):  # channel-major: see im2col._col2im_cpu_kernel
        o = plane // batch
        b = plane % batch
        strip = np.empty((2, 2 * tiles_w), y.dtype)
        s = np.empty((2, 4, tiles_w), y.dtype)
        offset = bias[o] if has_bias else zero
        for th in range(tiles_h):
            start = b * n_tiles + th * tiles_w
            for j in range(4):
                e0 = m[j, o, start:start + tiles_w]
                e1 = m[4 + j, o, start:start + tiles_w]
                e2 = m[8 + j, o, start:start + tiles_w]
                e3 = m[12 + j, o, start:start + tiles_w]
                for tw in range(tiles_w):
                    s[0, j, tw] = e0[tw] + e1[tw] + e2[tw]
                    s[1, j, tw] = e1[tw] - e2[tw] - e3[tw]
            for a in range(2):
                out = strip[a]
                for tw in range(tiles_w):
                    out[2 * tw] = s[a, 0, tw] + s[a, 1, tw] + s[a, 2, tw]
                    out[2 * tw + 1] = s[a, 1, tw] - s[a, 2, tw] - s[a, 3, tw]
                h = 2 * th + a
                if h >= out_h:
                    continue
                target = y[b, o, h]
                for w in range(out_w):
                    value = out[w] + offset
                    if relu and value < zero:
                        value = zero
                    target[w] = value


@cpu.parallel_kernel
def _output_adjoint_cpu_kernel(grad, y, relu, dm, tiles_h, tiles_w):
    # dm[(i, j), o, (b, th, tw)] = (A g A^T)[i, j], g = grad's 2x2 tile at (2*th, 2*tw) (0 past
    # OH or OW; times y > 0 if the ReLU was fused), A = [1 0; 1 1; 1 -1; 0 -1].
    # One iteration owns the plane grad[b, o]; per row of tiles it reads the 2 gradient rows
    # into a zero-padded strip and writes the 16 entries of each tile.
    batch, out_channels, out_h, out_w = grad.shape
    n_tiles = tiles_h * tiles_w
    one, zero = grad.dtype.type(1), grad.dtype.type(0)
    for plane in prange(out_channels * batch):  # channel-major: see im2col._col2im_cpu_kernel
        o = plane // batch
        b = plane % batch
        strip = np.zeros((2, 2 * tiles_w), grad.dtype)
        r = np.empty((4, 2 * tiles_w), grad.dtype)
        for th in range(tiles_h):
            for a in range(2):
                h = 2 * th + a
                if h >= out_h:
                    strip[a, :] = zero
                    continue
                source = grad[b, o, h]
                if relu:
                    active = y[b, o, h]
                    for w in range(out_w):
                        strip[a, w] = source[w] * (one if active[w] > zero else zero)
                else:
                    strip[a, :out_w] = source
            for p in range(2 * tiles_w):  # r = A g, whole rows at once
                g0, g1 = strip[0, p], strip[1, p]
                r[0, p] = g0
                r[1, p] = g0 + g1
                r[2, p] = g0 - g1
                r[3, p] = -g1
            start = b * n_tiles + th * tiles_w
            for i in range(4):  # dm row i = A applied to each tile's pair in r[i]
                row = r[i]
                dm0 = dm[4 * i, o, start:start + tiles_w]
                dm1 = dm[4 * i + 1, o, start:start + tiles_w]
                dm2 = dm[4 * i + 2, o, start:start + tiles_w]
                dm3 = dm[4 * i + 3, o, start:start + tiles_w]
                for tw in range(tiles_w):
                    p0, p1 = row[2 * tw], row[2 * tw + 1]
                    dm0[tw] = p0
                    dm1[tw] = p0 + p1
                    dm2[tw] = p0 - p1
                    dm3[tw] = -p1


@cpu.parallel_kernel
def _input_adjoint_cpu_kernel(dv, dx, pad_h, pad_w, tiles_h, tiles_w):
    # dx[b, c] = the interior of the sum, over tiles (th, tw), of B e B^T placed at rows
    # 2*th - pad_h .. +3 and columns 2*tw - pad_w .. +3, with e[i, j] = dv[(i, j), c, (b, th, tw)]
    # and B = [1 0 0 0; 0 1 -1 1; -1 1 1 0; 0 0 0 -1].
    # One iteration owns the plane dx[b, c] and is its only writer (no races). Neighbouring
    # tiles overlap, so it accumulates into a zero-padded scratch plane: per row of tiles it
    # combines the 16 rows of dv by B (q = B e, then q B^T, 16 values per tile) and adds them
    # in (row, column-in-tile) order, each pass over the tiles writing disjoint pixels.
    # (The CUDA kernel gathers per pixel instead; the sums agree up to rounding order.)
    batch, channels, height, width = dx.shape
    n_tiles = tiles_h * tiles_w
    for plane in prange(channels * batch):  # channel-major: see im2col._col2im_cpu_kernel
        c = plane // batch
        b = plane % batch
        padded = np.zeros((2 * tiles_h + 2, 2 * tiles_w + 2), dx.dtype)
        q = np.empty((4, 4, tiles_w), dx.dtype)
        for th in range(tiles_h):
            start = b * n_tiles + th * tiles_w
            for j in range(4):  # q[:, j] = B e[:, j]
                e0 = dv[j, c, start:start + tiles_w]
                e1 = dv[4 + j, c, start:start + tiles_w]
                e2 = dv[8 + j, c, start:start + tiles_w]
                e3 = dv[12 + j, c, start:start + tiles_w]
                for tw in range(tiles_w):
                    q[0, j, tw] = e0[tw]
                    q[1, j, tw] = e1[tw] - e2[tw] + e3[tw]
                    q[2, j, tw] = e1[tw] + e2[tw] - e0[tw]
                    q[3, j, tw] = -e3[tw]
            for k in range(4):  # row k of the tile: q[k] B^T, added at columns 2*tw + l
                target = padded[2 * th + k]
                for tw in range(tiles_w):
                    target[2 * tw] += q[k, 0, tw]
                for tw in range(tiles_w):
                    target[2 * tw + 1] += q[k, 1, tw] - q[k, 2, tw] + q[k, 3, tw]
                for tw in range(tiles_w):
                    target[2 * tw + 2] += q[k, 1, tw] + q[k, 2, tw] - q[k, 0, tw]
                for tw in range(tiles_w):
                    target[2 * tw + 3] -= q[k, 3, tw]
        dx[b, c] = padded[pad_h:pad_h + height, pad_w:pad_w + width]


# -- the steps, one set per device, same signatures -----------------------------------------------

class _Tiling:
    """Sizes of one Winograd convolution: the conv geometry plus its tiles of 2x2 outputs."""

    def __init__(self, x_shape, w_shape, padding, groups):
        self.geo = Geometry(x_shape, w_shape, (1, 1), padding, groups)
        self.tiles_h = (self.geo.out_h + 1) // 2
        self.tiles_w = (self.geo.out_w + 1) // 2
        self.tiles = self.tiles_h * self.tiles_w  # per image

    def bytes_per_image(self, itemsize):
        """Workspace bytes per image: its V or its M, whichever is larger (chunks small
        enough to stay in the last-level cache measured slower, so they are not sought)."""
        return 16 * max(self.geo.channels, self.geo.out_channels) * self.tiles * itemsize


def _input_transform_cpu(x, v, tiling):
    _input_transform_cpu_kernel(x, v, tiling.geo.pad_h, tiling.geo.pad_w, tiling.tiles_h,
                                tiling.tiles_w)


def _output_transform_cpu(m, bias, relu, y, tiling):
    has_bias = bias is not None
    _output_transform_cpu_kernel(m, bias if has_bias else np.empty(0, y.dtype), has_bias, relu,
                                 y, tiling.tiles_h, tiling.tiles_w)


def _output_adjoint_cpu(grad, y, relu, dm, tiling):
    _output_adjoint_cpu_kernel(grad, grad if y is None else y, relu, dm, tiling.tiles_h,
                               tiling.tiles_w)


def _input_adjoint_cpu(dv, dx, tiling):
    _input_adjoint_cpu_kernel(dv, dx, tiling.geo.pad_h, tiling.geo.pad_w, tiling.tiles_h,
                              tiling.tiles_w)


def _input_transform_cuda(x, v, tiling):
    batch, channels, height, width = x.shape
    _kernels("winograd_input_transform", x.dtype)(
        channels * batch * tiling.tiles, x, v, batch, channels, height, width,
        tiling.geo.pad_h, tiling.geo.pad_w, tiling.tiles_h, tiling.tiles_w)


def _output_transform_cuda(m, bias, relu, y, tiling):
    batch, out_channels, out_h, out_w = y.shape
    _kernels("winograd_output_transform", y.dtype)(
        out_channels * batch * tiling.tiles, m, y if bias is None else bias, y, batch,
        out_channels, out_h, out_w, tiling.tiles_h, tiling.tiles_w, bias is not None, relu)


def _output_adjoint_cuda(grad, y, relu, dm, tiling):
    batch, out_channels, out_h, out_w = grad.shape
    _kernels("winograd_output_adjoint", grad.dtype)(
        out_channels * batch * tiling.tiles, grad, grad if y is None else y, dm, batch,
        out_channels, out_h, out_w, tiling.tiles_h, tiling.tiles_w, relu)


def _input_adjoint_cuda(dv, dx, tiling):
    batch, channels, height, width = dx.shape
    _kernels("winograd_input_adjoint", dx.dtype)(
        dx.size, dv, dx, batch, channels, height, width, tiling.geo.pad_h, tiling.geo.pad_w,
        tiling.tiles_h, tiling.tiles_w)


CPU_STEPS = SimpleNamespace(input_transform=_input_transform_cpu,
                            output_transform=_output_transform_cpu,
                            output_adjoint=_output_adjoint_cpu, input_adjoint=_input_adjoint_cpu)
CUDA_STEPS = SimpleNamespace(input_transform=_input_transform_cuda,
                             output_transform=_output_transform_cuda,
                             output_adjoint=_output_adjoint_cuda, input_adjoint=_input_adjoint_cuda)


# -- the Function ---------------------------------------------------------------------------------

def supports(weight_shape, stride):
    """Whether F(2x2, 3x3) applies: a 3x3 kernel at stride 1 (any padding and groups)."""
    return tuple(weight_shape[2:]) == (3, 3) and tuple(stride) == (1, 1)


class WinogradConv2dFunction(Function):
    """conv2d for 3x3 kernels at stride 1, same arguments and results as Im2colConv2dFunction."""

    def forward(self, x, weight, bias, stride, padding, groups, relu=False):
        check_inputs(x, weight, bias, stride, padding, groups)
        if not supports(weight.shape, stride):
            raise ValueError(f"{OP}: algorithm='winograd' needs a 3x3 kernel at stride 1, "
                             f"got kernel {tuple(weight.shape[2:])} and stride {tuple(stride)}; "
                             f"use algorithm='im2col' (or 'auto')")
        xp = backend.array_module(x)
        x = xp.ascontiguousarray(x)
        tiling = _Tiling(x.shape, weight.shape, padding, groups)
        geo, n_cols = tiling.geo, tiling.tiles
        steps = backend.pick(x, cpu=CPU_STEPS, cuda=CUDA_STEPS)
        self.tiling, self.steps, self.relu = tiling, steps, relu
        # U (16, O, C_g): the transformed filters, one (O, C_g) matrix per tile entry.
        u = self._filter_transform(xp, weight)
        y = xp.empty((geo.batch, geo.out_channels, geo.out_h, geo.out_w), dtype=x.dtype)
        # V of the whole batch, kept for dW within the workspace's budget: a flat array holding
        # each chunk's (16, C, chunk*T) block in turn, so every chunk's V is contiguous.
        kept = None
        if is_grad_enabled() and self.needs_input_grad[1]:
            kept = workspace.keep(xp, (16 * geo.channels * geo.batch * n_cols,), x.dtype)
        self.save_for_backward(x, u, kept, y if relu else None)
        for start, b in geo.chunks(tiling.bytes_per_image(x.dtype.itemsize)):
            v = self._kept_chunk(kept, start, b) if kept is not None else workspace.buffer(
                xp, "cols", (16, geo.channels, b * n_cols), x.dtype)
            steps.input_transform(x[start:start + b], v, tiling)
            m = workspace.buffer(xp, "rows_by_pixels", (16, geo.out_channels, b * n_cols), x.dtype)
            self._products(xp, u, v, m)
            steps.output_transform(m, bias, relu, y[start:start + b], tiling)
        return y

    def _kept_chunk(self, kept, start, images):
        """The (16, C, images*T) block of the kept V for the chunk starting at image ``start``."""
        per_image = 16 * self.tiling.geo.channels * self.tiling.tiles
        return kept[start * per_image:(start + images) * per_image].reshape(
            16, self.tiling.geo.channels, images * self.tiling.tiles)

    @staticmethod
    def _filter_transform(xp, weight):
        out_channels, channels_per_group = weight.shape[:2]
        g_kron = xp.asarray(G_KRON, dtype=weight.dtype)
        u = xp.matmul(g_kron, weight.reshape(out_channels * channels_per_group, 9).T)
        return u.reshape(16, out_channels, channels_per_group)

    def _products(self, xp, u, v, m):
        """m[f, group rows] = u[f, group rows] @ v[f, group channels], for the 16 f and each group."""
        geo = self.tiling.geo
        og, cg = geo.out_per_group, geo.channels_per_group
        for f in range(16):
            for g in range(geo.groups):
                xp.matmul(u[f, g * og:(g + 1) * og], v[f, g * cg:(g + 1) * cg],
                          out=m[f, g * og:(g + 1) * og])

    def backward(self, grad_output):
        x, u, kept, y = self.saved
        tiling, steps = self.tiling, self.steps
        geo, n_cols = tiling.geo, tiling.tiles
        xp = backend.array_module(x)
        need_x, need_w, need_b = self.needs_input_grad[:3]
        if not (need_x or need_w or need_b):
            return None, None, None, None, None, None, None
        grad_output = xp.ascontiguousarray(grad_output, dtype=x.dtype)
        og, cg = geo.out_per_group, geo.channels_per_group

        grad_x = xp.empty_like(x) if need_x else None
        # dU is computed transposed, dU^T[f] = V[f] @ dM[f]^T (C_g, O_g) per group: with the
        # long tile axis as the inner dimension, the orientation OpenBLAS runs fastest (as
        # im2col's dW). zeros, not empty: an empty batch runs no chunk.
        grad_ut = xp.zeros((16, geo.groups, cg, og), dtype=x.dtype) if need_w else None
        grad_b = xp.zeros(geo.out_channels, dtype=x.dtype) if need_b else None

        for start, b in geo.chunks(tiling.bytes_per_image(x.dtype.itemsize)):
            dm = workspace.buffer(xp, "rows_by_pixels", (16, geo.out_channels, b * n_cols), x.dtype)
            steps.output_adjoint(grad_output[start:start + b],
                                 None if y is None else y[start:start + b], self.relu, dm, tiling)
            if need_b:
                # The tiles cover the output once (zeros past its edge), and the entry (1, 1)
                # of A g A^T is the sum of g's four values: its row sums are the bias gradient.
                grad_b += dm[5].sum(axis=1)
            if not (need_x or need_w):
                continue
            v, dv = self._transformed_input(x, kept, start, b, need_w)
            for f in range(16):
                for g in range(geo.groups):
                    dm_fg = dm[f, g * og:(g + 1) * og]
                    v_fg = v[f, g * cg:(g + 1) * cg]
                    if need_w:
                        if start == 0:
                            xp.matmul(v_fg, dm_fg.T, out=grad_ut[f, g])
                        else:
                            grad_ut[f, g] += xp.matmul(v_fg, dm_fg.T)
                    if need_x:
                        # v_fg has given all it had to dU: dv may overwrite it.
                        xp.matmul(u[f, g * og:(g + 1) * og].T, dm_fg, out=dv[f, g * cg:(g + 1) * cg])
            if need_x:
                steps.input_adjoint(dv, grad_x[start:start + b], tiling)

        grad_w = None
        if need_w:
            # dW (O*C_g, 9) = dU^T (O*C_g, 16) @ kron(G, G), the adjoint of the filter transform.
            grad_u = grad_ut.transpose(0, 1, 3, 2).reshape(16, geo.out_channels * cg)
            grad_w = xp.matmul(grad_u.T, xp.asarray(G_KRON, dtype=x.dtype))
            grad_w = grad_w.reshape(geo.out_channels, cg, 3, 3)
        return grad_x, grad_w, grad_b, None, None, None, None

    def _transformed_input(self, x, kept, start, images, need_w):
        """(V, dV) for the chunk of ``images`` at ``start``: forward's kept V and a workspace for
        dV (so kept stays intact for a second backward), or V recomputed into the workspace,
        which dV then overwrites group by group."""
        xp, tiling = backend.array_module(x), self.tiling
        shape = (16, tiling.geo.channels, images * tiling.tiles)
        if kept is not None:
            return self._kept_chunk(kept, start, images), workspace.buffer(xp, "cols", shape, x.dtype)
        v = workspace.buffer(xp, "cols", shape, x.dtype)
        if need_w:
            self.steps.input_transform(x[start:start + images], v, tiling)
        return v, v
