"""2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``): the definition, and
the choice between the two algorithms that compute it.

For input x (N, C, H, W), weight W (O, C/groups, kH, kW), bias b (O,), stride (sH, sW),
padding (pH, pW) and groups G, output channel o of group g = o // (O/G) sees input channels
[g*C/G, (g+1)*C/G) only:

    y[n, o, oh, ow] = b[o] + sum over c < C/G, ki < kH, kj < kW of
                      W[o, c, ki, kj] * x[n, g*C/G + c, oh*sH + ki - pH, ow*sW + kj - pW]

with x = 0 in the padding, OH = (H + 2*pH - kH) // sH + 1 and likewise OW. ``conv2d_simple``
below computes exactly that, one output element at a time. The fast ones:

* ``im2col.py``: any geometry. Patches become the columns of a matrix, and the convolution of
  a group one matrix product (GEMM).
* ``winograd.py``: 3x3 kernels at stride 1 (AlexNet's conv3-5, all of EuroNet's), by
  Winograd's F(2x2, 3x3): 2.25x fewer multiply-adds, results equal up to float rounding.

``conv2d(..., algorithm="auto")`` takes Winograd wherever it applies, im2col elsewhere.
"""
import numpy as np

from . import checks, im2col, winograd
from .conv_geometry import OP

ALGORITHMS = ("auto", "im2col", "winograd")


# -- simple version: the definition in plain loops ------------------------------------------------

def conv2d_simple(x, weight, bias=None, stride=1, padding=0, groups=1):
    """Cross-correlation by the definition, one output element at a time, in float64."""
    sh, sw = checks.int_pair(OP, "stride", stride, 1)
    ph, pw = checks.int_pair(OP, "padding", padding, 0)
    n, c, h, wd = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    padded = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=np.float64)
    padded[:, :, ph:ph + h, pw:pw + wd] = x
    out_h = (h + 2 * ph - kh) // sh + 1
    out_w = (wd + 2 * pw - kw) // sw + 1
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
                                total += (padded[i, g * cg + ci, r * sh + u, s * sw + v]
                                          * weight[j, ci, u, v])
                    y[i, j, r, s] = total
    return y


# -- the public function: options, then the algorithm ---------------------------------------------

def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1, relu=False, algorithm="auto"):
    """2-D convolution of ``x`` (N, C, H, W) with ``weight`` (O, C // groups, kH, kW).

    Returns (N, O, OH, OW) with OH = (H + 2*pH - kH) // sH + 1 (likewise OW); ``bias`` is
    (O,) or None; ``stride`` and ``padding`` are an int or an (h, w) pair. ``groups`` splits
    the channels: output channels [g*O/groups, (g+1)*O/groups) see only input channels
    [g*C/groups, (g+1)*C/groups). Same semantics as ``torch.nn.functional.conv2d``.

    ``relu=True`` returns ``relu(conv2d(...))`` with the ReLU fused: it is applied while the
    output is written, and its backward mask while the gradient is read, so it costs no pass
    over memory of its own, and the pre-activation output is never kept for backward.

    ``algorithm`` picks how it is computed: ``"im2col"`` (any geometry), ``"winograd"``
    (F(2x2, 3x3): 3x3 kernels at stride 1 only, 2.25x fewer multiply-adds) or ``"auto"``, which
    takes Winograd wherever it applies. Both give the same results up to float rounding.
    """
    stride = checks.int_pair(OP, "stride", stride, 1)
    padding = checks.int_pair(OP, "padding", padding, 0)
    groups = checks.integer(OP, "groups", groups, 1)
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"{OP}: relu must be True or False, got {relu!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{OP}: algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, "
                         f"got {algorithm!r}")
    function = im2col.Im2colConv2dFunction
    shape = getattr(weight, "shape", ())
    if algorithm == "winograd" or (algorithm == "auto" and len(shape) == 4
                                   and winograd.supports(shape, stride)):
        function = winograd.WinogradConv2dFunction
    return function.apply(x, weight, bias, stride, padding, groups, bool(relu))
