"""Reverse-mode automatic differentiation: ``Function``, the backward pass and ``no_grad``.

Every differentiable operation is a subclass of ``Function`` with two methods working on raw
arrays (NumPy or CuPy):

* ``forward(self, *inputs, **options)`` computes the output and keeps what backward needs
  with ``self.save_for_backward(...)``;
* ``backward(self, grad_output)`` returns one gradient per positional input (``None`` where
  an input is not a tensor or needs no gradient). It must not write into ``grad_output``:
  the same array may be the gradient of other tensors too.

``Function.apply`` wraps the call: it unwraps tensors, runs ``forward``, and -- unless grad
mode is off -- records the Function as the output's creator. That record is the graph.
``run_backward`` walks it from the loss to the leaves in reverse topological order, with an
explicit stack (no recursion, so a graph of any depth works), summing gradients where a tensor
feeds several Functions and freeing each Function's saved arrays once it has been used.
"""
import contextlib
import threading
import time
from collections import defaultdict

from . import backend

_mode = threading.local()


def is_grad_enabled():
    return getattr(_mode, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Context manager: operations inside record no graph (inference, optimiser updates)."""
    previous = is_grad_enabled()
    _mode.enabled = False
    try:
        yield
    finally:
        _mode.enabled = previous


class Profile:
    """Seconds spent in each Function's forward and backward, keyed by op and input shape.

    Used by ``benchmarks/`` for the per-layer breakdown. ``synchronize`` is called before
    each clock read (pass the GPU's synchronise when timing CUDA work).
    """

    def __init__(self, synchronize=None):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.synchronize = synchronize or (lambda: None)

    def record(self, key, seconds):
        self.seconds[key] += seconds
        self.calls[key] += 1


_profile = None


@contextlib.contextmanager
def profile(synchronize=None):
    """Context manager yielding a ``Profile`` filled by every op run inside it."""
    global _profile
    previous, _profile = _profile, Profile(synchronize)
    try:
        yield _profile
    finally:
        _profile = previous


def _profile_key(function, arrays):
    shape = next((tuple(a.shape) for a in arrays if hasattr(a, "shape")), ())
    return function.name, shape


class Function:
    """Base class of every differentiable operation (see the module docstring)."""

    def __init__(self):
        self.inputs = ()
        self.saved = ()
        self.needs_input_grad = ()
        self.released = False

    # -- to be written by each operation ------------------------------------------------
    def forward(self, *inputs, **options):
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def backward(self, grad_output):
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    # -- machinery ----------------------------------------------------------------------
    def save_for_backward(self, *arrays):
        self.saved = arrays

    def release(self):
        """Drop what forward saved and the links to the inputs: the graph is used up."""
        self.saved = ()
        self.inputs = ()
        self.released = True

    @property
    def name(self):
        return type(self).__name__

    @classmethod
    def apply(cls, *args, **options):
        from .tensor import Tensor

        function = cls()
        tensors = [a for a in args if isinstance(a, Tensor)]
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            raise RuntimeError(f"{function.name}: inputs are on different devices "
                               f"({' and '.join(sorted(devices))}); move them to one with .to()")
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        track = is_grad_enabled() and any(t.requires_grad for t in tensors)
        function.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        if _profile is None:
            output = function.forward(*raw, **options)
        else:
            _profile.synchronize()
            start = time.perf_counter()
            output = function.forward(*raw, **options)
            _profile.synchronize()
            function.profile_key = _profile_key(function, raw)
            _profile.record(function.profile_key + ("forward",), time.perf_counter() - start)
        result = Tensor(output, requires_grad=track)
        if track:
            result.creator = function
            function.inputs = tuple(args)
        else:
            function.saved = ()
        return result


def _topological_order(root):
    """Tensors reachable from ``root``, each after every tensor computed from it."""
    from .tensor import Tensor

    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        tensor, inputs_done = stack.pop()
        if inputs_done:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor.creator is not None:
            for inp in tensor.creator.inputs:
                if isinstance(inp, Tensor) and inp.requires_grad and id(inp) not in visited:
                    stack.append((inp, False))
    order.reverse()  # the root first, leaves last
    return order


def run_backward(root, grad, retain_graph=False):
    """Accumulate d(root)/d(leaf) * grad into ``leaf.grad`` for every leaf that needs it."""
    from .tensor import Tensor

    grads = {id(root): grad}
    for tensor in _topological_order(root):
        g = grads.pop(id(tensor), None)
        if g is None:
            continue
        function = tensor.creator
        if function is None:
            # Never add in place: backward may hand one array to several inputs (Add does),
            # so a leaf's grad can share memory with another's.
            if tensor.grad is None:
                tensor.grad = Tensor(g)
            else:
                tensor.grad.data = tensor.grad.data + g
            continue
        if function.released:
            raise RuntimeError(
                f"backward through {function.name} a second time: its saved arrays were freed "
                "after the first backward; pass retain_graph=True to the first call to keep them")
        if _profile is None:
            input_grads = function.backward(g)
        else:
            _profile.synchronize()
            start = time.perf_counter()
            input_grads = function.backward(g)
            _profile.synchronize()
            key = getattr(function, "profile_key", (function.name, ()))
            _profile.record(key + ("backward",), time.perf_counter() - start)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        if len(input_grads) != len(function.inputs):
            raise RuntimeError(f"{function.name}.backward returned {len(input_grads)} gradients "
                               f"for {len(function.inputs)} inputs")
        for inp, input_grad in zip(function.inputs, input_grads):
            if input_grad is None or not (isinstance(inp, Tensor) and inp.requires_grad):
                continue
            if input_grad.shape != inp.shape:
                raise RuntimeError(f"{function.name}.backward gave a gradient of shape "
                                   f"{input_grad.shape} for an input of shape {inp.shape}")
            if id(inp) in grads:
                grads[id(inp)] = grads[id(inp)] + input_grad
            else:
                grads[id(inp)] = input_grad
        if not retain_graph:
            function.release()


def check_same_device(name, *arrays):
    devices = {backend.device_of(a) for a in arrays if a is not None}
    if len(devices) > 1:
        raise RuntimeError(f"{name}: inputs are on different devices ({' and '.join(sorted(devices))})")
