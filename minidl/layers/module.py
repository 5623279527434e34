"""``Module``, the base of every layer and model, plus ``Parameter`` and ``Sequential``.

As in PyTorch: assigning a ``Parameter`` or a ``Module`` to an attribute registers it, so
``parameters()``, ``state_dict()``, ``to()`` and ``train()``/``eval()`` find everything.
"""
from collections import OrderedDict

import numpy as np

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A tensor that is a learnable weight of a module (requires grad by default)."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)

    # -- walking the tree -----------------------------------------------------------
    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix=""):
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # -- modes and devices ----------------------------------------------------------------
    def train(self, mode=True):
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, device):
        """Move every parameter to ``device`` in place; returns the module."""
        device = backend.normalize_device(device)
        for p in self.parameters():
            p.data = backend.to_device(p.data, device)
            if p.grad is not None:
                p.grad.data = backend.to_device(p.grad.data, device)
        return self

    @property
    def device(self):
        params = self.parameters()
        return params[0].device if params else "cpu"

    # -- saving ---------------------------------------------------------------------------
    def state_dict(self):
        """Parameter name -> a NumPy copy of its values (device-independent)."""
        return OrderedDict((name, backend.to_numpy(p.data).copy())
                           for name, p in self.named_parameters())

    def load_state_dict(self, state, strict=True):
        """Copy values from ``state`` into the parameters, checking names and shapes first."""
        params = dict(self.named_parameters())
        missing = [n for n in params if n not in state]
        unexpected = [n for n in state if n not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing {missing}, "
                           f"unexpected {unexpected}")
        for name, value in state.items():
            if name not in params:
                continue
            value = np.asarray(backend.to_numpy(value))
            if value.shape != params[name].shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {name} has shape "
                                 f"{value.shape} in the state, {params[name].shape} in the model")
        for name, value in state.items():
            if name in params:
                p = params[name]
                xp = backend.array_module(p.data)
                p.data = xp.asarray(backend.to_numpy(value), dtype=p.dtype).copy()

    # -- printing -------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if not self._modules:
            return lines[0] + ")"
        for name, child in self._modules.items():
            child_text = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_text}")
        return "\n".join(lines) + "\n)"


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
            if i + 1 < len(modules) and _conv_then_relu(modules[i], modules[i + 1]):
                x = modules[i](x, relu=True)  # the ReLU applied by the convolution itself
                i += 2
            else:
                x = modules[i](x)
                i += 1
        return x

    def __getitem__(self, index):
        if isinstance(index, str):
            return self._modules[index]
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


def _conv_then_relu(module, following):
    """Whether ``module`` is a Conv2d directly followed by a ReLU, neither of them hooked by
    ``models.capture`` (which replaces a layer's ``forward`` to record its output).

    Sequential then runs the pair as one ``conv2d(..., relu=True)``: the convolution applies
    max(., 0) while it writes its output and the ReLU's mask while it reads the gradient,
    which saves the ReLU's own pass over the activations each way (~7 % of a EuroNet step)
    and gives the same values and gradients as the two layers run one after the other.
    """
    from .activation import ReLU
    from .conv import Conv2d

    return (type(module) is Conv2d and type(following) is ReLU
            and "forward" not in module.__dict__ and "forward" not in following.__dict__)
