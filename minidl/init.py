"""Weight initialisation: fill a parameter in place with values drawn on the CPU.

Every function takes a ``Tensor`` (usually a ``Parameter``), replaces its ``data`` with new
values of the same shape and dtype on the same device, and returns it. Random values come
from a NumPy ``Generator`` -- ``generator`` if given, else minidl's default one
(``minidl.manual_seed``) -- so a seeded model is the same on the CPU and on the GPU.

    uniform_(w, a, b)       U(a, b)
    normal_(w, std, mean)   N(mean, std^2), drawn in w's dtype (no float64 copy of fc6)
    zeros_(w), constant_(w, value)
    fan_in_uniform_(w)      U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for its
                            Conv2d and Linear weights and biases
    glorot_uniform_(w)      U(-l, l), l = sqrt(6 / (fan_in + fan_out)): Keras's default
    lecun_normal_(w)        N(0, 1 / fan_in): keeps a signal's size from layer to layer

``fan_in`` of a weight (out, in, kh, kw) is in * kh * kw (per group for a grouped conv, whose
weight already has in // groups channels), of a (out, in) weight it is in; ``fan_out`` is
out * kh * kw, or out.
"""
import math

import numpy as np

from . import backend, random


def _generator(generator):
    return random.default_generator() if generator is None else generator


def _fill(tensor, values):
    values = np.asarray(values, dtype=tensor.dtype)
    tensor.data = backend.to_device(values, backend.device_of(tensor.data))
    return tensor


def fans(shape):
    """(fan_in, fan_out) of a weight of ``shape``: (out, in[, kh, kw, ...])."""
    if len(shape) < 2:
        raise ValueError(f"init: fan-in and fan-out need a weight of at least 2 dimensions "
                         f"(out, in, ...), got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def uniform_(tensor, low, high, generator=None):
    return _fill(tensor, _generator(generator).uniform(low, high, tensor.shape))


def normal_(tensor, std=1.0, mean=0.0, generator=None):
    dtype = tensor.dtype
    values = _generator(generator).standard_normal(tensor.shape, dtype=dtype) * dtype.type(std)
    if mean:
        values += dtype.type(mean)
    return _fill(tensor, values)


def constant_(tensor, value):
    return _fill(tensor, np.full(tensor.shape, value, dtype=tensor.dtype))


def zeros_(tensor):
    return constant_(tensor, 0)


def fan_in_uniform_(tensor, fan_in, generator=None):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)); ``fan_in`` is given, since a bias has none of its own."""
    bound = 1.0 / math.sqrt(fan_in)
    return uniform_(tensor, -bound, bound, generator)


def glorot_uniform_(tensor, generator=None):
    fan_in, fan_out = fans(tensor.shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -limit, limit, generator)


def lecun_normal_(tensor, generator=None):
    fan_in, _ = fans(tensor.shape)
    return normal_(tensor, std=fan_in ** -0.5, generator=generator)
