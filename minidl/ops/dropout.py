"""Inverted dropout with a counter-based random mask that is identical on the CPU and the GPU.

    y[i] = x[i] / (1 - p)   if element i is kept,   0 otherwise

Each call draws one 64-bit ``seed`` from a NumPy generator (``minidl.random.default_generator()``
unless one is given). Element ``i`` (its index in C order) is kept iff ``u(seed, i) >= p``, where

    h = splitmix64(seed + (i + 1) * 0x9E3779B97F4A7C15)
    u = (h >> 11) / 2**53          (53 random bits: a uniform double in [0, 1))

The test ``u >= p`` is evaluated exactly in integers as ``(h >> 11) >= ceil(p * 2**53)``
(``p * 2**53`` is exact in double precision), so the Numba loop below and ``dropout.cu`` make
bit-identical masks from the same seed, whatever the floating-point unit: a model trained on the
GPU can be checked step by step on the CPU.

Backward: dropout is linear in x, so dx = mask * g / (1 - p) is the *same* operation applied to
the gradient with the same seed. Nothing but the seed is saved; the mask is recomputed. Hashing
costs a handful of integer operations per element, which is cheaper than writing a mask in the
forward pass and reading it back in the backward pass (both passes are memory-bound, and the
recomputation removes a third array from each), and it saves one byte per element per dropout
layer for the whole time between forward and backward.

In evaluation (``training=False``) or with ``p == 0`` dropout is the identity: the input tensor
is returned as it is, no seed is drawn and no graph node is recorded.
"""
import math

import numpy as np
from numba import njit

from .. import backend, cpu, cuda, random
from ..tensor import Function, Tensor
from . import checks

_kernels = cuda.KernelFile(__file__)

# splitmix64's constants (Steele, Lea & Flood 2014): the Weyl increment, then two multipliers.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_ONE = np.uint64(1)


# -- simple version: the definition in plain loops ------------------------------------------------

def dropout_simple(x, p, seed):
    """x * mask(seed) / (1 - p) by a plain loop over a NumPy array, hashing each index in
    Python integers: what the kernels below compute, and what the tests check them against."""
    mask64 = 2 ** 64 - 1
    threshold = math.ceil(p * 2.0 ** 53)
    flat = x.reshape(-1)
    y = np.zeros_like(flat)
    for i in range(flat.size):
        z = (int(seed) + (i + 1) * 0x9E3779B97F4A7C15) & mask64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask64
        z ^= z >> 31
        if (z >> 11) >= threshold:
            y[i] = flat[i] * x.dtype.type(1.0 / (1.0 - p))
    return y.reshape(x.shape)


# -- CPU kernel (Numba) ---------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _hash(seed, i):
    """splitmix64 of the i-th counter of stream ``seed``; every operand is uint64, so Numba
    wraps modulo 2**64 exactly as ``unsigned long long`` does in dropout.cu."""
    z = seed + (i + _ONE) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@cpu.kernel
def _apply_cpu_kernel(first, stop, x, y, seed, threshold, scale):
    # y[i] = x[i] * scale if (hash(seed, i) >> 11) >= threshold else 0. Each loop iteration
    # owns one element; the mask depends only on (seed, i), not on which core runs it.
    for i in range(first, stop):
        if (_hash(seed, np.uint64(i)) >> np.uint64(11)) >= threshold:
            y[i] = x[i] * scale
        else:
            y[i] = 0


# -- drivers: one per device, same signature ------------------------------------------------------

def _apply_cpu(x, y, seed, threshold, scale):
    _apply_cpu_kernel(x.size, x.reshape(-1), y.reshape(-1), seed, threshold, scale)


def _apply_cuda(x, y, seed, threshold, scale):
    _kernels("dropout_apply", x.dtype)(x.size, x, y, seed, threshold, scale)


def threshold_for(p):
    """The integer t with ``u >= p  <=>  (h >> 11) >= t`` for u = (h >> 11) / 2**53."""
    return np.uint64(math.ceil(p * 2.0 ** 53))


def apply_mask(x, p, seed):
    """x * mask(seed) / (1 - p) on raw arrays (NumPy or CuPy), through the CPU or CUDA kernel.

    Used by forward (on x) and by backward (on the gradient); public so tests and tools can
    reproduce a mask from its seed.
    """
    xp = backend.array_module(x)
    shape = x.shape
    x = xp.ascontiguousarray(x)  # 0-d comes back 1-d
    y = xp.empty(x.shape, dtype=x.dtype)
    # In the array's dtype: no float64 upcast. With p = 1 nothing is kept and the scale unused.
    scale = x.dtype.type(1.0 / (1.0 - p) if p < 1 else 0.0)
    apply = backend.pick(x, cpu=_apply_cpu, cuda=_apply_cuda)
    apply(x, y, np.uint64(seed), threshold_for(p), scale)
    return y.reshape(shape)


# -- the Function ---------------------------------------------------------------------------------

class DropoutFunction(Function):
    def forward(self, x, p, seed):
        checks.float_array("dropout", "input", x)
        self.p, self.seed = p, seed
        return apply_mask(x, p, seed)

    def backward(self, g):
        return apply_mask(g, self.p, self.seed), None, None


def _check_p(p):
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) \
            or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")


def draw_seed(generator=None):
    """One 64-bit seed from ``generator`` (default: minidl's global generator)."""
    generator = random.default_generator() if generator is None else generator
    return np.uint64(generator.integers(0, 2 ** 64, dtype=np.uint64))


def dropout(x, p=0.5, training=True, generator=None):
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    ``x``: float32/float64 tensor of any shape. ``p`` in [0, 1] (1 zeroes everything). Identity (the same tensor,
    no random draw) when ``training`` is False or ``p == 0``. ``generator``: a
    ``numpy.random.Generator`` from which one 64-bit seed is drawn per call.
    """
    _check_p(p)
    if not training or p == 0:
        checks.float_array("dropout", "input", x.data if isinstance(x, Tensor) else x)
        return x if isinstance(x, Tensor) else Tensor(x)
    return DropoutFunction.apply(x, float(p), draw_seed(generator))
