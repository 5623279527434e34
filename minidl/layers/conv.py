import numpy as np

from .. import init, ops
from ..ops import checks
from .module import Module, Parameter


class Conv2d(Module):
    """2-D convolution over an (N, C, H, W) or (C, H, W) input, as ``torch.nn.Conv2d`` (same
    arguments in the same order; ``padding`` may be "same" or "valid").

    Weights have shape (out_channels, in_channels // groups, kH, kW) and start, as in PyTorch,
    uniform in +-1/sqrt(fan_in); models that need another initialisation (AlexNet) set it.
    ``algorithm`` is passed to ``ops.conv2d``: "auto" (Winograd for 3x3 at stride 1, im2col
    otherwise), "im2col" or "winograd".
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, dtype=np.float32, algorithm="auto"):
        super().__init__()
        if algorithm not in ops.conv.ALGORITHMS:
            raise ValueError(f"Conv2d: algorithm must be one of {ops.conv.ALGORITHMS}, "
                             f"got {algorithm!r}")
        self.algorithm = algorithm
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("groups", groups)):
            checks.integer("Conv2d", name, value, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = checks.int_pair("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = checks.int_pair("Conv2d", "stride", stride, 1)
        self.dilation = checks.int_pair("Conv2d", "dilation", dilation, 1)
        if padding in ("same", "valid"):
            self.padding = padding
        else:
            self.padding = checks.int_pair("Conv2d", "padding", padding, 0)
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(np.empty(shape, dtype))
        self.bias = Parameter(np.empty(out_channels, dtype)) if bias else None
        fan_in, _ = init.fans(shape)
        init.fan_in_uniform_(self.weight, fan_in)
        if bias:
            init.fan_in_uniform_(self.bias, fan_in)

    def forward(self, x, relu=False):
        """The convolution of ``x``; ``relu=True`` returns relu of it, fused (see ops.conv2d)."""
        return ops.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, groups=self.groups, relu=relu,
                          algorithm=self.algorithm)

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}")
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.algorithm != "auto":
            text += f", algorithm={self.algorithm!r}"
        return text
