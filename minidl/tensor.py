"""The graph in one file: ``Tensor``, ``Function``, the backward pass, ``no_grad``, ``profile``.

A ``Tensor`` is an array (NumPy on the CPU, CuPy on the GPU) plus what autograd needs: its
``grad`` and the ``creator``, the Function that produced it.

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

import numpy as np

from . import backend


# -- Tensor: an array and its place in the graph --------------------------------------------------
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _as_array(data, dtype):
    if isinstance(data, Tensor):
        data = data.data
    if backend.is_cupy_array(data) or isinstance(data, (np.ndarray, np.generic)):
        data = backend.array_module(data).asarray(data)  # a NumPy scalar becomes a 0-d array
        return data if dtype is None else data.astype(dtype, copy=False)
    array = np.asarray(data)
    if dtype is None and array.dtype == np.float64:
        array = array.astype(np.float32)  # Python floats become float32, the default
    return array if dtype is None else array.astype(dtype, copy=False)


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    ``data`` is the array itself; ``grad`` receives d(loss)/d(this tensor) after
    ``loss.backward()`` when ``requires_grad`` is true; ``creator`` is the Function that
    produced it (``None`` for a leaf such as an input or a parameter).
    """

    __array_priority__ = 1000  # make ndarray + Tensor call Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _as_array(data, dtype)
        if requires_grad and self.data.dtype not in FLOAT_DTYPES:
            raise TypeError(f"only float32/float64 tensors can require gradients, got {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self.creator = None

    # -- facts ------------------------------------------------------------------------------------
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return int(self.data.size)

    @property
    def device(self):
        return backend.device_of(self.data)

    @property
    def is_leaf(self):
        return self.creator is None

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        where = "" if self.device == "cpu" else f", device='{self.device}'"
        if self.size <= 8:  # small tensors (a loss, a few logits) show their values
            values = np.array2string(self.numpy(), precision=4, separator=", ")
            return f"Tensor({values}, dtype={self.dtype}{where}{extra})"
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{where}{extra})"

    # -- conversions ------------------------------------------------------------------------------
    def numpy(self):
        """The data as a NumPy array (copied from the GPU if it lives there)."""
        return backend.to_numpy(self.data)

    def item(self):
        return self.numpy().item()

    def detach(self):
        """The same data, cut off from the graph."""
        return Tensor(self.data)

    def to(self, device):
        """A copy on ``device`` ("cpu" or "cuda"); ``self`` if it is already there."""
        device = backend.normalize_device(device)
        if device == self.device:
            return self
        moved = Tensor(backend.to_device(self.data, device), requires_grad=self.requires_grad)
        return moved

    def astype(self, dtype):
        return arithmetic.Cast.apply(self, dtype=np.dtype(dtype))

    # -- autograd ---------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Compute gradients of this tensor with respect to every leaf that requires them.

        ``grad`` defaults to 1 for a single-element tensor (a loss).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no input "
                               "that produced it had requires_grad=True (or it was made under no_grad)")
        xp = backend.array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a single-element tensor, "
                                   f"got shape {self.shape}; pass grad= of the same shape")
            grad = xp.ones_like(self.data)
        else:
            grad = _as_array(grad, self.dtype)
            if backend.array_module(grad) is xp:
                grad = grad.copy()  # the user's array stays theirs
            else:
                # A NumPy gradient for a GPU tensor (np.float32(1) for a loss): the kernels
                # read it through device pointers, so it moves to the tensor's device.
                grad = xp.asarray(backend.to_numpy(grad))
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(): grad has shape {tuple(grad.shape)}, expected {self.shape}")
        run_backward(self, grad, retain_graph=retain_graph)

    def zero_grad(self):
        self.grad = None

    # -- arithmetic (see minidl/ops/arithmetic.py, imported at the end of this file) --------------
    def __add__(self, other):
        return arithmetic.add(self, other)

    def __radd__(self, other):
        return arithmetic.add(other, self)

    def __sub__(self, other):
        return arithmetic.sub(self, other)

    def __rsub__(self, other):
        return arithmetic.sub(other, self)

    def __mul__(self, other):
        return arithmetic.mul(self, other)

    def __rmul__(self, other):
        return arithmetic.mul(other, self)

    def __truediv__(self, other):
        return arithmetic.div(self, other)

    def __rtruediv__(self, other):
        return arithmetic.div(other, self)

    def __neg__(self):
        return arithmetic.neg(self)

    def __pow__(self, exponent):
        return arithmetic.power(self, exponent)

    def __matmul__(self, other):
        return arithmetic.matmul(self, other)

    def __rmatmul__(self, other):
        return arithmetic.matmul(other, self)

    def __getitem__(self, index):
        return arithmetic.getitem(self, index)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return arithmetic.reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return arithmetic.transpose(self, axes or None)

    @property
    def T(self):
        return self.transpose()

    def sum(self, axis=None, keepdims=False):
        return arithmetic.reduce_sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return arithmetic.mean(self, axis=axis, keepdims=keepdims)

    def exp(self):
        return arithmetic.exp(self)

    def log(self):
        return arithmetic.log(self)


def tensor(data, requires_grad=False, dtype=None):
    """Make a tensor from a list, scalar or array (Python floats become float32)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


# -- Function: one operation of the graph ---------------------------------------------------------
class Function:
    """Base class of every differentiable operation (see the module docstring)."""

    def __init__(self):
        self.inputs = ()
        self.saved = ()
        self.needs_input_grad = ()
        self.released = False

    # -- to be written by each operation ----------------------------------------------------------
    def forward(self, *inputs, **options):
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def backward(self, grad_output):
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    # -- machinery --------------------------------------------------------------------------------
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


# -- the backward pass ----------------------------------------------------------------------------
def _topological_order(root):
    """Tensors reachable from ``root``, each after every tensor computed from it."""
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
            if input_grad.dtype != inp.data.dtype:
                # Mixed precision (float32 + float64 computes in float64): each tensor's
                # gradient has its own dtype, as in PyTorch.
                input_grad = input_grad.astype(inp.data.dtype)
            if id(inp) in grads:
                grads[id(inp)] = grads[id(inp)] + input_grad
            else:
                grads[id(inp)] = input_grad
        if not retain_graph:
            function.release()


# -- grad mode and profiling ----------------------------------------------------------------------
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


# Tensor's operators (a + b, a @ b, a.sum(), ...) are Functions in ops/arithmetic.py, which
# builds on Tensor and Function above: the one import cycle in minidl, made here, once.
from .ops import arithmetic  # noqa: E402
