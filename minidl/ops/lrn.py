"""Local response normalisation across channels (AlexNet, section 3.3).

For an input a of shape (N, C, H, W), at every pixel, channel i is divided by a power of the
sum of squares over a window of ``size`` neighbouring channels::

    s[i] = k + alpha * sum_{j in window(i)} a[j]^2          (the "scale")
    b[i] = a[i] / s[i]^beta
    window(i) = channels i - size//2 ... i + (size-1)//2, clipped to [0, C-1]

For odd ``size`` (AlexNet: 5) the window is the paper's symmetric ``i - n/2 ... i + n/2``.
For even ``size`` it holds ``size`` channels, one more before i than after, exactly as in
``torch.nn.functional.local_response_norm`` (the paper's formula, written for odd n, would sum
n + 1 channels there).

``convention="paper"`` (the default) uses alpha as written above. ``convention="caffe"``
multiplies the sum by ``alpha / size`` instead -- what Caffe and ``torch.nn.LocalResponseNorm``
do -- so the paper's AlexNet layer (alpha = 1e-4) is ``size=5, alpha=5e-4,
convention="caffe"``. Everything below holds for either with alpha replaced by alpha / size.

Backward. With g = dL/db and the window mirrored (``i such that j is in window(i)``, i.e.
``i = j - (size-1)//2 ... j + size//2``)::

    dL/da[j] = g[j] * s[j]^-beta
               - 2 * alpha * beta * a[j] * sum_{i : j in window(i)} g[i] * a[i] * s[i]^(-beta-1)

the first term from a[j] in the numerator of b[j], the second from a[j]^2 inside s[i] of
every output i whose window holds j (ds[i]/da[j] = 2 alpha a[j]). For odd sizes the mirrored
window is the window itself. ``local_response_norm_simple`` and its backward below compute
both formulas by plain loops.

Forward saves s (one more array the size of the input) when a gradient will be needed, and
backward reads it: recomputing s in backward measured slower on AlexNet's shapes, and reading
it keeps the backward kernels simpler and spares each GPU thread size^2 loads.

The GPU kernels compute the formulas as written: one thread per output element sums its own
window. The CPU kernels are a different algorithm with the same result -- running window sums
-- so that each element is read from memory once and the sums cost O(1) per element whatever
the size: a task owns one image n and a run of pixels and walks the channels in
order, adding the channel that enters the window and subtracting the one that leaves (in
float64, so the subtraction does not drift; everything else stays in the input's dtype).
To read the formula as code, start from ``local_response_norm_simple``.
"""
import numpy as np
from numba import njit

from .. import backend, cpu, cuda
from ..tensor import Function, is_grad_enabled
from . import checks

_kernels = cuda.KernelFile(__file__)

OP = "local_response_norm"
CONVENTIONS = ("paper", "caffe")


# -- simple version: the definition in plain loops ------------------------------------------------

def _window(i, size, channels):
    """Channels in the window of channel i: size//2 before, (size-1)//2 after, clipped."""
    return range(max(0, i - size // 2), min(channels - 1, i + (size - 1) // 2) + 1)


def local_response_norm_simple(x, size, alpha, beta, k):
    """b[i] = a[i] / (k + alpha * sum over the window of a[j]^2) ** beta, in float64 loops
    (the paper's convention: pass alpha / size for Caffe's)."""
    n, c, h, w = x.shape
    y = np.empty(x.shape)
    for b in range(n):
        for i in range(c):
            for r in range(h):
                for q in range(w):
                    s = k + alpha * sum(float(x[b, j, r, q]) ** 2 for j in _window(i, size, c))
                    y[b, i, r, q] = x[b, i, r, q] / s ** beta
    return y


def local_response_norm_backward_simple(x, grad_y, size, alpha, beta, k):
    """dL/da[j] = g[j] s[j]^-beta - 2 alpha beta a[j] sum_{i: j in window(i)} g[i] a[i] s[i]^(-beta-1)."""
    n, c, h, w = x.shape
    s = np.empty(x.shape)
    for b in range(n):
        for i in range(c):
            for r in range(h):
                for q in range(w):
                    s[b, i, r, q] = k + alpha * sum(x[b, j, r, q] ** 2 for j in _window(i, size, c))
    grad_x = np.empty(x.shape)
    for b in range(n):
        for j in range(c):
            for r in range(h):
                for q in range(w):
                    total = sum(grad_y[b, i, r, q] * x[b, i, r, q] * s[b, i, r, q] ** (-beta - 1)
                                for i in range(c) if j in _window(i, size, c))
                    grad_x[b, j, r, q] = (grad_y[b, j, r, q] * s[b, j, r, q] ** -beta
                                          - 2 * alpha * beta * x[b, j, r, q] * total)
    return grad_x


# -- CPU kernels (Numba): running window sums -----------------------------------------------------

@njit(inline="always", cache=True)
def _power(s, beta, three_quarters):
    # s^beta. AlexNet's beta = 3/4 is two square roots, much cheaper than pow; the flag is a
    # literal at each call site so each loop is compiled without the test.
    if three_quarters:
        return np.sqrt(s * np.sqrt(s))
    return s ** beta


def _split_pixels(batch, pixels):
    """(pixels per task, tasks): whole planes when the batch alone gives every thread work."""
    tasks_per_image = -(-4 * cpu.num_threads() // max(batch, 1))
    chunk = max(min(pixels, 256), -(-pixels // tasks_per_image), 1)
    return chunk, batch * -(-pixels // chunk)


@cpu.kernel
def _forward_cpu_kernel(first, stop, x, y, scale, save_scale, before, after, alpha, beta, k,
                        chunk):
    # y[n, c, p] = x[n, c, p] / s^beta, s = k + alpha * sum of x[n, j, p]^2 over
    # j = c - before ... c + after. One task owns image n and pixels p0 ... p0 + m, and
    # walks t over the channels: channel t enters the running sum, t - size leaves it, and
    # then the sum is complete for c = t - after. x, y, scale are (N, C, H*W).
    batch, channels, pixels = x.shape
    size = before + after + 1
    n_chunks = (pixels + chunk - 1) // chunk
    three_quarters = beta == 0.75
    for task in range(first, stop):
        n = task // n_chunks
        p0 = (task % n_chunks) * chunk
        m = min(p0 + chunk, pixels) - p0
        window_sum = np.zeros(m, np.float64)
        s = np.empty(m, x.dtype)
        for t in range(channels + after):
            if t < channels:
                row = x[n, t, p0:p0 + m]
                for q in range(m):
                    window_sum[q] += row[q] * row[q]
            if t >= size:
                row = x[n, t - size, p0:p0 + m]
                for q in range(m):
                    window_sum[q] -= row[q] * row[q]
            c = t - after
            if c < 0:
                continue
            for q in range(m):
                s[q] = window_sum[q]  # back to x's dtype before the arithmetic
                s[q] = k + alpha * s[q]
            if save_scale:
                saved = scale[n, c]
                for q in range(m):
                    saved[p0 + q] = s[q]
            x_row, y_row = x[n, c, p0:p0 + m], y[n, c, p0:p0 + m]
            if three_quarters:
                for q in range(m):
                    y_row[q] = x_row[q] / _power(s[q], beta, True)
            else:
                for q in range(m):
                    y_row[q] = x_row[q] / _power(s[q], beta, False)


@cpu.kernel
def _backward_cpu_kernel(first, stop, grad_y, x, scale, grad_x, before, after, beta,
                         two_alpha_beta, chunk):
    # grad_x[j] = g[j] / s[j]^beta - 2 alpha beta x[j] * R[j], R[j] = sum of
    # r[i] = g[i] x[i] / (s[i]^beta s[i]) over i = j - after ... j + before (the mirrored
    # window), all at one (n, pixel). Task split as in forward: channel t's r enters the
    # running sum R, t - size leaves it, then R is complete for j = t - before. r and s^beta
    # are kept in small ring buffers (size + 1 channels) so each is computed once.
    batch, channels, pixels = x.shape
    size = before + after + 1
    ring = size + 1
    n_chunks = (pixels + chunk - 1) // chunk
    three_quarters = beta == 0.75
    for task in range(first, stop):
        n = task // n_chunks
        p0 = (task % n_chunks) * chunk
        m = min(p0 + chunk, pixels) - p0
        window_sum = np.zeros(m, np.float64)
        r_ring = np.empty((ring, m), x.dtype)
        power_ring = np.empty((ring, m), x.dtype)
        total = np.empty(m, x.dtype)
        for t in range(channels + before):
            if t < channels:
                s_row, g_row, x_row = scale[n, t, p0:p0 + m], grad_y[n, t, p0:p0 + m], x[n, t, p0:p0 + m]
                power, r = power_ring[t % ring], r_ring[t % ring]
                if three_quarters:
                    for q in range(m):
                        power[q] = _power(s_row[q], beta, True)
                else:
                    for q in range(m):
                        power[q] = _power(s_row[q], beta, False)
                for q in range(m):
                    r[q] = g_row[q] * x_row[q] / (power[q] * s_row[q])
                    window_sum[q] += r[q]
            if t >= size:
                r = r_ring[(t - size) % ring]
                for q in range(m):
                    window_sum[q] -= r[q]
            j = t - before
            if j < 0:
                continue
            power = power_ring[j % ring]
            g_row, x_row, out = grad_y[n, j, p0:p0 + m], x[n, j, p0:p0 + m], grad_x[n, j, p0:p0 + m]
            for q in range(m):
                total[q] = window_sum[q]  # back to x's dtype before the arithmetic
                out[q] = g_row[q] / power[q] - two_alpha_beta * x_row[q] * total[q]


# -- drivers: one per device, same signature ------------------------------------------------------

def _forward_cpu(x, before, after, alpha, beta, k, save_scale):
    n, c, h, w = x.shape
    y = np.empty_like(x)
    scale = np.empty_like(x) if save_scale else np.empty((0, 0, 0), x.dtype)
    flat = (n, c, h * w)
    chunk, tasks = _split_pixels(n, h * w)
    _forward_cpu_kernel(tasks, x.reshape(flat), y.reshape(flat),
                        scale.reshape(flat) if save_scale else scale, save_scale,
                        before, after, alpha, beta, k, chunk)
    return y, (scale if save_scale else None)


def _backward_cpu(grad_y, x, scale, before, after, beta, two_alpha_beta):
    n, c, h, w = x.shape
    grad_x = np.empty_like(x)
    flat = (n, c, h * w)
    chunk, tasks = _split_pixels(n, h * w)
    _backward_cpu_kernel(tasks, grad_y.reshape(flat), x.reshape(flat), scale.reshape(flat),
                         grad_x.reshape(flat), before, after, beta, two_alpha_beta, chunk)
    return grad_x


def _forward_cuda(x, before, after, alpha, beta, k, save_scale):
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    y = xp.empty_like(x)
    scale = xp.empty_like(x) if save_scale else xp.empty(1, x.dtype)  # unused placeholder
    _kernels("lrn_forward", x.dtype)(x.size, x, y, scale, save_scale, c, h * w, before, after,
                                     alpha, beta, k)
    return y, (scale if save_scale else None)


def _backward_cuda(grad_y, x, scale, before, after, beta, two_alpha_beta):
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    grad_x = xp.empty_like(x)
    _kernels("lrn_backward", x.dtype)(x.size, grad_y, x, scale, grad_x, c, h * w, before, after,
                                      beta, two_alpha_beta)
    return grad_x


# -- the Function ---------------------------------------------------------------------------------

class LocalResponseNormFunction(Function):
    def forward(self, x, size=5, alpha=1e-4, beta=0.75, k=2.0, convention="paper"):
        checks.float_array(OP, "input", x)
        if x.ndim < 3:
            raise ValueError(f"{OP}: input must have at least 3 dimensions (N, C, ...), "
                             f"got shape {tuple(x.shape)}")
        # (N, C, any spatial dims) as the (N, C, P, 1) the drivers take: the window runs over
        # channels only, at each of the P positions.
        self.input_shape = tuple(x.shape)
        x = x.reshape(x.shape[0], x.shape[1], int(np.prod(x.shape[2:], dtype=np.int64)), 1)
        size = checks.integer(OP, "size", size, 1)
        if convention not in CONVENTIONS:
            raise ValueError(f"{OP}: convention must be 'paper' (alpha multiplies the sum of "
                             f"squares) or 'caffe' (alpha / size does), got {convention!r}")
        if convention == "caffe":
            alpha = alpha / size
        real = x.dtype.type  # constants in x's dtype, so float32 stays float32
        self.window = (size // 2, (size - 1) // 2)  # channels before and after i
        self.beta, self.two_alpha_beta = real(beta), real(2 * alpha * beta)
        save_scale = is_grad_enabled() and bool(self.needs_input_grad[0])
        xp = backend.array_module(x)
        x = xp.ascontiguousarray(x)
        forward = backend.pick(x, cpu=_forward_cpu, cuda=_forward_cuda)
        y, scale = forward(x, *self.window, real(alpha), real(beta), real(k), save_scale)
        if save_scale:
            self.save_for_backward(x, scale)
        return y.reshape(self.input_shape)

    def backward(self, grad_y):
        x, scale = self.saved
        xp = backend.array_module(x)
        grad_y = xp.ascontiguousarray(grad_y, dtype=x.dtype).reshape(x.shape)
        backward = backend.pick(x, cpu=_backward_cpu, cuda=_backward_cuda)
        grad_x = backward(grad_y, x, scale, *self.window, self.beta, self.two_alpha_beta)
        return grad_x.reshape(self.input_shape)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=2.0, convention="paper"):
    """Local response normalisation across the channels of ``x`` (N, C, H, W), or of any
    (N, C, ...) with at least 3 dimensions, as ``torch.nn.functional.local_response_norm``.

    ``b[i] = a[i] / (k + alpha * sum_{j in window(i)} a[j]^2) ** beta`` at every pixel, the
    window being the ``size`` channels ``i - size//2 ... i + (size-1)//2`` (clipped at the
    edges; for odd size the paper's symmetric window). AlexNet: ``size=5, alpha=1e-4,
    beta=0.75, k=2``. ``convention="caffe"`` uses ``alpha / size`` in place of alpha, as
    Caffe and ``torch.nn.LocalResponseNorm`` do. The gradient
    (see the module docstring for its derivation)::

        dL/da[j] = g[j] * s[j]^-beta
                   - 2 alpha beta a[j] sum_{i : j in window(i)} g[i] a[i] s[i]^(-beta-1)

    with ``s = k + alpha * sum(a^2)`` over the window and ``g = dL/db``.
    """
    return LocalResponseNormFunction.apply(x, size=size, alpha=alpha, beta=beta, k=k,
                                           convention=convention)
