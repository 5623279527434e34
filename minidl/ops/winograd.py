"""Stride-1 convolution by Winograd's minimal filtering (Lavin & Gray, 2016): F(4x4, 3x3) for
3x3 kernels and F(2x2, 5x5) for 5x5 kernels, both on 6x6 input tiles.

An m x m block of outputs of an r x r filter g reads a 6 x 6 tile d of the (padded) input
(6 = m + r - 1). Winograd showed it can be had with 36 multiplications instead of m^2 r^2:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise over the 6x6 entries)

with the matrices of the interpolation points 0, 1, -1, 2, -2 and infinity (Toom-Cook). B^T is
the same for both filter sizes; A^T has one row per output of the block, G one column per
filter tap:

    B^T = [4  0 -5  0  1  0]     A^T, F(4x4, 3x3) = [1  1  1  1  1  0]     F(2x2, 5x5):
          [0 -4 -4  1  1  0]                        [0  1 -1  2 -2  0]     [1  1  1  1  1  0]
          [0  4 -4 -1  1  0]                        [0  1  1  4  4  0]     [0  1 -1  2 -2  1]
          [0 -2 -1  2  1  0]                        [0  1 -1  8 -8  1]
          [0  2 -1 -2  1  0]
          [0  4  0 -5  0  1]     G[j, k] = p_j^k / prod over l != j of (p_j - p_l) for the five
                                 finite points p_j, and G[5] = (0, ..., 0, 1)

Summed over input channels, the elementwise products become 36 matrix products, one per entry
(i, j) of the 6x6 tile:

    U[(i,j)] (O, C)  = (G g G^T)[i, j] for every filter           (filter transform)
    V[(i,j)] (C, BT) = (B^T d B)[i, j] for every channel and tile  (input transform)
    M[(i,j)] (O, BT) = U[(i,j)] @ V[(i,j)]                          (36 GEMMs, per group)
    y tile           = A^T M A, plus the bias                       (output transform)

That is 36 multiply-adds per (output channel, input channel, tile) where im2col does
m^2 r^2: 4x fewer for 3x3 (36 for 16 outputs, not 144), 2.8x fewer for 5x5 (36 for 4, not
100), and the GEMMs read V (36 / m^2 floats per input pixel) instead of im2col's columns
(r^2 per pixel). Backward is the same pieces run by their adjoints:

    dM = A dY A^T        dV[(i,j)] = U[(i,j)]^T @ dM[(i,j)]     dx = sum over tiles of B dV B^T
    dU[(i,j)] = dM[(i,j)] @ V[(i,j)]^T                           dW = G^T dU G

B^T and A^T hold small integers, so the tile transforms round only in their additions; G's
fractions (1/4, 1/6, 1/12, 1/24) act on the weights, in float64. The price of the larger tile
is a float32 error about ten times im2col's (a few 1e-6 of the output's scale), which training
does not notice; ``algorithm="im2col"`` is there when it matters. Tiles overlap by r - 1
pixels in each direction; outputs past the last whole block are computed on zero padding and
dropped.

The filter transform is one small matrix product (kron(G, G) is 36 x r^2). The CPU runs the
tile transforms as the Numba loops below (``CPU_STEPS``), the GPU as the CUDA kernels in
``winograd.cu`` (``CUDA_STEPS``); the chunk loop and the GEMMs are the same code on ``xp``.
``conv2d`` (``conv.py``) picks this algorithm for 3x3 and 5x5 convolutions at stride 1
(``algorithm="auto"``); its ``conv2d_simple`` is the definition both algorithms are tested
against. Chunks and kept arrays follow ``workspace.py``'s policy, as for im2col.
"""
from types import SimpleNamespace

import numpy as np
from numba import njit

from .. import backend, cpu, cuda
from ..tensor import Function, is_grad_enabled
from . import workspace
from .conv_geometry import OP, Geometry, check_inputs

ALPHA = 6  # the input tile's side, m + r - 1 for both variants
POINTS = (0.0, 1.0, -1.0, 2.0, -2.0)  # and infinity
B_T = np.array([[4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]], dtype=np.float64)


def _a_t(m):
    """A^T (m x 6): row i holds p^i for each finite point p, and 1 for infinity in the last row."""
    rows = np.array([[p ** i for p in POINTS] + [0.0] for i in range(m)])
    rows[m - 1, ALPHA - 1] = 1.0
    return rows


def _g(r):
    """G (6 x r): the Lagrange weights of the finite points, and (0, ..., 0, 1) for infinity."""
    rows = []
    for j, p in enumerate(POINTS):
        denominator = np.prod([p - q for l, q in enumerate(POINTS) if l != j])
        rows.append([p ** k / denominator for k in range(r)])
    rows.append([0.0] * (r - 1) + [1.0])
    return np.array(rows)


# kernel size r -> (outputs per tile side m, A^T, G, kron(G, G)): U[(i, j)] = sum over (a, b) of
# G[i, a] g[a, b] G[j, b] is one product with kron(G, G).
VARIANTS = {r: (ALPHA - r + 1, _a_t(ALPHA - r + 1), _g(r), np.kron(_g(r), _g(r))) for r in (3, 5)}

_kernels = cuda.KernelFile(__file__)


# -- the 1-D transforms: one column (or row) of six at a time ------------------------------------
# B^T a, B e (the adjoint), A^T e and A g for one vector; k = (2, 4, 5, 8, 0) in the array's
# dtype (``_constants``), so float32 stays float32.

@njit(cache=True)
def _constants(array):
    real = array.dtype.type
    return real(2), real(4), real(5), real(8), real(0)


@njit(cache=True)
def _bt(a0, a1, a2, a3, a4, a5, k):
    return (k[1] * a0 - k[2] * a2 + a4,
            a3 + a4 - k[1] * (a1 + a2),
            k[1] * (a1 - a2) + a4 - a3,
            k[0] * (a3 - a1) + a4 - a2,
            k[0] * (a1 - a3) + a4 - a2,
            k[1] * a1 - k[2] * a3 + a5)


@njit(cache=True)
def _b(e0, e1, e2, e3, e4, e5, k):
    return (k[1] * e0,
            k[1] * (e2 - e1) + k[0] * (e4 - e3) + k[1] * e5,
            -k[2] * e0 - k[1] * (e1 + e2) - e3 - e4,
            e1 - e2 + k[0] * (e3 - e4) - k[2] * e5,
            e0 + e1 + e2 + e3 + e4,
            e5)


@njit(cache=True)
def _at(e0, e1, e2, e3, e4, e5, m, k):
    """A^T e: four outputs for m = 4; for m = 2 two, and two zeros."""
    plus, minus = e1 + e2, e1 - e2
    if m == 4:
        return (e0 + plus + (e3 + e4), minus + k[0] * (e3 - e4), plus + k[1] * (e3 + e4),
                minus + k[3] * (e3 - e4) + e5)
    return e0 + plus + (e3 + e4), minus + k[0] * (e3 - e4) + e5, k[4], k[4]


@njit(cache=True)
def _a(g0, g1, g2, g3, m, k):
    """A g for the m values g0 .. g(m-1) of a block's row or column (the rest ignored)."""
    if m == 4:
        return (g0, g0 + g1 + g2 + g3, g0 - g1 + g2 - g3, g0 + k[0] * g1 + k[1] * g2 + k[3] * g3,
                g0 - k[0] * g1 + k[1] * g2 - k[3] * g3, g3)
    return g0, g0 + g1, g0 - g1, g0 + k[0] * g1, g0 - k[0] * g1, g1


@njit(cache=True)
def _copy(source, target):
    # An explicit loop: Numba's slice assignment takes a generic strided path, twice as slow.
    for p in range(target.size):
        target[p] = source[p]


# -- CPU kernels (Numba) ---------------------------------------------------------------------------
# Each works a plane (one image, one channel) at a time, one row of tiles at a time. The plane's
# share of each of the 36 planes (i, j) of V, M or their gradients is one contiguous run of T
# numbers (its tiles), gathered in or scattered from a local (36, T) block.

@cpu.kernel
def _input_transform_cpu_kernel(first, stop, x, v, pad_h, pad_w, m, tiles_h, tiles_w):
    # v[(i, j), c, (b, th, tw)] = (B^T d B)[i, j], d = the 6x6 input tile at rows m*th - pad_h
    # .. +5 and columns m*tw - pad_w .. +5 (0 outside x). One iteration owns the plane x[b, c]:
    # it copies it into a zero-padded scratch plane (so the tile loops need no bounds tests),
    # then per row of tiles combines the 6 input rows by B^T (t = B^T d, whole rows at once)
    # and each tile's 6 columns of t by B.
    batch, channels, height, width = x.shape
    n_tiles = tiles_h * tiles_w
    span = m * tiles_w + ALPHA - m
    for plane in range(first, stop):  # channel-major: see im2col._col2im_cpu_kernel
        c = plane // batch
        b = plane % batch
        k = _constants(x)
        padded = np.zeros((m * tiles_h + ALPHA - m, span), x.dtype)
        for h in range(height):
            _copy(x[b, c, h], padded[pad_h + h, pad_w:pad_w + width])
        t = np.empty((ALPHA, span), x.dtype)
        local = np.empty((ALPHA * ALPHA, n_tiles), x.dtype)
        for th in range(tiles_h):
            d = padded[m * th:m * th + ALPHA]
            for p in range(span):
                t0, t1, t2, t3, t4, t5 = _bt(d[0, p], d[1, p], d[2, p], d[3, p], d[4, p], d[5, p], k)
                t[0, p], t[1, p], t[2, p], t[3, p], t[4, p], t[5, p] = t0, t1, t2, t3, t4, t5
            for i in range(ALPHA):
                row = t[i]
                for tw in range(tiles_w):
                    s = m * tw
                    v0, v1, v2, v3, v4, v5 = _bt(row[s], row[s + 1], row[s + 2], row[s + 3],
                                                 row[s + 4], row[s + 5], k)
                    at = th * tiles_w + tw
                    local[6 * i, at], local[6 * i + 1, at], local[6 * i + 2, at] = v0, v1, v2
                    local[6 * i + 3, at], local[6 * i + 4, at], local[6 * i + 5, at] = v3, v4, v5
        for f in range(ALPHA * ALPHA):
            _copy(local[f], v[f, c, b * n_tiles:(b + 1) * n_tiles])


@cpu.kernel
def _output_transform_cpu_kernel(first, stop, mm, bias, has_bias, relu, y, m, tiles_h, tiles_w):
    # y[b, o, m*th + a, m*tw + q] = (A^T e A)[a, q] + bias[o] (then max(., 0) if relu), with
    # e[i, j] = mm[(i, j), o, (b, th, tw)]; outputs past OH or OW are dropped. One iteration
    # owns the plane y[b, o]: it reads the plane's 36 runs of mm into a local block, then per
    # row of tiles combines them (s = A^T e, then s A) into an m-row strip copied into y.
    batch, out_channels, out_h, out_w = y.shape
    n_tiles = tiles_h * tiles_w
    zero = y.dtype.type(0)
    for plane in range(first, stop):  # channel-major: see im2col._col2im_cpu_kernel
        o = plane // batch
        b = plane % batch
        k = _constants(y)
        local = np.empty((ALPHA * ALPHA, n_tiles), y.dtype)
        for f in range(ALPHA * ALPHA):
            _copy(mm[f, o, b * n_tiles:(b + 1) * n_tiles], local[f])
        s = np.empty((4, ALPHA, tiles_w), y.dtype)
        strip = np.empty((4, m * tiles_w), y.dtype)
        offset = bias[o] if has_bias else zero
        for th in range(tiles_h):
            for j in range(ALPHA):
                for tw in range(tiles_w):
                    at = th * tiles_w + tw
                    s0, s1, s2, s3 = _at(local[j, at], local[6 + j, at], local[12 + j, at],
                                         local[18 + j, at], local[24 + j, at], local[30 + j, at],
                                         m, k)
                    s[0, j, tw], s[1, j, tw], s[2, j, tw], s[3, j, tw] = s0, s1, s2, s3
            for a in range(m):
                h = m * th + a
                if h >= out_h:
                    break
                out = strip[a]
                for tw in range(tiles_w):
                    y0, y1, y2, y3 = _at(s[a, 0, tw], s[a, 1, tw], s[a, 2, tw], s[a, 3, tw],
                                         s[a, 4, tw], s[a, 5, tw], m, k)
                    out[m * tw] = y0
                    out[m * tw + 1] = y1
                    if m == 4:
                        out[m * tw + 2] = y2
                        out[m * tw + 3] = y3
                target = y[b, o, h]
                for w in range(out_w):
                    value = out[w] + offset
                    target[w] = zero if relu and value < zero else value


@cpu.kernel
def _output_adjoint_cpu_kernel(first, stop, grad, y, relu, dm, m, tiles_h, tiles_w):
    # dm[(i, j), o, (b, th, tw)] = (A g A^T)[i, j], g = grad's m x m block at (m*th, m*tw) (0
    # past OH or OW; times y > 0 if the ReLU was fused). One iteration owns the plane
    # grad[b, o]: per row of tiles it reads the m gradient rows into a zero-padded strip,
    # combines them by A (whole rows at once), then each tile's m columns by A, into a local
    # block of the plane's 36 runs of dm, which are written out at the end.
    batch, out_channels, out_h, out_w = grad.shape
    n_tiles = tiles_h * tiles_w
    one, zero = grad.dtype.type(1), grad.dtype.type(0)
    for plane in range(first, stop):  # channel-major: see im2col._col2im_cpu_kernel
        o = plane // batch
        b = plane % batch
        k = _constants(grad)
        strip = np.zeros((4, m * tiles_w + 4), grad.dtype)
        r = np.empty((ALPHA, m * tiles_w + 4), grad.dtype)
        local = np.empty((ALPHA * ALPHA, n_tiles), grad.dtype)
        for th in range(tiles_h):
            for a in range(m):
                h = m * th + a
                if h >= out_h:
                    for w in range(m * tiles_w):
                        strip[a, w] = zero
                    continue
                source, active = grad[b, o, h], y[b, o, h]
                for w in range(out_w):
                    strip[a, w] = source[w] * (one if not relu or active[w] > zero else zero)
            for p in range(m * tiles_w):  # r = A g, whole rows at once
                r0, r1, r2, r3, r4, r5 = _a(strip[0, p], strip[1, p], strip[2, p], strip[3, p], m, k)
                r[0, p], r[1, p], r[2, p], r[3, p], r[4, p], r[5, p] = r0, r1, r2, r3, r4, r5
            for i in range(ALPHA):  # dm row i = A applied to each tile's block of r[i]
                row = r[i]
                for tw in range(tiles_w):
                    s = m * tw
                    e0, e1, e2, e3, e4, e5 = _a(row[s], row[s + 1], row[s + 2], row[s + 3], m, k)
                    at = th * tiles_w + tw
                    local[6 * i, at], local[6 * i + 1, at], local[6 * i + 2, at] = e0, e1, e2
                    local[6 * i + 3, at], local[6 * i + 4, at], local[6 * i + 5, at] = e3, e4, e5
        for f in range(ALPHA * ALPHA):
            _copy(local[f], dm[f, o, b * n_tiles:(b + 1) * n_tiles])


@cpu.kernel
def _input_adjoint_cpu_kernel(first, stop, dv, dx, pad_h, pad_w, m, tiles_h, tiles_w):
    # dx[b, c] = the interior of the sum, over tiles (th, tw), of B e B^T placed at rows
    # m*th - pad_h .. +5 and columns m*tw - pad_w .. +5, with e[i, j] = dv[(i, j), c, (b, th, tw)].
    # One iteration owns the plane dx[b, c] and is its only writer (no races). Neighbouring
    # tiles overlap, so it accumulates into a zero-padded scratch plane: per tile it combines
    # the 36 entries by B (columns, then rows) and adds the 6x6 result in place, tiles in scan
    # order. (The CUDA kernel gathers per pixel instead; the sums agree up to rounding order.)
    batch, channels, height, width = dx.shape
    n_tiles = tiles_h * tiles_w
    for plane in range(first, stop):  # channel-major: see im2col._col2im_cpu_kernel
        c = plane // batch
        b = plane % batch
        k = _constants(dx)
        local = np.empty((ALPHA * ALPHA, n_tiles), dx.dtype)
        for f in range(ALPHA * ALPHA):
            _copy(dv[f, c, b * n_tiles:(b + 1) * n_tiles], local[f])
        padded = np.zeros((m * tiles_h + ALPHA - m, m * tiles_w + ALPHA - m), dx.dtype)
        q = np.empty((ALPHA, ALPHA), dx.dtype)
        for th in range(tiles_h):
            for tw in range(tiles_w):
                at = th * tiles_w + tw
                for j in range(ALPHA):  # q[:, j] = B e[:, j]
                    q0, q1, q2, q3, q4, q5 = _b(local[j, at], local[6 + j, at], local[12 + j, at],
                                                local[18 + j, at], local[24 + j, at],
                                                local[30 + j, at], k)
                    q[0, j], q[1, j], q[2, j], q[3, j], q[4, j], q[5, j] = q0, q1, q2, q3, q4, q5
                for i in range(ALPHA):  # row i of the tile: q[i] B^T, added in place
                    d0, d1, d2, d3, d4, d5 = _b(q[i, 0], q[i, 1], q[i, 2], q[i, 3], q[i, 4],
                                                q[i, 5], k)
                    target = padded[m * th + i]
                    s = m * tw
                    target[s] += d0
                    target[s + 1] += d1
                    target[s + 2] += d2
                    target[s + 3] += d3
                    target[s + 4] += d4
                    target[s + 5] += d5
        for h in range(height):
            _copy(padded[pad_h + h, pad_w:pad_w + width], dx[b, c, h])


# -- the steps, one set per device, same signatures -----------------------------------------------

class _Tiling:
    """Sizes of one Winograd convolution: the conv geometry plus its tiles of m x m outputs."""

    def __init__(self, x_shape, w_shape, padding, groups):
        self.geo = Geometry(x_shape, w_shape, (1, 1), padding, groups)
        self.m, self.a_t, self.g, self.g_kron = VARIANTS[self.geo.kernel_h]
        self.tiles_h = -(-self.geo.out_h // self.m)
        self.tiles_w = -(-self.geo.out_w // self.m)
        self.tiles = self.tiles_h * self.tiles_w  # per image

    def g_kron_on(self, xp):
        """kron(G, G) as an array of ``xp``, on its device."""
        return workspace.constant(xp, f"winograd_g_kron_{self.geo.kernel_h}", self.g_kron)

    def bytes_per_image(self, itemsize):
        """Workspace bytes per image: its V or its M, whichever is larger (chunks small
        enough to stay in the last-level cache measured slower, so they are not sought)."""
        return ALPHA * ALPHA * max(self.geo.channels, self.geo.out_channels) * self.tiles * itemsize


def _input_transform_cpu(x, v, tiling):
    _input_transform_cpu_kernel(x.shape[0] * x.shape[1], x, v, tiling.geo.pad_h, tiling.geo.pad_w,
                                tiling.m, tiling.tiles_h, tiling.tiles_w)


def _output_transform_cpu(mm, bias, relu, y, tiling):
    has_bias = bias is not None
    _output_transform_cpu_kernel(y.shape[0] * y.shape[1], mm,
                                 bias if has_bias else np.empty(0, y.dtype), has_bias, relu, y,
                                 tiling.m, tiling.tiles_h, tiling.tiles_w)


def _output_adjoint_cpu(grad, y, relu, dm, tiling):
    _output_adjoint_cpu_kernel(grad.shape[0] * grad.shape[1], grad, grad if y is None else y,
                               relu, dm, tiling.m, tiling.tiles_h, tiling.tiles_w)


def _input_adjoint_cpu(dv, dx, tiling):
    _input_adjoint_cpu_kernel(dx.shape[0] * dx.shape[1], dv, dx, tiling.geo.pad_h,
                              tiling.geo.pad_w, tiling.m, tiling.tiles_h, tiling.tiles_w)


def _input_transform_cuda(x, v, tiling):
    batch, channels, height, width = x.shape
    _kernels("winograd_input_transform", x.dtype)(
        channels * batch * tiling.tiles, x, v, batch, channels, height, width,
        tiling.geo.pad_h, tiling.geo.pad_w, tiling.m, tiling.tiles_h, tiling.tiles_w)


def _output_transform_cuda(mm, bias, relu, y, tiling):
    batch, out_channels, out_h, out_w = y.shape
    _kernels("winograd_output_transform", y.dtype)(
        out_channels * batch * tiling.tiles, mm, y if bias is None else bias, y, batch,
        out_channels, out_h, out_w, tiling.m, tiling.tiles_h, tiling.tiles_w, bias is not None,
        relu)


def _output_adjoint_cuda(grad, y, relu, dm, tiling):
    batch, out_channels, out_h, out_w = grad.shape
    _kernels("winograd_output_adjoint", grad.dtype)(
        out_channels * batch * tiling.tiles, grad, grad if y is None else y, dm, batch,
        out_channels, out_h, out_w, tiling.m, tiling.tiles_h, tiling.tiles_w, relu)


def _input_adjoint_cuda(dv, dx, tiling):
    batch, channels, height, width = dx.shape
    _kernels("winograd_input_adjoint", dx.dtype)(
        dx.size, dv, dx, batch, channels, height, width, tiling.geo.pad_h, tiling.geo.pad_w,
        tiling.m, tiling.tiles_h, tiling.tiles_w)


CPU_STEPS = SimpleNamespace(input_transform=_input_transform_cpu,
                            output_transform=_output_transform_cpu,
                            output_adjoint=_output_adjoint_cpu, input_adjoint=_input_adjoint_cpu,
                            matmul=cpu.matmul_many)
CUDA_STEPS = SimpleNamespace(input_transform=_input_transform_cuda,
                             output_transform=_output_transform_cuda,
                             output_adjoint=_output_adjoint_cuda, input_adjoint=_input_adjoint_cuda,
                             matmul=cuda.matmul_many)


# -- the Function -----------------------------------------------------------------------------------

def supports(weight_shape, stride):
    """Whether Winograd applies: a 3x3 or 5x5 kernel at stride 1 (any padding and groups)."""
    return (len(weight_shape) == 4 and weight_shape[2] == weight_shape[3]
            and weight_shape[2] in VARIANTS and tuple(stride) == (1, 1))


class WinogradConv2dFunction(Function):
    """conv2d for 3x3 and 5x5 kernels at stride 1, same arguments and results as
    Im2colConv2dFunction."""

    def forward(self, x, weight, bias, stride, padding, groups, relu=False):
        check_inputs(x, weight, bias, stride, padding, groups)
        if not supports(weight.shape, stride):
            raise ValueError(f"{OP}: algorithm='winograd' needs a 3x3 or 5x5 kernel at stride 1 "
                             f"(or a square k x k one at stride s with ceil(k / s) = 3 or 5), "
                             f"got kernel {tuple(weight.shape[2:])} and stride {tuple(stride)}; "
                             f"use algorithm='im2col' (or 'auto')")
        xp = backend.array_module(x)
        x = xp.ascontiguousarray(x)
        tiling = _Tiling(x.shape, weight.shape, padding, groups)
        geo, n_cols = tiling.geo, tiling.tiles
        steps = backend.pick(x, cpu=CPU_STEPS, cuda=CUDA_STEPS)
        self.tiling, self.steps, self.relu = tiling, steps, relu
        # U (36, O, C_g): the transformed filters, one (O, C_g) matrix per tile entry.
        u = self._filter_transform(xp, weight, tiling)
        y = xp.empty((geo.batch, geo.out_channels, geo.out_h, geo.out_w), dtype=x.dtype)
        # V of the whole batch, kept for dW within the workspace's budget: a flat array holding
        # each chunk's (36, C, chunk*T) block in turn, so every chunk's V is contiguous.
        kept = None
        if is_grad_enabled() and self.needs_input_grad[1]:
            kept = workspace.keep(xp, (ALPHA * ALPHA * geo.channels * geo.batch * n_cols,), x.dtype)
        self.save_for_backward(x, u, kept, y if relu else None)
        for start, b in geo.chunks(tiling.bytes_per_image(x.dtype.itemsize), xp):
            v = self._kept_chunk(kept, start, b) if kept is not None else workspace.buffer(
                xp, "cols", (ALPHA * ALPHA, geo.channels, b * n_cols), x.dtype)
            steps.input_transform(x[start:start + b], v, tiling)
            m = workspace.buffer(xp, "rows_by_pixels", (ALPHA * ALPHA, geo.out_channels, b * n_cols),
                                 x.dtype)
            self._products(xp, u, v, m)
            steps.output_transform(m, bias, relu, y[start:start + b], tiling)
        return y

    def _kept_chunk(self, kept, start, images):
        """The (36, C, images*T) block of the kept V for the chunk starting at image ``start``."""
        per_image = ALPHA * ALPHA * self.tiling.geo.channels * self.tiling.tiles
        return kept[start * per_image:(start + images) * per_image].reshape(
            ALPHA * ALPHA, self.tiling.geo.channels, images * self.tiling.tiles)

    def _filter_transform(self, xp, weight, tiling):
        """U = kron(G, G) @ W, in float64 (G's fractions), then in the weights' dtype."""
        out_channels, channels_per_group, r = weight.shape[0], weight.shape[1], weight.shape[2]
        flat = weight.reshape(out_channels * channels_per_group, r * r).astype(np.float64)
        u = xp.empty((ALPHA * ALPHA, flat.shape[0]), dtype=np.float64)
        self.steps.matmul(tiling.g_kron_on(xp)[None], flat.T[None], u[None])
        return u.astype(weight.dtype).reshape(ALPHA * ALPHA, out_channels, channels_per_group)

    def _products(self, xp, u, v, m):
        """m[f, group g] = u[f, g] @ v[f, g], for the 36 f and every group: stacked products."""
        geo = self.tiling.geo
        n_cols = v.shape[2]
        self.steps.matmul(u.reshape(-1, geo.out_per_group, geo.channels_per_group),
                          v.reshape(-1, geo.channels_per_group, n_cols),
                          m.reshape(-1, geo.out_per_group, n_cols))

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
        grad_ut = xp.zeros((ALPHA * ALPHA, geo.groups, cg, og), dtype=x.dtype) if need_w else None
        grad_b = xp.zeros(geo.out_channels, dtype=x.dtype) if need_b else None

        for start, b in geo.chunks(tiling.bytes_per_image(x.dtype.itemsize), xp):
            dm = workspace.buffer(xp, "rows_by_pixels", (ALPHA * ALPHA, geo.out_channels, b * n_cols),
                                  x.dtype)
            steps.output_adjoint(grad_output[start:start + b],
                                 None if y is None else y[start:start + b], self.relu, dm, tiling)
            if need_b:
                # The tiles cover the output once (zeros past its edge), and the entry (1, 1)
                # of A g A^T is the sum of the block's values (row 1 of A is all ones): its
                # row sums are the bias gradient.
                grad_b += dm[ALPHA + 1].sum(axis=1)
            if not (need_x or need_w):
                continue
            v, dv = self._transformed_input(x, kept, start, b, need_w)
            # Each product stacked over the 36 entries and the groups: (36 * G, rows, B*T). dU
            # first, since dV may overwrite V (they share the workspace).
            dm3 = dm.reshape(-1, og, b * n_cols)
            if need_w:
                v3 = v.reshape(-1, cg, b * n_cols)
                if start == 0:
                    steps.matmul(v3, dm3.transpose(0, 2, 1), grad_ut.reshape(-1, cg, og))
                else:
                    partial = workspace.buffer(xp, "partial_dw", grad_ut.shape, x.dtype)
                    steps.matmul(v3, dm3.transpose(0, 2, 1), partial.reshape(-1, cg, og))
                    grad_ut += partial
            if need_x:
                steps.matmul(u.reshape(-1, og, cg).transpose(0, 2, 1), dm3,
                             dv.reshape(-1, cg, b * n_cols))
                steps.input_adjoint(dv, grad_x[start:start + b], tiling)

        grad_w = None
        if need_w:
            # dW (O*C_g, r^2) = dU^T (O*C_g, 36) @ kron(G, G), the adjoint of the filter transform.
            r = geo.kernel_h
            grad_u = grad_ut.transpose(0, 1, 3, 2).reshape(ALPHA * ALPHA, geo.out_channels * cg)
            grad_w = xp.empty((geo.out_channels * cg, r * r), dtype=np.float64)
            steps.matmul(grad_u.T.astype(np.float64)[None], tiling.g_kron_on(xp)[None],
                         grad_w[None])
            grad_w = grad_w.astype(x.dtype).reshape(geo.out_channels, cg, r, r)
        return grad_x, grad_w, grad_b, None, None, None, None

    def _transformed_input(self, x, kept, start, images, need_w):
        """(V, dV) for the chunk of ``images`` at ``start``: forward's kept V and a workspace for
        dV (so kept stays intact for a second backward), or V recomputed into the workspace,
        which dV then overwrites group by group."""
        xp, tiling = backend.array_module(x), self.tiling
        shape = (ALPHA * ALPHA, tiling.geo.channels, images * tiling.tiles)
        if kept is not None:
            return self._kept_chunk(kept, start, images), workspace.buffer(xp, "cols", shape, x.dtype)
        v = workspace.buffer(xp, "cols", shape, x.dtype)
        if need_w:
            self.steps.input_transform(x[start:start + images], v, tiling)
        return v, v
