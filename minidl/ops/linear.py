"""Fully connected layer ``y = x W^T + b`` and ``flatten``.

``linear`` has no kernel of its own, on purpose: its forward and backward are three matrix
products, which no hand-written kernel here would beat: ``cpu.matmul`` on the CPU (BLAS, one
thread per piece of the product, on minidl's threads) and ``cuda.matmul`` on the GPU (cuBLAS
through CuPy's ``dot``). ``W.T`` is a transposed *view*; BLAS reads it as it is, without a
copy.

    forward    y  = x @ W.T (+ b)          x (N, in), W (out, in), b (out,), y (N, out)
               (x (..., in) of any other rank is the matrix of its rows, as in PyTorch)
    backward   dx = g @ W                  only if x needs a gradient
               dW = g.T @ x                only if W needs a gradient
               db = g.sum(axis=0)          only if b needs a gradient

The first two are computed transposed, y^T = W @ x^T and dx^T = W^T @ g^T, and the small
result turned round into a C-contiguous array (one copy of N x out or N x in floats, with the
bias added on the way): with a batch of 32-128 rows, that is the orientation OpenBLAS runs
fastest (docs/PERFORMANCE.md has the figures). dW = g^T @ x is already the fast one.

Each product is computed only when that input needs a gradient, and forward saves only what
those products read (x for dW, W for dx), so a frozen layer or the first layer (whose input
needs no gradient) keeps less alive between forward and backward.
"""
import numpy as np

from .. import backend, cpu, cuda
from ..tensor import Function
from . import checks


# -- simple version: the definition in plain loops ------------------------------------------------

def linear_simple(x, weight, bias=None):
    """y[i, o] = bias[o] + sum over j of x[i, j] * weight[o, j], in float64 plain loops."""
    n, k = x.shape
    m = weight.shape[0]
    y = np.zeros((n, m))
    for i in range(n):
        for o in range(m):
            total = 0.0 if bias is None else float(bias[o])
            for j in range(k):
                total += float(x[i, j]) * float(weight[o, j])
            y[i, o] = total
    return y


# -- the product, one per device ------------------------------------------------------------------

def _matmul(a, b):
    return backend.pick(a, cpu=cpu.matmul, cuda=cuda.matmul)(a, b)


# -- the Functions --------------------------------------------------------------------------------

class LinearFunction(Function):
    def forward(self, x, weight, bias=None):
        checks.float_array("linear", "weight", weight, ndim=2, layout="out_features, in_features")
        checks.float_array("linear", "input", x)
        if bias is not None:
            checks.float_array("linear", "bias", bias, ndim=1, layout="out_features")
        checks.same_dtype("linear", input=x, weight=weight, bias=bias)
        if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"linear: input has {x.shape[-1] if x.ndim else 'no'} features in its "
                             f"last dimension (shape {tuple(x.shape)}) but weight of shape "
                             f"{tuple(weight.shape)} = (out_features, in_features) expects "
                             f"{weight.shape[1]}")
        if bias is not None and bias.shape[0] != weight.shape[0]:
            raise ValueError(f"linear: bias has shape {tuple(bias.shape)}; expected "
                             f"({weight.shape[0]},), one value per output feature")
        xp = backend.array_module(x)
        # Any leading dimensions are rows of one matrix product (sizes spelled out: 0 rows work).
        self.x_shape = tuple(x.shape)
        rows = int(np.prod(x.shape[:-1], dtype=np.int64))
        x = x.reshape(rows, x.shape[-1])
        y_t = _matmul(weight, x.T)  # (out, N): the fast orientation, see the module doc
        y = xp.empty((rows, weight.shape[0]), dtype=x.dtype)
        if bias is None:
            y[...] = y_t.T
        else:
            xp.add(y_t.T, bias, out=y)
        needs_x, needs_w = self.needs_input_grad[0], self.needs_input_grad[1]
        self.save_for_backward(x if needs_w else None, weight if needs_x else None)
        return y.reshape(self.x_shape[:-1] + (weight.shape[0],))

    def backward(self, g):
        x, weight = self.saved
        xp = backend.array_module(g)
        needs = self.needs_input_grad
        g = g.reshape(int(np.prod(g.shape[:-1], dtype=np.int64)), g.shape[-1])
        grad_x = None
        if needs[0]:
            grad_x = xp.ascontiguousarray(_matmul(weight.T, g.T).T).reshape(self.x_shape)
        grad_w = _matmul(g.T, x) if needs[1] else None
        grad_b = g.sum(axis=0) if needs[2] else None
        return grad_x, grad_w, grad_b


class FlattenFunction(Function):
    def forward(self, x, start_dim):
        self.shape = x.shape
        # The size is spelled out rather than -1, so that an empty batch (0, C, H, W) works.
        kept = tuple(x.shape[:start_dim])
        merged = int(np.prod(x.shape[start_dim:], dtype=np.int64))
        return x.reshape(kept + (merged,))  # a view when x is contiguous (no copy)

    def backward(self, g):
        return g.reshape(self.shape), None


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` with x (..., in_features) -- any leading dimensions, or none --
    weight (out_features, in_features) as in ``torch.nn.functional.linear``, bias
    (out_features,) or None; the result is (..., out_features)."""
    return LinearFunction.apply(x, weight, bias)


def flatten(x, start_dim=1):
    """Keep dims ``[0, start_dim)``, merge the rest into one: (N, C, H, W) -> (N, C*H*W).

    ``start_dim`` may be negative (counted from the end). The result is a view of x on both
    devices when x is contiguous; backward reshapes the gradient back.
    """
    ndim = len(x.shape)
    if ndim == 0:
        raise ValueError("flatten: input must have at least 1 dimension, got a 0-d (scalar) tensor")
    if isinstance(start_dim, bool) or not isinstance(start_dim, (int, np.integer)) \
            or not -ndim <= start_dim < ndim:
        raise ValueError(f"flatten: start_dim must be an integer in [{-ndim}, {ndim - 1}] for an "
                         f"input of shape {tuple(x.shape)}, got {start_dim!r}")
    return FlattenFunction.apply(x, int(start_dim) % ndim)
