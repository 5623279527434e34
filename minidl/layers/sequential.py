"""``Sequential``: modules run one after the other, with Conv2d + ReLU pairs fused.

A ``Conv2d`` directly followed by a ``ReLU`` runs as one ``conv2d(..., relu=True)``: the
convolution applies max(., 0) while it writes its output and the ReLU's mask while it reads
the gradient, which saves the ReLU's own pass over the activations each way and gives the
same values and gradients as the two layers run one after the other. The rule is local and
explicit (``_fusable``): both layers are instances of those classes (subclasses included)
that keep their class's ``forward``, and neither has forward hooks -- a hooked layer (tapped
by ``models.capture`` for feature maps, Grad-CAM or the summary) must show its own output.
"""
from collections import OrderedDict

from .activation import ReLU
from .conv import Conv2d
from .module import Module


class Sequential(Module):
    """Applies its modules in order. Takes modules, or one OrderedDict of name -> module."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, module in items:
            if not isinstance(module, Module):
                raise TypeError(f"Sequential: item {name!r} is a {type(module).__name__}, not a Module")
            setattr(self, name, module)

    def forward(self, x):
        modules = list(self._modules.values())
        i = 0
        while i < len(modules):
            if i + 1 < len(modules) and _fusable(modules[i], modules[i + 1]):
                x = modules[i](x, relu=True)  # the ReLU applied by the convolution itself
                i += 2
            else:
                x = modules[i](x)
                i += 1
        return x

    def __getitem__(self, index):
        """A layer by position or name; a slice is a ``Sequential`` of those layers (shared)."""
        if isinstance(index, str):
            return self._modules[index]
        if isinstance(index, slice):
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


def _fusable(module, following):
    """Whether ``module`` is a Conv2d directly followed by a ReLU that may run as one
    ``conv2d(..., relu=True)`` (see the module docstring)."""
    return (isinstance(module, Conv2d) and type(module).forward is Conv2d.forward
            and isinstance(following, ReLU) and type(following).forward is ReLU.forward
            and not module.has_forward_hooks and not following.has_forward_hooks)
