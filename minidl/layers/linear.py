import math

import numpy as np

from .. import ops, random
from ..ops._checks import positive_ints
from .module import Module, Parameter


class Linear(Module):
    """y = x W^T + b, as ``torch.nn.Linear``; W has shape (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        positive_ints("Linear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        rng = random.default_generator()
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype)) if bias else None

    def forward(self, x):
        return ops.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}" + (
            ", bias=False" if self.bias is None else "")


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W): keeps the first ``start_dim`` dims, merges the rest."""

    def __init__(self, start_dim=1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        return ops.flatten(x, self.start_dim)
