"""2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``): the definition, and
the choice between the two algorithms that compute it.

For input x (N, C, H, W), weight W (O, C/groups, kH, kW), bias b (O,), stride (sH, sW),
padding (pH, pW), dilation (dH, dW) and groups G, output channel o of group g = o // (O/G)
sees input channels [g*C/G, (g+1)*C/G) only:

    y[n, o, oh, ow] = b[o] + sum over c < C/G, ki < kH, kj < kW of
                      W[o, c, ki, kj] * x[n, g*C/G + c, oh*sH + ki*dH - pH, ow*sW + kj*dW - pW]

with x = 0 in the padding, OH = (H + 2*pH - dH*(kH - 1) - 1) // sH + 1 and likewise OW.
``padding="valid"`` is 0; ``padding="same"`` (stride 1 only) pads dH*(kH - 1) in all, half
before and the rest -- one more when it is odd -- after, so OH = H, as PyTorch does. An
unbatched (C, H, W) input is a batch of one. ``conv2d_simple`` below computes exactly that,
one output element at a time. The fast ones:

* ``im2col.py``: any geometry, dilation and uneven "same" padding included. Patches become the
  columns of a matrix, and the convolution of a group one matrix product (GEMM).
* ``winograd.py``: 3x3 kernels at stride 1 (AlexNet's conv3-5, all of EuroNet's), by
  Winograd's F(4x4, 3x3), and 5x5 ones (AlexNet's conv2) by F(2x2, 5x5): 4x and 2.8x fewer
  multiply-adds, results equal up to float rounding (a few 1e-6 of the output's scale).
* a square kernel k at stride s > 1 whose ceil(k / s) is 3 or 5 (AlexNet's conv1: 11x11 at
  stride 4) becomes a stride-1 convolution with a ceil(k / s)-sized kernel over s*s times the
  channels (``space_to_depth.py`` rearranges the input and the weights; its docstring shows
  why that is the same sum), which Winograd then computes.

``conv2d(..., algorithm="auto")`` takes Winograd wherever it applies (no dilation, even
padding), directly or after space-to-depth, and im2col elsewhere.
"""
import numpy as np

from ..tensor import Tensor
from . import checks, im2col, winograd
from .conv_geometry import OP, check_inputs
from .space_to_depth import space_to_depth

ALGORITHMS = ("auto", "im2col", "winograd")


# -- simple version: the definition in plain loops ------------------------------------------------

def conv2d_simple(x, weight, bias=None, stride=1, padding=0, groups=1, dilation=1):
    """Cross-correlation by the definition, one output element at a time, in float64.
    ``padding`` is an int, a pair, "valid" or "same"."""
    sh, sw = checks.int_pair(OP, "stride", stride, 1)
    dh, dw = checks.int_pair(OP, "dilation", dilation, 1)
    n, c, h, wd = x.shape
    o, cg, kh, kw = weight.shape
    (ph, pw), (eh, ew) = _padding(padding, (kh, kw), (dh, dw), (sh, sw))
    og = o // groups
    padded = np.zeros((n, c, h + ph + eh, wd + pw + ew), dtype=np.float64)
    padded[:, :, ph:ph + h, pw:pw + wd] = x
    out_h = (h + ph + eh - dh * (kh - 1) - 1) // sh + 1
    out_w = (wd + pw + ew - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, o, out_h, out_w), dtype=np.float64)
    for i in range(n):
        for j in range(o):
            g = j // og
            for r in range(out_h):
                for s in range(out_w):
                    total = 0.0 if bias is None else float(bias[j])
                    for ci in range(cg):
                        for u in range(kh):
                            for v in range(kw):
                                total += (padded[i, g * cg + ci, r * sh + u * dh, s * sw + v * dw]
                                          * weight[j, ci, u, v])
                    y[i, j, r, s] = total
    return y


# -- the public function: options, then the algorithm ---------------------------------------------

def _padding(padding, kernel, dilation, stride):
    """(before, after) padding pairs for an int, a pair, "valid" or "same"."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding != "same":
            raise ValueError(f"{OP}: padding must be an int, a pair of ints, 'valid' or 'same', "
                             f"got {padding!r}")
        if tuple(stride) != (1, 1):
            raise ValueError(f"{OP}: padding='same' needs stride 1 (as in PyTorch), got stride "
                             f"{tuple(stride)}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        before = tuple(t // 2 for t in total)
        return before, tuple(t - b for t, b in zip(total, before))
    pair = checks.int_pair(OP, "padding", padding, 0)
    return pair, pair


def _strided_winograd_kernel(weight_shape, stride):
    """The kernel size ceil(k / s) of a strided convolution after space-to-depth, where
    Winograd computes that: a square kernel and stride, s > 1; else None."""
    if len(weight_shape) != 4 or weight_shape[2] != weight_shape[3] or stride[0] != stride[1]:
        return None
    block = stride[0]
    size = -(-weight_shape[2] // block)
    if block > 1 and winograd.supports(tuple(weight_shape[:2]) + (size, size), (1, 1)):
        return size
    return None


def _space_to_depth_winograd(x, weight, bias, stride, padding, groups, relu):
    """conv2d at stride s as a stride-1 Winograd convolution of the space-to-depth input and
    weights (see space_to_depth.py): x' = s x s blocks of the padded input, OH + k' - 1 of
    them down (so that the stride-1 output is OH), W' = the kernel's blocks, zero-padded."""
    data = lambda a: a.data if isinstance(a, Tensor) else a  # noqa: E731
    check_inputs(data(x), data(weight), None if bias is None else data(bias), stride, padding,
                 groups)  # named with the caller's shapes, not the rearranged ones
    block, size = stride[0], _strided_winograd_kernel(tuple(weight.shape), stride)
    height, width = data(x).shape[2:]
    kernel = weight.shape[2]
    out_h = (height + 2 * padding[0] - kernel) // block + 1
    out_w = (width + 2 * padding[1] - kernel) // block + 1
    x_blocks = space_to_depth(x, block, padding, (out_h + size - 1, out_w + size - 1))
    w_blocks = space_to_depth(weight, block, 0, (size, size))
    return winograd.WinogradConv2dFunction.apply(x_blocks, w_blocks, bias, (1, 1), (0, 0),
                                                 groups, relu)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, relu=False,
           algorithm="auto"):
    """2-D convolution of ``x`` (N, C, H, W) or (C, H, W) with ``weight`` (O, C // groups, kH, kW),
    as ``torch.nn.functional.conv2d`` (same arguments, same order).

    Returns (N, O, OH, OW) with OH = (H + 2*pH - dH*(kH - 1) - 1) // sH + 1 (likewise OW), or
    (O, OH, OW) for an unbatched input; ``bias`` is (O,) or None; ``stride``, ``padding`` and
    ``dilation`` are an int or an (h, w) pair, and ``padding`` may also be "valid" (none) or
    "same" (the output keeps the input's size; stride 1 only). ``groups`` splits the channels:
    output channels [g*O/groups, (g+1)*O/groups) see only input channels
    [g*C/groups, (g+1)*C/groups).

    ``relu=True`` returns ``relu(conv2d(...))`` with the ReLU fused: it is applied while the
    output is written, and its backward mask while the gradient is read, so it costs no pass
    over memory of its own, and the pre-activation output is never kept for backward.

    ``algorithm`` picks how it is computed: ``"im2col"`` (any geometry), ``"winograd"``
    (F(4x4, 3x3) and F(2x2, 5x5): 3x3 and 5x5 kernels at stride 1, no dilation, 4x and 2.8x
    fewer multiply-adds; and a square kernel k at stride s whose ceil(k / s) is 3 or 5, after
    space-to-depth) or ``"auto"``, which takes Winograd wherever it applies. Both give the
    same results up to float rounding.
    """
    stride = checks.int_pair(OP, "stride", stride, 1)
    dilation = checks.int_pair(OP, "dilation", dilation, 1)
    groups = checks.integer(OP, "groups", groups, 1)
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"{OP}: relu must be True or False, got {relu!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{OP}: algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, "
                         f"got {algorithm!r}")
    shape = tuple(getattr(weight, "shape", ()))
    kernel = shape[2:] if len(shape) == 4 else (1, 1)
    padding, padding_end = _padding(padding, kernel, dilation, stride)
    data = x.data if isinstance(x, Tensor) else x
    if getattr(data, "ndim", None) == 3:  # unbatched (C, H, W): a batch of one
        batch = x.reshape((1,) + tuple(data.shape)) if isinstance(x, Tensor) else data[None]
        y = conv2d(batch, weight, bias, stride, padding if padding == padding_end else "same",
                   dilation, groups, relu=relu, algorithm=algorithm)
        return y.reshape(y.shape[1:])
    even = padding == padding_end and dilation == (1, 1)
    if algorithm == "winograd" and not even:
        raise ValueError(f"{OP}: algorithm='winograd' has no dilation or uneven padding, got "
                         f"dilation {dilation} and padding {padding} + {padding_end}; use "
                         "algorithm='im2col' (or 'auto')")
    if algorithm in ("winograd", "auto") and even and _strided_winograd_kernel(shape, stride):
        return _space_to_depth_winograd(x, weight, bias, stride, padding, groups, bool(relu))
    if algorithm == "winograd" or (algorithm == "auto" and even and len(shape) == 4
                                   and winograd.supports(shape, stride)):
        return winograd.WinogradConv2dFunction.apply(x, weight, bias, stride, padding, groups,
                                                     bool(relu))
    return im2col.Im2colConv2dFunction.apply(x, weight, bias, stride, padding, groups, bool(relu),
                                             dilation, None if even else padding_end)

