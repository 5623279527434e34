"""Elementwise arithmetic, matmul, reductions and shape changes.

These are written once against ``xp`` (NumPy or CuPy share the calls), so they need no
separate kernels. Broadcasting works as in NumPy; backward sums a gradient back down to the
shape of the input it belongs to (``unbroadcast``).
"""
import numpy as np

from .. import backend
from ..tensor import Function, Tensor


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched to reach ``shape``."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def _pair(a, b):
    """Make both operands tensors; a plain number or array takes the other's dtype and device."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a, b
    like = a if isinstance(a, Tensor) else b
    other = b if like is a else a
    xp = backend.array_module(like.data)
    other = Tensor(xp.asarray(other, dtype=like.dtype))
    return (like, other) if like is a else (other, like)


class Add(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a + b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(g, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a - b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(-g, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a * b

    def backward(self, g):
        a, b = self.saved
        grad_a = unbroadcast(g * b, a.shape) if self.needs_input_grad[0] else None
        grad_b = unbroadcast(g * a, b.shape) if self.needs_input_grad[1] else None
        return grad_a, grad_b


class Div(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a / b

    def backward(self, g):
        a, b = self.saved
        grad_a = unbroadcast(g / b, a.shape) if self.needs_input_grad[0] else None
        grad_b = unbroadcast(-g * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return grad_a, grad_b


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return -g


class Pow(Function):
    """a ** p for a constant exponent p."""

    def forward(self, a, exponent):
        self.save_for_backward(a)
        self.exponent = exponent
        return a ** exponent

    def backward(self, g):
        (a,) = self.saved
        return g * self.exponent * a ** (self.exponent - 1), None


class Exp(Function):
    def forward(self, a):
        out = backend.array_module(a).exp(a)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        (out,) = self.saved
        return g * out


class Log(Function):
    def forward(self, a):
        self.save_for_backward(a)
        return backend.array_module(a).log(a)

    def backward(self, g):
        (a,) = self.saved
        return g / a


class MatMul(Function):
    """a @ b for 2-D matrices (or a batch of them), through BLAS / cuBLAS."""

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul: both operands must be at least 2-D, got shapes {a.shape} and {b.shape}")
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match "
                             f"(inner sizes {a.shape[-1]} and {b.shape[-2]})")
        self.save_for_backward(a, b)
        return a @ b

    def backward(self, g):
        a, b = self.saved
        xp = backend.array_module(g)
        grad_a = unbroadcast(g @ xp.swapaxes(b, -1, -2), a.shape) if self.needs_input_grad[0] else None
        grad_b = unbroadcast(xp.swapaxes(a, -1, -2) @ g, b.shape) if self.needs_input_grad[1] else None
        return grad_a, grad_b


class Sum(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axis, self.keepdims = a.shape, axis, keepdims
        return a.sum(axis=axis, keepdims=keepdims)

    def backward(self, g):
        xp = backend.array_module(g)
        if self.axis is not None and not self.keepdims:
            axes = (self.axis,) if isinstance(self.axis, int) else self.axis
            axes = sorted(ax % len(self.shape) for ax in axes)
            for ax in axes:
                g = xp.expand_dims(g, ax)
        return xp.broadcast_to(g, self.shape).copy()


class Reshape(Function):
    def forward(self, a, shape):
        self.shape = a.shape
        return a.reshape(shape)

    def backward(self, g):
        return g.reshape(self.shape), None


class Transpose(Function):
    def forward(self, a, axes=None):
        self.axes = axes
        xp = backend.array_module(a)
        return xp.transpose(a, axes)

    def backward(self, g):
        xp = backend.array_module(g)
        inverse = None if self.axes is None else tuple(np.argsort(self.axes))
        return xp.transpose(g, inverse), None


class GetItem(Function):
    def forward(self, a, index):
        self.shape, self.index, self.dtype = a.shape, index, a.dtype
        return a[index]

    def backward(self, g):
        xp = backend.array_module(g)
        grad = xp.zeros(self.shape, dtype=self.dtype)
        if xp is np:
            np.add.at(grad, self.index, g)  # repeated indices accumulate
        else:
            import cupyx
            cupyx.scatter_add(grad, self.index, g)
        return grad, None


class Cast(Function):
    def forward(self, a, dtype):
        self.source_dtype = a.dtype
        return a.astype(dtype)

    def backward(self, g):
        return g.astype(self.source_dtype)


def add(a, b):
    return Add.apply(*_pair(a, b))


def sub(a, b):
    return Sub.apply(*_pair(a, b))


def mul(a, b):
    return Mul.apply(*_pair(a, b))


def div(a, b):
    return Div.apply(*_pair(a, b))


def neg(a):
    return Neg.apply(a)


def power(a, exponent):
    """a ** exponent for a constant number ``exponent``."""
    if isinstance(exponent, Tensor):
        raise TypeError("power: the exponent must be a number, not a tensor")
    return Pow.apply(a, exponent)


def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def matmul(a, b):
    return MatMul.apply(*_pair(a, b))


def reduce_sum(a, axis=None, keepdims=False):
    """The sum over ``axis`` (an int, a tuple of ints, or None for all), as ``Tensor.sum``."""
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False):
    if axis is None:
        count = a.size
    else:
        axes = (axis,) if isinstance(axis, int) else axis
        count = int(np.prod([a.shape[ax] for ax in axes]))
    return reduce_sum(a, axis=axis, keepdims=keepdims) * (1.0 / max(count, 1))


def reshape(a, shape):
    return Reshape.apply(a, tuple(shape))


def transpose(a, axes=None):
    return Transpose.apply(a, None if axes is None else tuple(axes))


def getitem(a, index):
    return GetItem.apply(a, index)
