"""Batch normalisation (Ioffe & Szegedy, 2015) over (N, C) or (N, C, ...), as
``torch.nn.functional.batch_norm``.

Per channel c, over the M = N * P values of the batch (P positions per example, 1 for (N, C)):

    training:  mean[c] = sum x / M,   var[c] = sum (x - mean[c])^2 / M        (two passes)
               running_mean <- momentum * mean + (1 - momentum) * running_mean
               running_var  <- momentum * var * M / (M - 1) + (1 - momentum) * running_var
    otherwise: mean, var = running_mean, running_var

    y = (x - mean[c]) * invstd[c] * gamma[c] + beta[c],   invstd = 1 / sqrt(var + eps)

(gamma = 1 and beta = 0 without ``weight`` and ``bias``). The running variance takes the
unbiased variance, the normalisation the biased one, as in PyTorch. Backward, with
xhat = (x - mean) * invstd and g = dL/dy, sums over the batch and positions:

    dbeta[c] = sum g,   dgamma[c] = sum g * xhat
    training:  dx = ((g - dbeta / M) - xhat * dgamma / M) * gamma * invstd
    otherwise: dx = g * gamma * invstd       (the statistics are constants)

The sums are formed in two levels, the same way on both devices, so the CPU and the GPU give
the same bits: first per (example n, channel c) plane, sequentially over its P positions;
then per channel, over the N plane sums in order. CPU (Numba): one loop iteration owns one
channel and does both levels, and the backward is fused -- the sums and then dx in one
iteration. GPU (``batchnorm.cu``, no atomics): one thread per (c, n) plane for the first
level, one per channel for the second, one per element to normalise or to write dx.
"""
import math

import numpy as np


from .. import backend, cpu, cuda
from ..tensor import Function, Tensor
from . import checks

_kernels = cuda.KernelFile(__file__)

OP = "batch_norm"


# -- simple version: the definition in plain loops ------------------------------------------------

def batch_norm_simple(x, running_mean=None, running_var=None, weight=None, bias=None,
                      training=False, momentum=0.1, eps=1e-5):
    """(y, mean, var used, new running mean, new running var) in float64 loops over
    x (N, C, ...); the running statistics are returned updated (training) or as given."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1).astype(np.float64)
    count = flat.shape[0] * flat.shape[2]
    y = np.empty(flat.shape)
    means, variances = np.empty(c), np.empty(c)
    new_mean = None if running_mean is None else np.array(running_mean, dtype=np.float64)
    new_var = None if running_var is None else np.array(running_var, dtype=np.float64)
    for ch in range(c):
        values = [float(v) for v in flat[:, ch].reshape(-1)]
        if training or running_mean is None:
            mean = sum(values) / count
            var = sum((v - mean) ** 2 for v in values) / count
            if training and new_mean is not None:
                new_mean[ch] = momentum * mean + (1 - momentum) * new_mean[ch]
                new_var[ch] = momentum * var * count / (count - 1) + (1 - momentum) * new_var[ch]
        else:
            mean, var = float(running_mean[ch]), float(running_var[ch])
        gamma = 1.0 if weight is None else float(weight[ch])
        beta = 0.0 if bias is None else float(bias[ch])
        for b in range(n):
            for q in range(flat.shape[2]):
                y[b, ch, q] = (flat[b, ch, q] - mean) / math.sqrt(var + eps) * gamma + beta
        means[ch], variances[ch] = mean, var
    return y.reshape(x.shape), means, variances, new_mean, new_var


def batch_norm_backward_simple(x, grad_y, mean, var, weight=None, batch_statistics=True, eps=1e-5):
    """(dx, dgamma, dbeta) in float64 loops, for the ``mean`` and ``var`` forward used."""
    n, c = x.shape[:2]
    flat, g = x.reshape(n, c, -1).astype(np.float64), grad_y.reshape(n, c, -1).astype(np.float64)
    count = flat.shape[0] * flat.shape[2]
    dx, dgamma, dbeta = np.empty(flat.shape), np.empty(c), np.empty(c)
    for ch in range(c):
        invstd = 1 / math.sqrt(var[ch] + eps)
        gamma = 1.0 if weight is None else float(weight[ch])
        xhat = (flat[:, ch] - mean[ch]) * invstd
        dbeta[ch] = sum(float(v) for v in g[:, ch].reshape(-1))
        dgamma[ch] = sum(float(a * b) for a, b in zip(g[:, ch].reshape(-1), xhat.reshape(-1)))
        for b in range(n):
            for q in range(flat.shape[2]):
                value = g[b, ch, q]
                if batch_statistics:
                    value = value - dbeta[ch] / count - xhat[b, q] * dgamma[ch] / count
                dx[b, ch, q] = value * gamma * invstd
    return dx.reshape(x.shape), dgamma, dbeta


# -- CPU kernels (Numba) --------------------------------------------------------------------------

@cpu.kernel
def _statistics_cpu_kernel(first, stop, x, mean, var, count):
    # mean[c] = sum of x[:, c, :] / count, var[c] = sum of (x[:, c, :] - mean[c])^2 / count,
    # each sum over the example planes of their sums over the positions. One loop
    # iteration owns one channel c.
    batch, channels, positions = x.shape
    zero = x.dtype.type(0)
    for c in range(first, stop):
        total = zero
        for b in range(batch):
            plane = zero
            for q in range(positions):
                plane += x[b, c, q]
            total += plane
        m = total / count
        total = zero
        for b in range(batch):
            plane = zero
            for q in range(positions):
                d = x[b, c, q] - m
                plane += d * d
            total += plane
        mean[c] = m
        var[c] = total / count


@cpu.kernel
def _normalize_cpu_kernel(first, stop, x, mean, invstd, gamma, beta, y):
    # y[b, c, q] = (x[b, c, q] - mean[c]) * invstd[c] * gamma[c] + beta[c]. One loop
    # iteration owns one (b, c) plane.
    batch, channels, positions = x.shape
    for plane in range(first, stop):
        b = plane // channels
        c = plane % channels
        m, s, g, h = mean[c], invstd[c], gamma[c], beta[c]
        for q in range(positions):
            y[b, c, q] = (x[b, c, q] - m) * s * g + h


@cpu.kernel
def _backward_cpu_kernel(first, stop, g, x, mean, invstd, gamma, grad_x, sum_g, sum_gxhat, count,
                         training, need_x):
    # sum_g[c] = sum of g[:, c, :], sum_gxhat[c] = sum of g * (x - mean[c]) * invstd[c], in two
    # levels as the statistics; then, if need_x, grad_x[:, c, :] = ((g - sum_g / count)
    # - xhat * sum_gxhat / count) * gamma[c] * invstd[c] (training) or g * gamma * invstd.
    # One loop iteration owns one channel: the sums and its dx, fused.
    batch, channels, positions = x.shape
    zero = x.dtype.type(0)
    for c in range(first, stop):
        m, s = mean[c], invstd[c]
        total_g, total_gx = zero, zero
        for b in range(batch):
            plane_g, plane_gx = zero, zero
            for q in range(positions):
                plane_g += g[b, c, q]
                plane_gx += g[b, c, q] * ((x[b, c, q] - m) * s)
            total_g += plane_g
            total_gx += plane_gx
        sum_g[c], sum_gxhat[c] = total_g, total_gx
        if not need_x:
            continue
        scale = gamma[c] * s
        mean_g, mean_gx = total_g / count, total_gx / count
        for b in range(batch):
            for q in range(positions):
                if training:
                    grad_x[b, c, q] = ((g[b, c, q] - mean_g) - (x[b, c, q] - m) * s * mean_gx) * scale
                else:
                    grad_x[b, c, q] = g[b, c, q] * scale


# -- drivers: one per device, same signature ------------------------------------------------------
# x and g are (N, C, P); the per-channel arrays (C,).

def _statistics_cpu(x, count):
    mean, var = np.empty(x.shape[1], x.dtype), np.empty(x.shape[1], x.dtype)
    _statistics_cpu_kernel(x.shape[1], x, mean, var, count)
    return mean, var


def _normalize_cpu(x, mean, invstd, gamma, beta):
    y = np.empty_like(x)
    _normalize_cpu_kernel(x.shape[0] * x.shape[1], x, mean, invstd, gamma, beta, y)
    return y


def _backward_cpu(g, x, mean, invstd, gamma, count, training, need_x):
    sum_g, sum_gxhat = np.empty(x.shape[1], x.dtype), np.empty(x.shape[1], x.dtype)
    grad_x = np.empty_like(x) if need_x else np.empty((0, 0, 0), x.dtype)
    _backward_cpu_kernel(x.shape[1], g, x, mean, invstd, gamma, grad_x, sum_g, sum_gxhat, count,
                         training, need_x)
    return (grad_x if need_x else None), sum_g, sum_gxhat


def _statistics_cuda(x, count):
    xp = backend.array_module(x)
    batch, channels, positions = x.shape
    planes = xp.empty(channels * batch, x.dtype)
    mean, var = xp.empty(channels, x.dtype), xp.empty(channels, x.dtype)
    sums, reduce = _kernels("batch_norm_plane_sums", x.dtype), _kernels("batch_norm_reduce", x.dtype)
    sums(channels * batch, x, mean, planes, batch, channels, positions, False)  # mean: unread
    reduce(channels, planes, mean, batch, count)
    sums(channels * batch, x, mean, planes, batch, channels, positions, True)
    reduce(channels, planes, var, batch, count)
    return mean, var


def _normalize_cuda(x, mean, invstd, gamma, beta):
    y = backend.array_module(x).empty_like(x)
    _kernels("batch_norm_normalize", x.dtype)(x.size, x, mean, invstd, gamma, beta, y, x.shape[1],
                                              x.shape[2])
    return y


def _backward_cuda(g, x, mean, invstd, gamma, count, training, need_x):
    xp = backend.array_module(x)
    batch, channels, positions = x.shape
    planes_g, planes_gx = xp.empty(channels * batch, x.dtype), xp.empty(channels * batch, x.dtype)
    _kernels("batch_norm_backward_plane_sums", x.dtype)(
        channels * batch, g, x, mean, invstd, planes_g, planes_gx, batch, channels, positions)
    sum_g, sum_gxhat = xp.empty(channels, x.dtype), xp.empty(channels, x.dtype)
    one = x.dtype.type(1)
    _kernels("batch_norm_reduce", x.dtype)(channels, planes_g, sum_g, batch, one)
    _kernels("batch_norm_reduce", x.dtype)(channels, planes_gx, sum_gxhat, batch, one)
    grad_x = None
    if need_x:
        grad_x = xp.empty_like(x)
        _kernels("batch_norm_backward_apply", x.dtype)(
            x.size, g, x, mean, invstd, gamma, sum_g, sum_gxhat, grad_x, channels, positions,
            count, training)
    return grad_x, sum_g, sum_gxhat


# -- the Function ---------------------------------------------------------------------------------

class BatchNormFunction(Function):
    def forward(self, x, weight, bias, running_mean=None, running_var=None, training=False,
                momentum=0.1, eps=1e-5):
        xp = backend.array_module(x)
        self.shape = x.shape
        n, c = x.shape[:2]
        x = xp.ascontiguousarray(x).reshape(n, c, x.size // (n * c) if n * c else 0)
        real = x.dtype.type
        count = x.shape[0] * x.shape[2]
        batch_statistics = training or running_mean is None
        if batch_statistics:
            if count <= 1:
                raise ValueError(f"{OP}: batch statistics need more than 1 value per channel, got "
                                 f"input shape {tuple(self.shape)}")
            statistics = backend.pick(x, cpu=_statistics_cpu, cuda=_statistics_cuda)
            mean, var = statistics(x, real(count))
            if training and running_mean is not None:
                running_mean[...] = momentum * mean + (1 - momentum) * running_mean
                unbiased = var * real(count / (count - 1))
                running_var[...] = momentum * unbiased + (1 - momentum) * running_var
        else:
            mean = xp.ascontiguousarray(running_mean, dtype=x.dtype)
            var = xp.ascontiguousarray(running_var, dtype=x.dtype)
        invstd = 1 / xp.sqrt(var + real(eps))
        gamma = xp.ones(c, x.dtype) if weight is None else xp.ascontiguousarray(weight)
        beta = xp.zeros(c, x.dtype) if bias is None else xp.ascontiguousarray(bias)
        normalize = backend.pick(x, cpu=_normalize_cpu, cuda=_normalize_cuda)
        y = normalize(x, mean, invstd, gamma, beta)
        self.batch_statistics, self.count = batch_statistics, real(count)
        self.save_for_backward(x, mean, invstd, gamma)
        return y.reshape(self.shape)

    def backward(self, grad_y):
        x, mean, invstd, gamma = self.saved
        xp = backend.array_module(x)
        g = xp.ascontiguousarray(grad_y, dtype=x.dtype).reshape(x.shape)
        backward = backend.pick(x, cpu=_backward_cpu, cuda=_backward_cuda)
        grad_x, sum_g, sum_gxhat = backward(g, x, mean, invstd, gamma, self.count,
                                            self.batch_statistics, bool(self.needs_input_grad[0]))
        grad_x = None if grad_x is None else grad_x.reshape(self.shape)
        return grad_x, sum_gxhat, sum_g


def _statistic(name, value, like, channels):
    """A running statistic as the array the Function updates in place (a Tensor's own data)."""
    if value is None:
        return None
    array = value.data if isinstance(value, Tensor) else value
    checks.float_array(OP, name, array)
    if tuple(array.shape) != (channels,):
        raise ValueError(f"{OP}: {name} must have one value per channel, shape ({channels},), "
                         f"got {tuple(array.shape)}")
    if array.dtype != like.dtype or backend.array_module(array) is not backend.array_module(like):
        raise TypeError(f"{OP}: {name} must be a {like.dtype} array on the input's device")
    return array


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalisation of ``x`` (N, C) or (N, C, ...), as ``torch.nn.functional.batch_norm``.

    With ``training`` (or without running statistics) it normalises by the batch's own mean
    and variance per channel, and -- if ``running_mean``/``running_var`` are given -- updates
    them in place with ``momentum``; otherwise it uses the running statistics. ``weight``
    (gamma) and ``bias`` (beta) are (C,) tensors or None. See the module docstring.
    """
    data = x.data if isinstance(x, Tensor) else x
    checks.float_array(OP, "input", data)
    if data.ndim < 2:
        raise ValueError(f"{OP}: input must be (N, C) or (N, C, ...), got shape {tuple(data.shape)}")
    channels = data.shape[1]
    running_mean = _statistic("running_mean", running_mean, data, channels)
    running_var = _statistic("running_var", running_var, data, channels)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{OP}: pass both running_mean and running_var, or neither")
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None:
            array = value.data if isinstance(value, Tensor) else value
            checks.float_array(OP, name, array)
            checks.same_dtype(OP, input=data, **{name: array})
            if tuple(array.shape) != (channels,):
                raise ValueError(f"{OP}: {name} must have one value per channel, shape "
                                 f"({channels},), got {tuple(array.shape)}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
        raise ValueError(f"{OP}: momentum must be a number in [0, 1], got {momentum!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"{OP}: eps must be a number >= 0, got {eps!r}")
    return BatchNormFunction.apply(x, weight, bias, running_mean=running_mean,
                                   running_var=running_var, training=bool(training),
                                   momentum=float(momentum), eps=float(eps))
