from .. import ops
from .module import Module


class Dropout(Module):
    """Zeroes each element with probability p while training and scales the survivors by
    1 / (1 - p) ("inverted" dropout), so evaluation is the identity."""

    def __init__(self, p=0.5, generator=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p, self.generator = p, generator

    def forward(self, x):
        return ops.dropout(x, self.p, training=self.training, generator=self.generator)

    def extra_repr(self):
        return f"p={self.p}"
