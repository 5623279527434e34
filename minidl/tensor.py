"""``Tensor``: an array (NumPy on the CPU, CuPy on the GPU) plus what autograd needs."""
import numpy as np

from . import autograd, backend

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

    # -- facts ------------------------------------------------------------------------
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

    # -- conversions ------------------------------------------------------------------
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
        from .ops import arithmetic
        return arithmetic.Cast.apply(self, dtype=np.dtype(dtype))

    # -- autograd ---------------------------------------------------------------------
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
            grad = _as_array(grad, self.dtype).copy()  # the user's array stays theirs
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(): grad has shape {tuple(grad.shape)}, expected {self.shape}")
        autograd.run_backward(self, grad, retain_graph=retain_graph)

    def zero_grad(self):
        self.grad = None

    # -- arithmetic (see minidl/ops/arithmetic.py) ---------------------------------------
    def __add__(self, other):
        from .ops import arithmetic
        return arithmetic.add(self, other)

    def __radd__(self, other):
        from .ops import arithmetic
        return arithmetic.add(other, self)

    def __sub__(self, other):
        from .ops import arithmetic
        return arithmetic.sub(self, other)

    def __rsub__(self, other):
        from .ops import arithmetic
        return arithmetic.sub(other, self)

    def __mul__(self, other):
        from .ops import arithmetic
        return arithmetic.mul(self, other)

    def __rmul__(self, other):
        from .ops import arithmetic
        return arithmetic.mul(other, self)

    def __truediv__(self, other):
        from .ops import arithmetic
        return arithmetic.div(self, other)

    def __rtruediv__(self, other):
        from .ops import arithmetic
        return arithmetic.div(other, self)

    def __neg__(self):
        from .ops import arithmetic
        return arithmetic.neg(self)

    def __pow__(self, exponent):
        from .ops import arithmetic
        return arithmetic.pow(self, exponent)

    def __matmul__(self, other):
        from .ops import arithmetic
        return arithmetic.matmul(self, other)

    def __rmatmul__(self, other):
        from .ops import arithmetic
        return arithmetic.matmul(other, self)

    def __getitem__(self, index):
        from .ops import arithmetic
        return arithmetic.getitem(self, index)

    def reshape(self, *shape):
        from .ops import arithmetic
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return arithmetic.reshape(self, shape)

    def transpose(self, *axes):
        from .ops import arithmetic
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return arithmetic.transpose(self, axes or None)

    @property
    def T(self):
        return self.transpose()

    def sum(self, axis=None, keepdims=False):
        from .ops import arithmetic
        return arithmetic.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        from .ops import arithmetic
        return arithmetic.mean(self, axis=axis, keepdims=keepdims)

    def exp(self):
        from .ops import arithmetic
        return arithmetic.exp(self)

    def log(self):
        from .ops import arithmetic
        return arithmetic.log(self)


def tensor(data, requires_grad=False, dtype=None):
    """Make a tensor from a list, scalar or array (Python floats become float32)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)
