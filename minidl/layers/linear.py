import numpy as np

from .. import init, ops
from ..ops import checks
from .module import Module, Parameter


class Linear(Module):
    """y = x W^T + b, as ``torch.nn.Linear``; W has shape (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        checks.integer("Linear", "in_features", in_features, 1)
        checks.integer("Linear", "out_features", out_features, 1)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(np.empty((out_features, in_features), dtype))
        self.bias = Parameter(np.empty(out_features, dtype)) if bias else None
        init.fan_in_uniform_(self.weight, in_features)
        if bias:
            init.fan_in_uniform_(self.bias, in_features)

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
