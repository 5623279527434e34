"""Space-to-depth: every s x s block of pixels becomes s*s channels of one pixel -- PyTorch's
``pixel_unshuffle``, with padding and a chosen output size -- and what ``conv.py`` uses to
turn a strided convolution into a stride-1 one.

For x (N, C, H, W), block s, padding (pH, pW) before the input and an output of OH x OW::

    y[n, c*s*s + r*s + q, i, j] = x[n, c, s*i + r - pH, s*j + q - pW]     (0 outside x)

for r, q < s. Every output element copies at most one input element, and every input element
lands in exactly one output element, or in none when the output does not reach it; so the
backward is the same map read the other way, a gather::

    dx[n, c, h, w] = dy[n, c*s*s + ((h + pH) % s)*s + (w + pW) % s, (h + pH) // s, (w + pW) // s]

(0 where that index is past OH or OW). The channel order (c, r, q) is ``pixel_unshuffle``'s.

Why it helps a convolution. Write a tap (u, v) of a kH x kW kernel at stride s as
u = s*a + r, v = s*b + q. Then::

    y[o, i, j] = sum over c, u, v of W[o, c, u, v] x[c, s*i + u - pH, s*j + v - pW]
               = sum over (c, r, q), a, b of W'[o, (c, r, q), a, b] x'[(c, r, q), i + a, j + b]

with x' = space_to_depth(x, s, padding) and W' = space_to_depth(W, s) (the kernel padded with
zero taps to k' = ceil(k / s) blocks): a stride-1 convolution with a k' x k' kernel over s*s
times the channels, the same multiply-adds plus the zero taps. AlexNet's conv1 (11x11,
stride 4, 3 channels) becomes a 3x3 convolution over 48 channels (13 % zero taps), which
Winograd's F(4x4, 3x3) computes with about a quarter of the multiply-adds.

The kernels are copies: on the CPU one loop iteration owns one output plane y[n, c'] in
forward and one input plane dx[n, c] in backward; on the GPU one thread owns one element of
those planes. ``space_to_depth_simple`` is the formula in plain loops.
"""
import numpy as np

from .. import backend, cpu, cuda
from ..tensor import Function, Tensor
from . import checks

_kernels = cuda.KernelFile(__file__)

OP = "space_to_depth"


# -- simple version: the definition in plain loops ------------------------------------------------

def space_to_depth_simple(x, block, padding, output_size):
    """y[n, c*s*s + r*s + q, i, j] = x[n, c, s*i + r - pH, s*j + q - pW], 0 outside x, by loops
    over a NumPy array (N, C, H, W)."""
    n, c, h, w = x.shape
    (ph, pw), (out_h, out_w) = padding, output_size
    y = np.zeros((n, c * block * block, out_h, out_w), dtype=x.dtype)
    for b in range(n):
        for ch in range(c):
            for r in range(block):
                for q in range(block):
                    for i in range(out_h):
                        for j in range(out_w):
                            row, col = block * i + r - ph, block * j + q - pw
                            if 0 <= row < h and 0 <= col < w:
                                y[b, (ch * block + r) * block + q, i, j] = x[b, ch, row, col]
    return y


# -- CPU kernels (Numba) --------------------------------------------------------------------------

@cpu.kernel
def _forward_cpu_kernel(first, stop, x, y, block, pad_h, pad_w):
    # y[n, c*s*s + r*s + q, i, j] = x[n, c, s*i + r - pH, s*j + q - pW], 0 outside x. One loop
    # iteration owns one output plane, numbered n * C' + c'.
    batch, channels, height, width = x.shape
    out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    zero = y.dtype.type(0)
    for plane in range(first, stop):
        n, channel = plane // out_channels, plane % out_channels
        c, r, q = channel // (block * block), (channel // block) % block, channel % block
        target = y[n, channel]
        for i in range(out_h):
            row = block * i + r - pad_h
            if row < 0 or row >= height:
                for j in range(out_w):
                    target[i, j] = zero
                continue
            source = x[n, c, row]
            for j in range(out_w):
                col = block * j + q - pad_w
                target[i, j] = source[col] if 0 <= col < width else zero


@cpu.kernel
def _backward_cpu_kernel(first, stop, dy, dx, block, pad_h, pad_w):
    # dx[n, c, h, w] = dy[n, c*s*s + ((h+pH) % s)*s + (w+pW) % s, (h+pH) // s, (w+pW) // s],
    # 0 past the output's edge. One loop iteration owns one input plane, numbered n * C + c.
    batch, channels, height, width = dx.shape
    out_h, out_w = dy.shape[2], dy.shape[3]
    zero = dx.dtype.type(0)
    for plane in range(first, stop):
        n, c = plane // channels, plane % channels
        target = dx[n, c]
        for h in range(height):
            i, r = (h + pad_h) // block, (h + pad_h) % block
            for w in range(width):
                j, q = (w + pad_w) // block, (w + pad_w) % block
                if i < out_h and j < out_w:
                    target[h, w] = dy[n, (c * block + r) * block + q, i, j]
                else:
                    target[h, w] = zero


# -- drivers: one per device, same signature ------------------------------------------------------

def _forward_cpu(x, block, padding, output_size):
    n, c = x.shape[:2]
    y = np.empty((n, c * block * block) + tuple(output_size), dtype=x.dtype)
    _forward_cpu_kernel(y.shape[0] * y.shape[1], x, y, block, *padding)
    return y


def _backward_cpu(dy, x_shape, block, padding):
    dx = np.empty(x_shape, dtype=dy.dtype)
    _backward_cpu_kernel(x_shape[0] * x_shape[1], dy, dx, block, *padding)
    return dx


def _forward_cuda(x, block, padding, output_size):
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    y = xp.empty((n, c * block * block) + tuple(output_size), dtype=x.dtype)
    _kernels("space_to_depth_forward", x.dtype)(y.size, x, y, c, h, w, block, *padding,
                                                *output_size)
    return y


def _backward_cuda(dy, x_shape, block, padding):
    xp = backend.array_module(dy)
    n, c, h, w = x_shape
    dx = xp.empty(x_shape, dtype=dy.dtype)
    _kernels("space_to_depth_backward", dy.dtype)(dx.size, dy, dx, c, h, w, block, *padding,
                                                  dy.shape[2], dy.shape[3])
    return dx


# -- the Function ---------------------------------------------------------------------------------

class SpaceToDepthFunction(Function):
    def forward(self, x, block, padding, output_size):
        xp = backend.array_module(x)
        x = xp.ascontiguousarray(x)
        self.x_shape, self.block, self.padding = tuple(x.shape), block, padding
        forward = backend.pick(x, cpu=_forward_cpu, cuda=_forward_cuda)
        return forward(x, block, padding, output_size)

    def backward(self, dy):
        xp = backend.array_module(dy)
        backward = backend.pick(dy, cpu=_backward_cpu, cuda=_backward_cuda)
        return (backward(xp.ascontiguousarray(dy), self.x_shape, self.block, self.padding),
                None, None, None)


def space_to_depth(x, block, padding=0, output_size=None):
    """Each ``block`` x ``block`` square of pixels of ``x`` (N, C, H, W) as ``block**2``
    channels: ``y[n, c*s*s + r*s + q, i, j] = x[n, c, s*i + r - pH, s*j + q - pW]`` (zeros
    outside x). ``padding`` (an int or an (h, w) pair) shifts the blocks by that many pixels of
    zeros before the input; ``output_size`` (OH, OW) defaults to the blocks that cover the input
    and the same padding after it, ``ceil((H + 2*pH) / s)``; a smaller one drops the last rows
    and columns. Differentiable in x."""
    data = x.data if isinstance(x, Tensor) else x
    checks.float_array(OP, "input", data, ndim=4, layout="N, C, H, W")
    block = checks.integer(OP, "block", block, 1)
    padding = checks.int_pair(OP, "padding", padding, 0)
    if output_size is None:
        output_size = tuple(-(-(size + 2 * pad) // block)
                            for size, pad in zip(data.shape[2:], padding))
    output_size = checks.int_pair(OP, "output_size", output_size, 0)
    return SpaceToDepthFunction.apply(x, block, padding, output_size)


def pixel_unshuffle(x, downscale_factor):
    """``torch.nn.functional.pixel_unshuffle``: (N, C, H, W) -> (N, C*r*r, H/r, W/r), H and W
    multiples of r = ``downscale_factor``."""
    data = x.data if isinstance(x, Tensor) else x
    checks.float_array("pixel_unshuffle", "input", data, ndim=4, layout="N, C, H, W")
    factor = checks.integer("pixel_unshuffle", "downscale_factor", downscale_factor, 1)
    if data.shape[2] % factor or data.shape[3] % factor:
        raise ValueError(f"pixel_unshuffle: height and width must be multiples of "
                         f"downscale_factor={factor}, got input shape {tuple(data.shape)}")
    return space_to_depth(x, factor, 0, (data.shape[2] // factor, data.shape[3] // factor))
