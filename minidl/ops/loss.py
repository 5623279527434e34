"""Losses and the softmax family, all in numerically stable form.

softmax_cross_entropy(logits (N, K), labels (N,)) -- mean over the batch of

    loss[r] = logsumexp(x[r]) - x[r, label[r]] = (m[r] - x[r, label[r]]) + log(sum_j exp(x[r, j] - m[r]))

with m[r] = max_j x[r, j], so no exp ever sees a positive argument: logits of 1e4 (or 1e30)
give a finite loss. The difference m - x[label] is formed first, before adding the small
log-sum, so it keeps full precision even when the logits themselves are huge. Backward:

    dL/dx[r, j] = g * (softmax(x[r])_j - [j == label[r]]) / N,  softmax_j = exp((x_j - m) - log_sum)

Forward saves m and log_sum per row (2N numbers) and recomputes the probabilities in backward,
instead of keeping an N x K probability array alive. CPU: NumPy. GPU: ``loss.cu`` -- one thread
per row for the max / log-sum-exp / row loss (each row is a sequential reduction), one thread
per element for the gradient (independent elements, so the whole GPU is busy). The batch mean
of the N row losses is an ``xp.mean``.

The ``*_simple`` functions below compute each loss and its gradient by plain loops in Python
floats: the definitions the kernels are tested against.

binary_cross_entropy_with_logits(logits, targets) -- mean over all elements of

    l = max(x, 0) - x * t + log1p(exp(-|x|))     (= -t log s(x) - (1 - t) log(1 - s(x)))
    dL/dx = g * (sigmoid(x) - t) / numel,  dL/dt = -g * x / numel

log_softmax(x, axis) and softmax(x, axis): the same max-shift, for any axis of any array,
written once against ``xp`` (CuPy runs them as its own fused elementwise/reduction kernels):

    log_softmax: y = (x - m) - log(sum exp(x - m)),   dx = g - exp(y) * sum(g)
    softmax:     y = exp(x - m) / sum exp(x - m),     dx = y * (g - sum(g * y))
"""
import math

import numpy as np

from .. import backend, cuda
from ..tensor import Function, Tensor
from . import checks

_kernels = cuda.KernelFile(__file__)


# -- simple versions: the definitions in plain loops (Python floats) ------------------------------

def log_sum_exp_simple(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def softmax_cross_entropy_simple(logits, labels):
    """(loss, dloss/dlogits) in float64 for logits (N, K) and N integer labels."""
    n, k = logits.shape
    loss, grad = 0.0, np.zeros((n, k))
    for r in range(n):
        row = [float(v) for v in logits[r]]
        m = max(row)
        total = sum(math.exp(v - m) for v in row)
        # (m - x_label) first: with logits of 1e30, m + log(total) would round log(total) away
        loss += (m - row[labels[r]]) + math.log(total)
        for j in range(k):
            grad[r, j] = (math.exp(row[j] - m) / total - (1.0 if j == labels[r] else 0.0)) / n
    return loss / n, grad


def binary_cross_entropy_with_logits_simple(logits, targets):
    """(loss, dloss/dlogits) in float64: the mean of -t log s(x) - (1 - t) log(1 - s(x))."""
    flat_x, flat_t = logits.reshape(-1).tolist(), targets.reshape(-1).tolist()
    n = len(flat_x)
    loss, grad = 0.0, np.zeros(n)
    for i, (x, t) in enumerate(zip(flat_x, flat_t)):
        # log s(x) = -log(1 + e^-x) and log(1 - s(x)) = -log(1 + e^x), each done stably
        log_s = -log_sum_exp_simple([0.0, -x])
        log_one_minus_s = -log_sum_exp_simple([0.0, x])
        loss += -t * log_s - (1 - t) * log_one_minus_s
        grad[i] = (math.exp(log_s) - t) / n
    return loss / n, grad.reshape(logits.shape)


def log_softmax_simple(x, axis):
    """log(softmax(x)) along ``axis``, in float64, one row at a time."""
    moved = np.moveaxis(x.astype(np.float64), axis, -1)
    out = np.empty(moved.shape)
    for index in np.ndindex(moved.shape[:-1]):
        row = moved[index].tolist()
        lse = log_sum_exp_simple(row)
        out[index] = [v - lse for v in row]
    return np.moveaxis(out, -1, axis)


# -- helpers --------------------------------------------------------------------------------------

def _on_device_of(value, like):
    """``value`` (an array, list or Tensor) as an array on the device of the array ``like``."""
    if isinstance(value, Tensor):
        value = value.data
    if backend.array_module(like) is np:
        return backend.to_numpy(value)
    return backend.array_module(like).asarray(value)


def _scalar_buffer(g, dtype):
    """The incoming gradient of a scalar loss as a 1-element device array: kernels read it
    through a pointer, so the GPU never waits for it to be copied to the host."""
    xp = backend.array_module(g)
    return xp.ascontiguousarray(xp.asarray(g, dtype=dtype).reshape(1))


# -- softmax cross-entropy: drivers, one per device, same signature -------------------------------

def _cross_entropy_forward_cpu(logits, labels):
    """(row_loss, row_max, log_sum), one of each per row."""
    n = logits.shape[0]
    row_max = logits.max(axis=1)
    e = logits - row_max[:, None]
    np.exp(e, out=e)
    log_sum = np.log(e.sum(axis=1))
    row_loss = (row_max - logits[np.arange(n), labels]) + log_sum
    return row_loss, row_max, log_sum


def _cross_entropy_forward_cuda(logits, labels):
    xp = backend.array_module(logits)
    n, k = logits.shape
    row_loss, row_max, log_sum = (xp.empty(n, dtype=logits.dtype) for _ in range(3))
    _kernels("softmax_cross_entropy_forward", logits.dtype)(
        n, logits, labels, row_loss, row_max, log_sum, k)
    return row_loss, row_max, log_sum


def _cross_entropy_backward_cpu(logits, labels, row_max, log_sum, g):
    n = logits.shape[0]
    grad = logits - row_max[:, None]
    grad -= log_sum[:, None]
    np.exp(grad, out=grad)  # softmax, recomputed from the saved row statistics
    grad[np.arange(n), labels] -= 1
    grad *= g / n
    return grad


def _cross_entropy_backward_cuda(logits, labels, row_max, log_sum, g):
    xp = backend.array_module(logits)
    n, k = logits.shape
    grad = xp.empty(logits.shape, dtype=logits.dtype)
    _kernels("softmax_cross_entropy_backward", logits.dtype)(
        n * k, logits, labels, row_max, log_sum, _scalar_buffer(g, logits.dtype), grad, n, k)
    return grad


class SoftmaxCrossEntropyFunction(Function):
    def forward(self, logits, labels):
        op = "softmax_cross_entropy"
        checks.float_array(op, "logits", logits, ndim=2, layout="N examples, K classes")
        n, k = logits.shape
        if n == 0 or k == 0:
            raise ValueError(f"{op}: logits of shape {tuple(logits.shape)} are empty; the mean "
                             "over the batch needs at least one example and one class")
        checks.class_labels(op, labels, n, k)
        xp = backend.array_module(logits)
        logits = xp.ascontiguousarray(logits)
        labels = xp.ascontiguousarray(labels, dtype=np.int64)
        forward = backend.pick(logits, cpu=_cross_entropy_forward_cpu,
                               cuda=_cross_entropy_forward_cuda)
        row_loss, row_max, log_sum = forward(logits, labels)
        self.save_for_backward(logits, labels, row_max, log_sum)
        return xp.mean(row_loss)

    def backward(self, g):
        logits = self.saved[0]
        backward = backend.pick(logits, cpu=_cross_entropy_backward_cpu,
                                cuda=_cross_entropy_backward_cuda)
        return backward(*self.saved, g), None


def softmax_cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[label].

    ``logits``: float tensor (N, K). ``labels``: N integer class indices in [0, K) -- a NumPy
    or CuPy integer array, a list, or an integer Tensor; moved to the logits' device if needed.
    Returns a 0-d tensor.
    """
    data = logits.data if isinstance(logits, Tensor) else logits
    if not hasattr(data, "dtype"):
        raise TypeError(f"softmax_cross_entropy: logits must be a float tensor, got {type(logits).__name__}")
    return SoftmaxCrossEntropyFunction.apply(logits, _on_device_of(labels, data))


# -- binary cross-entropy with logits: drivers, one per device, same signature --------------------

def _bce_forward_cpu(logits, targets):
    """The elementwise losses max(x, 0) - x * t + log1p(exp(-|x|))."""
    elementwise = np.abs(logits)
    np.negative(elementwise, out=elementwise)
    np.exp(elementwise, out=elementwise)
    np.log1p(elementwise, out=elementwise)
    elementwise -= logits * targets
    elementwise += np.maximum(logits, logits.dtype.type(0))
    return elementwise


def _bce_forward_cuda(logits, targets):
    elementwise = backend.array_module(logits).empty(logits.shape, dtype=logits.dtype)
    _kernels("bce_with_logits_forward", logits.dtype)(logits.size, logits, targets, elementwise)
    return elementwise


def _bce_backward_cpu(logits, targets, g):
    grad = np.negative(logits)
    with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0 gives sigmoid 0
        np.exp(grad, out=grad)
    grad += 1
    np.reciprocal(grad, out=grad)
    grad -= targets
    grad *= g / logits.size
    return grad


def _bce_backward_cuda(logits, targets, g):
    grad = backend.array_module(logits).empty(logits.shape, dtype=logits.dtype)
    _kernels("bce_with_logits_backward", logits.dtype)(
        logits.size, logits, targets, _scalar_buffer(g, logits.dtype), grad)
    return grad


class BinaryCrossEntropyWithLogitsFunction(Function):
    def forward(self, logits, targets):
        op = "binary_cross_entropy_with_logits"
        checks.float_array(op, "logits", logits)
        checks.float_array(op, "targets", targets)
        checks.same_dtype(op, logits=logits, targets=targets)
        if targets.shape != logits.shape:
            raise ValueError(f"{op}: targets must have the shape of the logits, "
                             f"{tuple(logits.shape)}, got {tuple(targets.shape)}")
        if logits.size == 0:
            raise ValueError(f"{op}: logits are empty (shape {tuple(logits.shape)}); "
                             "the mean needs at least one element")
        if float(targets.min()) < 0 or float(targets.max()) > 1:
            raise ValueError(f"{op}: targets must lie in [0, 1] (probabilities), got values from "
                             f"{float(targets.min())} to {float(targets.max())}")
        xp = backend.array_module(logits)
        logits, targets = xp.ascontiguousarray(logits), xp.ascontiguousarray(targets)
        forward = backend.pick(logits, cpu=_bce_forward_cpu, cuda=_bce_forward_cuda)
        elementwise = forward(logits, targets)
        self.save_for_backward(logits, targets)
        return xp.mean(elementwise)

    def backward(self, g):
        logits, targets = self.saved
        grad_logits = grad_targets = None
        if self.needs_input_grad[0]:
            backward = backend.pick(logits, cpu=_bce_backward_cpu, cuda=_bce_backward_cuda)
            grad_logits = backward(logits, targets, g)
        if self.needs_input_grad[1]:
            grad_targets = logits * (-g / logits.size)
        return grad_logits, grad_targets


def binary_cross_entropy_with_logits(logits, targets):
    """Mean over all elements of the binary cross-entropy between sigmoid(logits) and targets.

    ``targets`` has the logits' shape, values in [0, 1]. A Tensor of targets must share the
    logits' dtype (it may require a gradient); a plain array or list is converted to the
    logits' dtype and device (so integer or float64 one-hot arrays work as they are).
    Returns a 0-d tensor.
    """
    data = logits.data if isinstance(logits, Tensor) else logits
    if not hasattr(data, "dtype"):
        raise TypeError(f"binary_cross_entropy_with_logits: logits must be a float tensor, "
                        f"got {type(logits).__name__}")
    if not isinstance(targets, Tensor):
        targets = _on_device_of(targets, data)
        if targets.dtype.kind not in "biuf":
            raise TypeError(f"binary_cross_entropy_with_logits: targets must be numbers in [0, 1], "
                            f"got dtype {targets.dtype}")
        if data.dtype in checks.FLOATS:
            targets = targets.astype(data.dtype, copy=False)
        targets = Tensor(targets)
    return BinaryCrossEntropyWithLogitsFunction.apply(logits, targets)


# -- softmax and log-softmax along any axis: one code for both devices, on xp ---------------------

def _check_axis(op, x, axis):
    checks.float_array(op, "input", x)
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) \
            or not -x.ndim <= axis < max(x.ndim, 1) or x.ndim == 0:
        raise ValueError(f"{op}: axis must be an integer in [{-x.ndim}, {x.ndim - 1}] for an "
                         f"input of shape {tuple(x.shape)}, got {axis!r}")
    if x.shape[axis] == 0:
        raise ValueError(f"{op}: axis {axis} of shape {tuple(x.shape)} is empty; "
                         "softmax needs at least one entry")


def _shifted(x, axis):
    """x - max(x, axis): every exp below sees arguments <= 0 and cannot overflow."""
    return x - x.max(axis=axis, keepdims=True)


class LogSoftmaxFunction(Function):
    def forward(self, x, axis):
        _check_axis("log_softmax", x, axis)
        xp = backend.array_module(x)
        self.axis = axis
        y = _shifted(x, axis)
        y -= xp.log(xp.exp(y).sum(axis=axis, keepdims=True))
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        xp = backend.array_module(y)
        return g - xp.exp(y) * g.sum(axis=self.axis, keepdims=True), None


class SoftmaxFunction(Function):
    def forward(self, x, axis):
        _check_axis("softmax", x, axis)
        xp = backend.array_module(x)
        self.axis = axis
        y = _shifted(x, axis)
        xp.exp(y, out=y)
        y /= y.sum(axis=axis, keepdims=True)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return y * (g - (g * y).sum(axis=self.axis, keepdims=True)), None


def log_softmax(x, axis=-1):
    """log(softmax(x)) along ``axis``, computed without forming softmax (no log(0))."""
    return LogSoftmaxFunction.apply(x, axis)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, shifted by the max so it never overflows."""
    return SoftmaxFunction.apply(x, axis)
