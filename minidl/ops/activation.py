"""Elementwise activations: ReLU and the logistic sigmoid.

Both save their *output* for backward, because the derivative is a function of it:

    relu:     y = max(x, 0)            dy/dx = (y > 0)       (0 at x == 0, as in PyTorch)
    sigmoid:  y = 1 / (1 + exp(-x))    dy/dx = y * (1 - y)

CPU: NumPy ufuncs. They are already vectorised C loops, so a Numba kernel would add nothing but
compile time; the sigmoid is computed in place in its own freshly allocated output buffer (never
in place on the input: the caller and the graph may still need it, and a gradient array may be
shared between branches of the graph). GPU: the kernels in ``activation.cu``.
"""
import numpy as np

from .. import backend, cuda
from ..autograd import Function
from . import _checks

_kernels = cuda.KernelFile(__file__)


def _cuda_elementwise(name, *inputs):
    """Run kernel ``name`` of ``activation.cu`` over same-shaped ``inputs``; return its output."""
    xp = backend.array_module(inputs[0])
    dtype = inputs[0].dtype
    inputs = [xp.ascontiguousarray(a, dtype=dtype) for a in inputs]
    out = xp.empty(inputs[0].shape, dtype=dtype)
    n = out.size
    _kernels(name, dtype)(n, *inputs, out, np.int64(n))
    return out


class ReLU(Function):
    def forward(self, x):
        _checks.float_array("relu", "input", x)
        if backend.uses_cuda_kernels(x):
            y = _cuda_elementwise("relu_forward", x)
        else:
            y = np.maximum(x, x.dtype.type(0))  # propagates NaN, like the CUDA kernel
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        if backend.uses_cuda_kernels(y):
            return _cuda_elementwise("relu_backward", y, g)
        # A product, not np.where: where() with a data-dependent condition is ~15x slower
        # here (branch mispredictions). Same formula as the CUDA kernel, so a non-finite g at
        # an inactive unit becomes NaN on both devices alike.
        return g * (y > 0)


class Sigmoid(Function):
    def forward(self, x):
        _checks.float_array("sigmoid", "input", x)
        if backend.uses_cuda_kernels(x):
            y = _cuda_elementwise("sigmoid_forward", x)
        else:
            # 1 / (1 + exp(-x)) in one buffer. For x < -88 (float32) exp overflows to inf and
            # 1 / inf = 0 is the right limit, so the overflow warning is silenced, not avoided;
            # this form keeps full relative precision in the small negative tail.
            y = np.negative(x)
            with np.errstate(over="ignore"):
                np.exp(y, out=y)
            y += 1
            np.reciprocal(y, out=y)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        if backend.uses_cuda_kernels(y):
            return _cuda_elementwise("sigmoid_backward", y, g)
        dx = g * y  # same order of products as the CUDA kernel, so the two agree to the bit
        dx *= 1 - y
        return dx


def relu(x):
    """max(x, 0) elementwise; float32 or float64 of any shape."""
    return ReLU.apply(x)


def sigmoid(x):
    """1 / (1 + exp(-x)) elementwise, without overflow for large |x|."""
    return Sigmoid.apply(x)
