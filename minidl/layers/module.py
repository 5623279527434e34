"""``Module``, the base of every layer and model, and ``Parameter``.

As in PyTorch: assigning a ``Parameter`` or a ``Module`` to an attribute registers it, so
``parameters()``, ``state_dict()``, ``to()`` and ``train()``/``eval()`` find everything.
Calling a module runs its ``forward`` and then its forward hooks
(``register_forward_hook``), each of which may replace the output: that is how
``models.capture`` records a layer's output without touching the layer.
"""
import contextlib
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
        object.__setattr__(self, "_forward_hooks", OrderedDict())

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
        output = self.forward(*inputs, **kwargs)
        for hook in list(self._forward_hooks.values()):
            replaced = hook(self, inputs, output)
            if replaced is not None:
                output = replaced
        return output

    def register_forward_hook(self, hook):
        """Call ``hook(module, inputs, output)`` after every forward, as in PyTorch.

        A hook that returns something other than None replaces the output: what it returns is
        what the caller (and the rest of the model) sees. Returns a handle whose ``remove()``
        unregisters the hook.
        """
        return _HookHandle(self._forward_hooks, hook)

    @property
    def has_forward_hooks(self):
        return bool(self._forward_hooks)

    # -- walking the tree -------------------------------------------------------------------------
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

    # -- modes and devices ------------------------------------------------------------------------
    def train(self, mode=True):
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def evaluating(self):
        """``with model.evaluating():`` runs the block in eval mode (dropout off), then puts
        every module's own train/eval flag back as it was."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            yield self
        finally:
            for module, flag in modes:
                object.__setattr__(module, "training", flag)

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

    @property
    def dtype(self):
        """The dtype of the first parameter (float32 for a module without parameters): what
        inputs are converted to."""
        params = self.parameters()
        return params[0].dtype if params else np.dtype(np.float32)

    # -- saving -----------------------------------------------------------------------------------
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

    # -- printing ---------------------------------------------------------------------------------
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


class _HookHandle:
    """What ``register_forward_hook`` returns: ``remove()`` takes the hook off again."""

    def __init__(self, hooks, hook):
        self._hooks = hooks
        self._key = object()
        hooks[self._key] = hook

    def remove(self):
        self._hooks.pop(self._key, None)
