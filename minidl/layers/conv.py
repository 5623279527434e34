import math

import numpy as np

from .. import ops, random
from ..ops._checks import pair, positive_ints, non_negative_ints
from .module import Module, Parameter


class Conv2d(Module):
    """2-D convolution over an (N, C, H, W) input, as ``torch.nn.Conv2d``.

    Weights have shape (out_channels, in_channels // groups, kH, kW) and start, as in PyTorch,
    uniform in +-1/sqrt(fan_in); models that need another initialisation (AlexNet) set it.
    ``algorithm`` is passed to ``ops.conv2d``: "auto" (Winograd for 3x3 at stride 1, im2col
    otherwise), "im2col" or "winograd".
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, dtype=np.float32, algorithm="auto"):
        super().__init__()
        if algorithm not in ops.conv.ALGORITHMS:
            raise ValueError(f"Conv2d: algorithm must be one of {ops.conv.ALGORITHMS}, "
                             f"got {algorithm!r}")
        self.algorithm = algorithm
        positive_ints("Conv2d", in_channels=in_channels, out_channels=out_channels, groups=groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding = pair(kernel_size), pair(stride), pair(padding)
        positive_ints("Conv2d", kernel_size=self.kernel_size, stride=self.stride)
        non_negative_ints("Conv2d", padding=self.padding)
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        rng = random.default_generator()
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, out_channels).astype(dtype)) if bias else None

    def forward(self, x, relu=False):
        """The convolution of ``x``; ``relu=True`` returns relu of it, fused (see ops.conv2d)."""
        return ops.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                          groups=self.groups, relu=relu, algorithm=self.algorithm)

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.algorithm != "auto":
            text += f", algorithm={self.algorithm!r}"
        return text
