"""Elementwise activations: ReLU and the logistic sigmoid.

Both save their *output* for backward, because the derivative is a function of it:

    relu:     y = max(x, 0)            dy/dx = (y > 0)       (0 at x == 0, as in PyTorch)
    sigmoid:  y = 1 / (1 + exp(-x))    dy/dx = y * (1 - y)

CPU: NumPy ufuncs. They are already vectorised C loops, so a Numba kernel would add nothing but
compile time; the sigmoid is computed in place in its own freshly allocated output buffer (never
in place on the input: the caller and the graph may still need it, and a gradient array may be
shared between branches of the graph). GPU: the kernels in ``activation.cu``, one thread per
element. Both devices form the same products in the same order, so they agree to the bit.
"""
import math

import numpy as np

from .. import backend, cuda
from ..tensor import Function
from . import checks

_kernels = cuda.KernelFile(__file__)


# -- simple version: the definitions in plain loops -----------------------------------------------

def relu_simple(x):
    """max(x, 0) element by element, in float64 (what the kernels compute)."""
    out = np.empty(x.size)
    for i, v in enumerate(x.reshape(-1).tolist()):
        out[i] = v if v > 0 else 0.0
    return out.reshape(x.shape)


def sigmoid_simple(x):
    """1 / (1 + exp(-x)) element by element, in float64 (what the kernels compute)."""
    out = np.empty(x.size)
    for i, v in enumerate(x.reshape(-1).tolist()):
        # the two algebraically equal forms, each where its exp cannot overflow
        out[i] = 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))
    return out.reshape(x.shape)


# -- drivers: one per device, same signature ------------------------------------------------------

def _relu_forward_cpu(x):
    return np.maximum(x, x.dtype.type(0), out=np.empty_like(x))  # NaN stays NaN, as in the CUDA kernel


def _relu_backward_cpu(y, g):
    # A product, not np.where: where() with a data-dependent condition is much slower here
    # (branch mispredictions). The CUDA kernel's formula, so a non-finite g at an inactive
    # unit becomes NaN on both devices alike.
    return g * (y > 0)


def _sigmoid_forward_cpu(x):
    # 1 / (1 + exp(-x)) in one buffer. For x < -88 (float32) exp overflows to inf and
    # 1 / inf = 0 is the right limit, so the overflow warning is silenced, not avoided;
    # this form keeps full relative precision in the small negative tail.
    # out= keeps a 0-d input a 0-d array (a bare ufunc call returns a NumPy scalar for it,
    # which the in-place calls below cannot write).
    y = np.negative(x, out=np.empty_like(x))
    with np.errstate(over="ignore"):
        np.exp(y, out=y)
    y += 1
    np.reciprocal(y, out=y)
    return y


def _sigmoid_backward_cpu(y, g):
    dx = g * y  # the CUDA kernel's order of products
    dx *= 1 - y
    return dx


def _elementwise_cuda(name):
    """A driver running kernel ``name`` of ``activation.cu`` over same-shaped arrays."""
    def run(*inputs):
        xp = backend.array_module(inputs[0])
        dtype, shape = inputs[0].dtype, inputs[0].shape
        inputs = [xp.ascontiguousarray(a, dtype=dtype) for a in inputs]  # 0-d comes back 1-d
        out = xp.empty(inputs[0].shape, dtype=dtype)
        _kernels(name, dtype)(out.size, *inputs, out)
        return out.reshape(shape)
    return run


_relu_forward_cuda = _elementwise_cuda("relu_forward")
_relu_backward_cuda = _elementwise_cuda("relu_backward")
_sigmoid_forward_cuda = _elementwise_cuda("sigmoid_forward")
_sigmoid_backward_cuda = _elementwise_cuda("sigmoid_backward")


# -- the Functions --------------------------------------------------------------------------------

class ReLUFunction(Function):
    def forward(self, x):
        checks.float_array("relu", "input", x)
        y = backend.pick(x, cpu=_relu_forward_cpu, cuda=_relu_forward_cuda)(x)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return backend.pick(y, cpu=_relu_backward_cpu, cuda=_relu_backward_cuda)(y, g)


class SigmoidFunction(Function):
    def forward(self, x):
        checks.float_array("sigmoid", "input", x)
        y = backend.pick(x, cpu=_sigmoid_forward_cpu, cuda=_sigmoid_forward_cuda)(x)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return backend.pick(y, cpu=_sigmoid_backward_cpu, cuda=_sigmoid_backward_cuda)(y, g)


def relu(x):
    """max(x, 0) elementwise; float32 or float64 of any shape."""
    return ReLUFunction.apply(x)


def sigmoid(x):
    """1 / (1 + exp(-x)) elementwise, without overflow for large |x|."""
    return SigmoidFunction.apply(x)
