"""``Module``, the base of every layer and model, and ``Parameter``.

As in PyTorch: assigning a ``Parameter`` or a ``Module`` to an attribute registers it, so
``parameters()``, ``state_dict()``, ``to()`` and ``train()``/``eval()`` find everything.
``register_buffer`` registers a tensor that is state but not trained (BatchNorm's running
statistics): it moves and converts with the module and is saved in ``state_dict()``, but is
not among ``parameters()``, so no optimiser touches it. ``load_state_dict`` takes NumPy
arrays, CuPy arrays, Tensors, or -- where PyTorch is installed -- torch tensors or the path of
a ``.pth`` file, and a model may map foreign names onto its own (``state_dict_aliases``).
Calling a module runs its ``forward`` and then its forward hooks
(``register_forward_hook``), each of which may replace the output: that is how
``models.capture`` records a layer's output without touching the layer.
"""
import contextlib
import os
from collections import OrderedDict

import numpy as np

from .. import backend
from ..ops import checks
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
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_forward_hooks", OrderedDict())

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            value = _buffer_tensor(type(self).__name__, name, value)  # a buffer stays a buffer
            self._buffers[name] = value
            object.__setattr__(self, name, value)
            return
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, tensor, persistent=True):
        """Register ``tensor`` (an array, a Tensor, or None) as state that is not trained, as
        ``torch.nn.Module.register_buffer``: ``self.<name>`` is a Tensor without gradient that
        ``to()``/``double()`` move and convert and -- if ``persistent`` -- ``state_dict()``
        saves and ``load_state_dict`` restores."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{type(self).__name__}.register_buffer: name must be a non-empty "
                             f"string without '.', got {name!r}")
        if name in self._parameters or name in self._modules:
            raise KeyError(f"{type(self).__name__}.register_buffer: {name!r} is already a "
                           "parameter or a sub-module")
        self._buffers[name] = None
        (self._non_persistent.discard if persistent else self._non_persistent.add)(name)
        setattr(self, name, tensor)

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

    def _named_members(self, members, prefix, recurse):
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_name, module in modules:
            for name, value in getattr(module, members).items():
                if value is not None and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{module_name}.{name}" if module_name else name), value

    def named_parameters(self, prefix="", recurse=True):
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        """The parameters as a list (with ``recurse=False``, this module's own only)."""
        return [p for _, p in self.named_parameters(recurse=recurse)]

    def named_buffers(self, prefix="", recurse=True):
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        return [b for _, b in self.named_buffers(recurse=recurse)]

    def apply(self, fn):
        """Call ``fn(module)`` on every sub-module, children first, then on this one (as
        PyTorch's ``Module.apply``, e.g. to initialise weights); returns the module."""
        for child in self._modules.values():
            child.apply(fn)
        fn(self)
        return self

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` on every parameter (False freezes them); returns the module."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

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

    def zero_grad(self, set_to_none=True):
        """Forget the parameters' gradients (``set_to_none=False`` fills them with zeros)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.data = backend.array_module(p.grad.data).zeros_like(p.grad.data)

    def to(self, *args, device=None, dtype=None):
        """Move every parameter and buffer to ``device`` ("cpu", "cuda") and/or convert the
        floating ones to ``dtype`` (float32, float64), in place, as ``torch.nn.Module.to``:
        ``model.to("cuda")``, ``model.to(np.float64)``, ``model.to("cuda", np.float32)``.
        Returns the module."""
        for arg in args:
            if _is_dtype(arg):
                dtype = arg
            else:
                device = arg
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype not in checks.FLOATS:
                raise TypeError(f"{type(self).__name__}.to: dtype must be float32 or float64, "
                                f"got {dtype}")
        device = None if device is None else backend.normalize_device(device)
        for tensor in self.parameters() + self.buffers():
            for t in (tensor, tensor.grad):
                if t is None:
                    continue
                if device is not None:
                    t.data = backend.to_device(t.data, device)
                if dtype is not None and t.data.dtype.kind == "f":
                    t.data = t.data.astype(dtype, copy=False)
        return self

    def double(self):
        """Convert floating parameters and buffers to float64 (for gradchecks); returns self."""
        return self.to(dtype=np.float64)

    def float(self):
        """Convert floating parameters and buffers to float32; returns self."""
        return self.to(dtype=np.float32)

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
    def _state_tensors(self):
        """Name -> Tensor of everything ``state_dict`` saves, in PyTorch's order (each module's
        parameters, then its persistent buffers, then its children)."""
        found = OrderedDict()
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, p in module._parameters.items():
                found.setdefault(prefix + name, p)
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent:
                    found.setdefault(prefix + name, b)
        return found

    def state_dict(self):
        """Name -> a NumPy copy of every parameter and persistent buffer (device-independent)."""
        return OrderedDict((name, backend.to_numpy(t.data).copy())
                           for name, t in self._state_tensors().items())

    def state_dict_aliases(self):
        """Foreign name -> own name, for states saved by another layout of the same model
        (torchvision's ``features.0.weight`` for AlexNet's ``conv1.weight``). None here."""
        return {}

    def load_state_dict(self, state, strict=True):
        """Copy values from ``state`` into the parameters and buffers, checking names and shapes
        first. ``state``: a mapping of name -> NumPy/CuPy array, Tensor or (with PyTorch
        installed) torch tensor; or the path of a file saved by ``torch.save``. Names listed
        by ``state_dict_aliases()`` are mapped onto this model's own."""
        owner = f"{type(self).__name__}.load_state_dict"
        if isinstance(state, (str, os.PathLike)):
            state = _torch_load(owner, state)
        aliases = self.state_dict_aliases()
        state = OrderedDict((aliases.get(name, name), _as_numpy(value))
                            for name, value in state.items())
        own = self._state_tensors()
        for name, value in state.items():  # a 0-d buffer may come back from a file as (1,)
            if name in own and own[name].shape == () and value.shape == (1,):
                state[name] = value.reshape(())
        missing = [n for n in own if n not in state]
        unexpected = [n for n in state if n not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"{owner}: missing {missing}, unexpected {unexpected}")
        for name, value in state.items():
            if name in own and value.shape != own[name].shape:
                raise ValueError(f"{owner}: {name} has shape {value.shape} in the state, "
                                 f"{own[name].shape} in the model")
        for name, value in state.items():
            if name in own:
                t = own[name]
                xp = backend.array_module(t.data)
                t.data = xp.asarray(value, dtype=t.dtype).copy()
        return self

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


def _is_dtype(value):
    """Whether an argument of ``Module.to`` names a dtype rather than a device."""
    if isinstance(value, str):
        return value not in ("cpu", "gpu") and not value.startswith("cuda")
    return isinstance(value, (type, np.dtype))


def _buffer_tensor(owner, name, value):
    """A buffer's value as a Tensor without gradient (None stays None)."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value if not value.requires_grad else value.detach()
    if not (backend.is_cupy_array(value) or isinstance(value, (np.ndarray, np.generic, int, float))):
        raise TypeError(f"{owner}: buffer {name!r} must be an array or a Tensor, "
                        f"got {type(value).__name__}")
    return Tensor(backend.array_module(value).asarray(value))


def _as_numpy(value):
    """A state value -- NumPy or CuPy array, Tensor, torch tensor -- as a NumPy array."""
    if isinstance(value, Tensor):
        value = value.data
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(backend.to_numpy(value))


def _torch_load(owner, path):
    """The state dict in a file written by ``torch.save`` (tensors only: weights_only)."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"{owner}: reading {os.fspath(path)!r} (a torch.save file) needs "
                          "PyTorch; or pass a dict of NumPy arrays") from None
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"{owner}: {os.fspath(path)!r} holds a {type(state).__name__}, not a "
                        "state dict")
    return state
