"""Losses and the softmax family, all in numerically stable form, with PyTorch's options.

cross_entropy(logits, target) (also named softmax_cross_entropy), as
``torch.nn.functional.cross_entropy``. Logits are (N, K), (N, K, d1, ...) -- the class axis
second -- or unbatched (K,). The target is either class indices (N,) / (N, d1, ...) / (), or
class probabilities of the logits' shape. Every position r (a row once the class axis is
moved last) has a loss that is a weighted sum of -log softmax:

    loss[r] = sum_c q[r, c] * (logsumexp(x[r]) - x[r, c])
            = sum_c q[r, c] * ((m[r] - x[r, c]) + log(sum_j exp(x[r, j] - m[r])))

with m[r] = max_j x[r, j], so no exp ever sees a positive argument: logits of 1e4 (or 1e30)
give a finite loss, and the difference m - x keeps full precision. The weights q say what the
options mean (w = ``weight``, 1 if None; eps = ``label_smoothing``):

    class index y:   q[r, c] = (1 - eps) w[y] [c == y] + (eps / K) w[c],  0 if y == ignore_index
    probabilities t: q[r, c] = w[c] (t[r, c] (1 - eps) + eps / K)

``reduction="mean"`` divides the sum of the losses by sum_r w[y[r]] over the positions not
ignored (class indices) or by the number of positions (probabilities); ``"sum"`` adds them;
``"none"`` returns them. Backward, with S[r] = sum_c q[r, c] and p = softmax(x[r]):

    dloss[r]/dx[r, j] = S[r] p[j] - q[r, j]          dloss[r]/dt[r, c] = -(1 - eps) w[c] log p[c]

Forward saves m and log_sum per row (2 numbers) and recomputes the probabilities in backward
instead of keeping an N x K probability array. CPU: NumPy. GPU: ``loss.cu`` -- for class
indices, each row's max and sum of exponentials in two steps, first ``ROW_PARTS`` (32) threads
per row over interleaved columns, then one thread per row combining their partials into the
row's statistics and loss; for probabilities one thread per row; one thread per element for
the gradient. The GPU's sums are therefore formed in another order than NumPy's: equal up to
rounding.

Labels are checked (integers in [0, K) or ``ignore_index``) where they are: labels on the host
before they are copied to the GPU, so nothing waits for the GPU to check them. Labels already
on the GPU are not read back mid-step; a label out of range there gives a NaN loss for its row
(and NaN gradients), never an out-of-bounds read; ``fit``, which keeps the batch's labels on
the host, then names the label. BCE targets likewise are checked to lie in
[0, 1] on the host, and not when they arrive on the GPU.

binary_cross_entropy_with_logits(logits, targets, weight, pos_weight) -- per element, with
w = ``weight`` and pw = ``pos_weight`` broadcast to the logits (1 if None):

    l  = w ((1 - t) x + lw (log1p(exp(-|x|)) + max(-x, 0))),  lw = 1 + (pw - 1) t
       = w (max(x, 0) - x t + log1p(exp(-|x|)))                without pos_weight
    dl/dx = w (lw sigmoid(x) - pw t),   dl/dt = w (-x - (pw - 1) log sigmoid(x))

then reduced by mean (over all elements), sum or none.

log_softmax(x, dim) and softmax(x, dim): the same max-shift, for any axis of any array
(a 0-d input is one entry), written once against ``xp``:

    log_softmax: y = (x - m) - log(sum exp(x - m)),   dx = g - exp(y) * sum(g)
    softmax:     y = exp(x - m) / sum exp(x - m),     dx = y * (g - sum(g * y))

The ``*_simple`` functions compute each loss and its gradient by plain loops in Python floats:
the definitions the kernels are tested against.
"""
import math

import numpy as np

from .. import backend, cuda
from ..tensor import Function, Tensor
from . import checks

_kernels = cuda.KernelFile(__file__)

REDUCTIONS = ("mean", "sum", "none")
ROW_PARTS = 32  # threads per row in the GPU's cross-entropy forward: a warp's worth


# -- simple versions: the definitions in plain loops (Python floats) ------------------------------

def log_sum_exp_simple(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def _reduce_simple(losses, grad, denominator, reduction):
    if reduction == "mean":
        return sum(losses) / denominator, grad / denominator
    if reduction == "sum":
        return sum(losses), grad
    return np.array(losses), grad


def cross_entropy_simple(logits, target, weight=None, ignore_index=-100, reduction="mean",
                         label_smoothing=0.0):
    """(loss, dloss/dlogits) in float64 for logits (N, K) and N class indices or (N, K)
    probabilities; for ``reduction="none"`` the N losses and the gradient of their sum."""
    n, k = logits.shape
    w = [1.0] * k if weight is None else [float(v) for v in weight]
    eps = label_smoothing
    probabilities = np.asarray(target).dtype.kind == "f"
    losses, grad, denominator = [], np.zeros((n, k)), 0.0 if not probabilities else float(n)
    for r in range(n):
        row = [float(v) for v in logits[r]]
        m = max(row)
        total = sum(math.exp(v - m) for v in row)
        if probabilities:
            q = [w[c] * (float(target[r][c]) * (1 - eps) + eps / k) for c in range(k)]
        elif int(target[r]) == ignore_index:
            q = [0.0] * k
        else:
            y = int(target[r])
            q = [(1 - eps) * w[c] * (c == y) + eps / k * w[c] for c in range(k)]
            denominator += w[y]
        # (m - x) first: with logits of 1e30, m + log(total) would round log(total) away
        losses.append(sum(q[c] * ((m - row[c]) + math.log(total)) for c in range(k)))
        for j in range(k):
            grad[r, j] = sum(q) * math.exp(row[j] - m) / total - q[j]
    return _reduce_simple(losses, grad, denominator, reduction)


def softmax_cross_entropy_simple(logits, labels):
    """(mean loss, its gradient) for class indices and no options."""
    return cross_entropy_simple(logits, labels)


def binary_cross_entropy_with_logits_simple(logits, targets, weight=None, pos_weight=None,
                                            reduction="mean"):
    """(loss, dloss/dlogits) in float64: -w (pw t log s(x) + (1 - t) log(1 - s(x))) per element;
    for ``reduction="none"`` the elementwise losses and the gradient of their sum."""
    w = np.broadcast_to(1.0 if weight is None else weight, logits.shape).reshape(-1).tolist()
    pw = np.broadcast_to(1.0 if pos_weight is None else pos_weight, logits.shape).reshape(-1).tolist()
    flat_x, flat_t = logits.reshape(-1).tolist(), targets.reshape(-1).tolist()
    losses, grad = [], np.zeros(len(flat_x))
    for i, (x, t) in enumerate(zip(flat_x, flat_t)):
        # log s(x) = -log(1 + e^-x) and log(1 - s(x)) = -log(1 + e^x), each done stably
        log_s = -log_sum_exp_simple([0.0, -x])
        log_one_minus_s = -log_sum_exp_simple([0.0, x])
        losses.append(w[i] * (-pw[i] * t * log_s - (1 - t) * log_one_minus_s))
        grad[i] = w[i] * ((1 + (pw[i] - 1) * t) * math.exp(log_s) - pw[i] * t)
    loss, grad = _reduce_simple(losses, grad, len(flat_x), reduction)
    return (loss.reshape(logits.shape) if reduction == "none" else loss), grad.reshape(logits.shape)


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


def _scalar_buffer(g, like):
    """The incoming gradient of a scalar loss as a 1-element array on the device of ``like``:
    kernels read it through a pointer, so the GPU never waits for it to be copied to the host."""
    xp = backend.array_module(like)
    if backend.array_module(g) is not xp:
        g = backend.to_numpy(g)
    return xp.ascontiguousarray(xp.asarray(g, dtype=like.dtype).reshape(1))


def _on_host(array):
    return backend.array_module(array) is np


def _check_label_range(op, labels, k, ignore_index):
    """Class indices in [0, k) or ignore_index, checked on the host (a NumPy array)."""
    valid = labels[labels != ignore_index]
    if valid.size and (int(valid.min()) < 0 or int(valid.max()) >= k):
        raise ValueError(f"{op}: labels must lie in [0, {k - 1}] for {k} classes (or be "
                         f"ignore_index={ignore_index}), got values from "
                         f"{int(valid.min())} to {int(valid.max())}")


def _check_probabilities(op, targets):
    """Targets in [0, 1], checked on the host (a NumPy array)."""
    if targets.size and (float(targets.min()) < 0 or float(targets.max()) > 1):
        raise ValueError(f"{op}: targets must lie in [0, 1] (probabilities), got values from "
                         f"{float(targets.min())} to {float(targets.max())}")


def _check_reduction(op, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
                         f"got {reduction!r}")


def _constant(op, name, value, like):
    """An option array (``weight``, ``pos_weight``) on ``like``'s device and dtype; a Tensor
    that requires a gradient is refused (minidl computes none for it)."""
    if value is None:
        return None
    if isinstance(value, Tensor) and value.requires_grad:
        raise ValueError(f"{op}: {name} gets no gradient in minidl; pass it without "
                         "requires_grad (or detach() it)")
    value = _on_device_of(value, like)
    if value.dtype.kind not in "biuf":
        raise TypeError(f"{op}: {name} must be numbers, got dtype {value.dtype}")
    return backend.array_module(like).ascontiguousarray(value, dtype=like.dtype)


# -- cross-entropy: drivers, one per device, same signature ---------------------------------------
# Arrays are (rows, K); ``weight`` is (K,) (ones without the option); ``row_scale`` (rows,) is
# d(result)/d(loss[r]): the incoming gradient, divided by the mean's denominator.

def _row_statistics_cpu(logits):
    row_max = logits.max(axis=1)
    e = logits - row_max[:, None]
    np.exp(e, out=e)
    return row_max, np.log(e.sum(axis=1))


def _smoothing_term_cpu(logits, row_max, log_sum, weight):
    """sum_c w[c] ((m - x[r, c]) + log_sum[r]) per row."""
    return ((row_max[:, None] - logits) + log_sum[:, None]) @ weight


def _cross_entropy_forward_cpu(logits, labels, weight, ignore_index, smoothing):
    """(row_loss, row_weight, row_max, log_sum), one of each per row; row_weight is w[y], 0
    where ignored: the row's share of the mean's denominator."""
    n, k = logits.shape
    row_max, log_sum = _row_statistics_cpu(logits)
    ignored = labels == ignore_index
    safe = np.where(ignored, 0, labels)
    rows = np.arange(n)
    row_loss = (1 - smoothing) * weight[safe] * ((row_max - logits[rows, safe]) + log_sum)
    if smoothing:
        row_loss += (smoothing / k) * _smoothing_term_cpu(logits, row_max, log_sum, weight)
    row_loss[ignored] = 0
    return row_loss, np.where(ignored, 0, weight[safe]), row_max, log_sum


def _cross_entropy_backward_cpu(logits, labels, weight, row_max, log_sum, row_scale, ignore_index,
                                smoothing):
    n, k = logits.shape
    ignored = labels == ignore_index
    safe = np.where(ignored, 0, labels)
    grad = logits - row_max[:, None]
    grad -= log_sum[:, None]
    np.exp(grad, out=grad)  # softmax, recomputed from the saved row statistics
    picked = (1 - smoothing) * weight[safe]
    if smoothing:
        grad *= (picked + (smoothing / k) * weight.sum())[:, None]
        grad -= (smoothing / k) * weight
    else:
        grad *= picked[:, None]
    grad[np.arange(n), safe] -= picked
    grad *= row_scale[:, None]
    grad[ignored] = 0
    return grad


def _cross_entropy_forward_cuda(logits, labels, weight, ignore_index, smoothing):
    xp = backend.array_module(logits)
    n, k = logits.shape
    parts = [xp.empty(n * ROW_PARTS, dtype=logits.dtype) for _ in range(4)]
    _kernels("cross_entropy_row_parts", logits.dtype)(
        n * ROW_PARTS, logits, weight, *parts, k, ROW_PARTS, smoothing)
    row_loss, row_weight, row_max, log_sum = (xp.empty(n, dtype=logits.dtype) for _ in range(4))
    _kernels("cross_entropy_forward", logits.dtype)(
        n, logits, labels, weight, *parts, row_loss, row_weight, row_max, log_sum, k, ROW_PARTS,
        ignore_index, smoothing)
    return row_loss, row_weight, row_max, log_sum


def _cross_entropy_backward_cuda(logits, labels, weight, row_max, log_sum, row_scale, ignore_index,
                                 smoothing):
    xp = backend.array_module(logits)
    n, k = logits.shape
    grad = xp.empty(logits.shape, dtype=logits.dtype)
    weight_sum = xp.ascontiguousarray(weight.sum().reshape(1))
    _kernels("cross_entropy_backward", logits.dtype)(
        n * k, logits, labels, weight, row_max, log_sum, row_scale, weight_sum, grad, k,
        ignore_index, smoothing)
    return grad


def _cross_entropy_probs_forward_cpu(logits, targets, weight, smoothing):
    """(row_loss, row_max, log_sum, q_sum) for class-probability targets."""
    k = logits.shape[1]
    row_max, log_sum = _row_statistics_cpu(logits)
    q = targets * (1 - smoothing) + smoothing / k
    q *= weight
    row_loss = (q * ((row_max[:, None] - logits) + log_sum[:, None])).sum(axis=1)
    return row_loss, row_max, log_sum, q.sum(axis=1)


def _cross_entropy_probs_backward_cpu(logits, targets, weight, row_max, log_sum, q_sum, row_scale,
                                      smoothing):
    k = logits.shape[1]
    grad = logits - row_max[:, None]
    grad -= log_sum[:, None]
    np.exp(grad, out=grad)
    grad *= q_sum[:, None]
    grad -= (targets * (1 - smoothing) + smoothing / k) * weight
    grad *= row_scale[:, None]
    return grad


def _cross_entropy_probs_forward_cuda(logits, targets, weight, smoothing):
    xp = backend.array_module(logits)
    n, k = logits.shape
    row_loss, row_max, log_sum, q_sum = (xp.empty(n, dtype=logits.dtype) for _ in range(4))
    _kernels("cross_entropy_probs_forward", logits.dtype)(
        n, logits, targets, weight, row_loss, row_max, log_sum, q_sum, k, smoothing)
    return row_loss, row_max, log_sum, q_sum


def _cross_entropy_probs_backward_cuda(logits, targets, weight, row_max, log_sum, q_sum, row_scale,
                                       smoothing):
    xp = backend.array_module(logits)
    n, k = logits.shape
    grad = xp.empty(logits.shape, dtype=logits.dtype)
    _kernels("cross_entropy_probs_backward", logits.dtype)(
        n * k, logits, targets, weight, row_max, log_sum, q_sum, row_scale, grad, k, smoothing)
    return grad


# -- cross-entropy: the Function ------------------------------------------------------------------

def _rows(x):
    """(N, K, d1, ...) -> (N*d1*..., K) with the class axis last; (K,) -> (1, K)."""
    xp = backend.array_module(x)
    if x.ndim == 1:
        return x.reshape(1, -1)
    k = x.shape[1]
    return xp.ascontiguousarray(xp.moveaxis(x, 1, -1)).reshape(x.size // k if k else 0, k)


def _unrows(rows, shape):
    """The inverse of ``_rows``: (M, K) back to ``shape``."""
    xp = backend.array_module(rows)
    if len(shape) == 1:
        return rows.reshape(shape)
    moved = rows.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],))
    return xp.ascontiguousarray(xp.moveaxis(moved, -1, 1))


def _check_cross_entropy(op, logits, target, probabilities):
    checks.float_array(op, "logits", logits)
    if logits.ndim == 0:
        raise ValueError(f"{op}: logits must be (N, K), (N, K, d1, ...) or (K,), got a 0-d tensor")
    if probabilities:
        checks.float_array(op, "target", target)
        checks.same_dtype(op, logits=logits, target=target)
        if target.shape != logits.shape:
            raise ValueError(f"{op}: class-probability targets must have the logits' shape "
                             f"{tuple(logits.shape)}, got {tuple(target.shape)}")
        return
    if target.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers (class indices), got dtype {target.dtype}")
    expected = () if logits.ndim == 1 else (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"{op}: expected labels of shape {expected} (one per example"
                         f"{' and position' if logits.ndim > 2 else ''}), got shape "
                         f"{tuple(target.shape)}")


class CrossEntropyFunction(Function):
    OP = "cross_entropy"

    def forward(self, logits, target, weight=None, ignore_index=-100, reduction="mean",
                label_smoothing=0.0):
        op = self.OP
        probabilities = target.dtype.kind == "f"
        _check_cross_entropy(op, logits, target, probabilities)
        xp = backend.array_module(logits)
        k = logits.shape[0] if logits.ndim == 1 else logits.shape[1]
        self.shape, self.reduction, self.options = logits.shape, reduction, (ignore_index, label_smoothing)
        x = _rows(xp.ascontiguousarray(logits))
        if weight is None:
            weight = xp.ones(k, dtype=logits.dtype)
        elif weight.shape != (k,):
            raise ValueError(f"{op}: weight must have one value per class, shape ({k},), "
                             f"got {tuple(weight.shape)}")
        real = logits.dtype.type
        if probabilities:
            t = _rows(xp.ascontiguousarray(target))
            forward = backend.pick(x, cpu=_cross_entropy_probs_forward_cpu,
                                   cuda=_cross_entropy_probs_forward_cuda)
            row_loss, row_max, log_sum, q_sum = forward(x, t, weight, real(label_smoothing))
            denominator = x.shape[0]
            self.save_for_backward(x, t, weight, row_max, log_sum, q_sum)
        else:
            labels = xp.ascontiguousarray(target, dtype=np.int64).reshape(-1)
            if _on_host(labels):  # on the GPU: not read back (module docstring)
                _check_label_range(op, labels, k, ignore_index)
            forward = backend.pick(x, cpu=_cross_entropy_forward_cpu, cuda=_cross_entropy_forward_cuda)
            row_loss, row_weight, row_max, log_sum = forward(x, labels, weight, ignore_index,
                                                             real(label_smoothing))
            denominator = row_weight.sum()  # on the device: no wait for the GPU
            self.save_for_backward(x, labels, weight, row_max, log_sum)
        self.denominator = denominator
        if reduction == "none":
            return row_loss.reshape(self.shape[:1] + self.shape[2:] if len(self.shape) > 1 else ())
        if reduction == "sum":
            return row_loss.sum()
        if x.shape[0] == 0:
            raise ValueError(f"{op}: reduction='mean' of an empty batch (logits of shape "
                             f"{tuple(self.shape)}); use reduction='sum' or 'none'")
        return row_loss.sum() / denominator

    def backward(self, g):
        x = self.saved[0]
        xp = backend.array_module(x)
        rows = x.shape[0]
        if self.reduction == "none":
            row_scale = xp.ascontiguousarray(g, dtype=x.dtype).reshape(rows)
        else:
            scale = g / self.denominator if self.reduction == "mean" else g
            row_scale = xp.ascontiguousarray(xp.broadcast_to(xp.asarray(scale, dtype=x.dtype), (rows,)))
        ignore_index, smoothing = self.options
        smoothing = x.dtype.type(smoothing)
        grad_target = None
        if len(self.saved) == 6:
            _, t, weight, row_max, log_sum, q_sum = self.saved
            backward = backend.pick(x, cpu=_cross_entropy_probs_backward_cpu,
                                    cuda=_cross_entropy_probs_backward_cuda)
            grad = backward(x, t, weight, row_max, log_sum, q_sum, row_scale, smoothing)
            if self.needs_input_grad[1]:
                log_p = (x - row_max[:, None]) - log_sum[:, None]
                grad_target = _unrows(-(1 - smoothing) * weight * log_p * row_scale[:, None],
                                      self.shape)
        else:
            _, labels, weight, row_max, log_sum = self.saved
            backward = backend.pick(x, cpu=_cross_entropy_backward_cpu, cuda=_cross_entropy_backward_cuda)
            grad = backward(x, labels, weight, row_max, log_sum, row_scale, ignore_index, smoothing)
        return _unrows(grad, self.shape), grad_target, None


def cross_entropy(logits, target, weight=None, *, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """The cross-entropy between softmax(logits) and a target, as
    ``torch.nn.functional.cross_entropy`` (see the module docstring for the formulas).

    ``logits``: (N, K), (N, K, d1, ...) or (K,). ``target``: integer class indices of shape
    (N,), (N, d1, ...) or () -- a NumPy/CuPy array, a list, or an integer Tensor, moved to the
    logits' device -- or a float Tensor/array of class probabilities of the logits' shape
    (which may require a gradient). ``weight``: (K,) per-class weights. ``ignore_index``:
    positions with this label add nothing. ``reduction``: "mean", "sum" or "none".
    ``label_smoothing`` in [0, 1]. Returns a 0-d tensor, or the per-position losses.
    """
    op = "cross_entropy"
    data = logits.data if isinstance(logits, Tensor) else logits
    if not hasattr(data, "dtype"):
        raise TypeError(f"{op}: logits must be a float tensor, got {type(logits).__name__}")
    _check_reduction(op, reduction)
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    checks.integer(op, "ignore_index", ignore_index, -2 ** 63)
    target_data = target.data if isinstance(target, Tensor) else target
    if not hasattr(target_data, "dtype") or _on_host(target_data):
        target_data = np.asarray(target_data)
    if target_data.size == 0 and target_data.shape != data.shape:
        target_data = target_data.astype(np.int64)  # [] is no labels, not float probabilities
    if target_data.dtype.kind == "f":
        if not isinstance(target, Tensor):
            target = Tensor(_on_device_of(target_data, data).astype(data.dtype, copy=False))
    else:
        if _on_host(target_data) and not _on_host(data) and data.dtype in checks.FLOATS:
            # Checked here, before the copy to the GPU, where checking would mean waiting.
            _check_cross_entropy(op, data, target_data, False)
            _check_label_range(op, target_data, data.shape[0 if data.ndim == 1 else 1],
                               ignore_index)
        target = _on_device_of(target_data, data)
    weight = _constant(op, "weight", weight, data) if data.dtype in checks.FLOATS else None
    return CrossEntropyFunction.apply(logits, target, weight, ignore_index=int(ignore_index),
                                      reduction=reduction, label_smoothing=float(label_smoothing))


def softmax_cross_entropy(logits, labels, weight=None, **options):
    """``cross_entropy`` under minidl's first name for it (same arguments)."""
    return cross_entropy(logits, labels, weight, **options)


# -- binary cross-entropy with logits: drivers, one per device, same signature --------------------
# ``weight`` and ``pos_weight`` arrive broadcast to the logits' shape, or None; ``scale`` is the
# incoming gradient per element (reduction "none") or a 1-element array, already divided by the
# mean's element count.

def _bce_forward_cpu(logits, targets, weight, pos_weight):
    """The elementwise losses (see the module docstring)."""
    elementwise = np.abs(logits, out=np.empty_like(logits))  # out=: 0-d stays an array
    np.negative(elementwise, out=elementwise)
    np.exp(elementwise, out=elementwise)
    np.log1p(elementwise, out=elementwise)
    if pos_weight is None:
        elementwise -= logits * targets
        elementwise += np.maximum(logits, logits.dtype.type(0))
    else:
        elementwise += np.maximum(-logits, logits.dtype.type(0))
        elementwise *= (pos_weight - 1) * targets + 1
        elementwise += (1 - targets) * logits
    if weight is not None:
        elementwise *= weight
    return elementwise


def _bce_backward_cpu(logits, targets, weight, pos_weight, scale):
    grad = np.negative(logits, out=np.empty_like(logits))
    with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0 gives sigmoid 0
        np.exp(grad, out=grad)
    grad += 1
    np.reciprocal(grad, out=grad)
    if pos_weight is None:
        grad -= targets
    else:
        grad *= (pos_weight - 1) * targets + 1
        grad -= pos_weight * targets
    if weight is not None:
        grad *= weight
    grad *= scale.reshape(grad.shape) if scale.size == grad.size and grad.size != 1 else scale[0]
    return grad


def _bce_forward_cuda(logits, targets, weight, pos_weight):
    elementwise = backend.array_module(logits).empty(logits.shape, dtype=logits.dtype)
    _kernels("bce_with_logits_forward", logits.dtype)(
        logits.size, logits, targets, logits if weight is None else weight,
        logits if pos_weight is None else pos_weight, elementwise, weight is not None,
        pos_weight is not None)
    return elementwise


def _bce_backward_cuda(logits, targets, weight, pos_weight, scale):
    grad = backend.array_module(logits).empty(logits.shape, dtype=logits.dtype)
    _kernels("bce_with_logits_backward", logits.dtype)(
        logits.size, logits, targets, logits if weight is None else weight,
        logits if pos_weight is None else pos_weight, scale, grad, weight is not None,
        pos_weight is not None, scale.size == grad.size and grad.size != 1)
    return grad


class BinaryCrossEntropyWithLogitsFunction(Function):
    OP = "binary_cross_entropy_with_logits"

    def forward(self, logits, targets, weight=None, pos_weight=None, reduction="mean"):
        op = self.OP
        checks.float_array(op, "logits", logits)
        checks.float_array(op, "targets", targets)
        checks.same_dtype(op, logits=logits, targets=targets)
        if targets.shape != logits.shape:
            raise ValueError(f"{op}: targets must have the shape of the logits, "
                             f"{tuple(logits.shape)}, got {tuple(targets.shape)}")
        if logits.size == 0 and reduction == "mean":
            raise ValueError(f"{op}: reduction='mean' of empty logits (shape "
                             f"{tuple(logits.shape)}); use reduction='sum' or 'none'")
        if _on_host(targets):  # on the GPU: not read back (module docstring)
            _check_probabilities(op, targets)
        xp = backend.array_module(logits)
        self.shape, self.reduction = logits.shape, reduction
        logits = xp.ascontiguousarray(logits).reshape(-1)  # flat: 0-d included
        targets = xp.ascontiguousarray(targets).reshape(-1)
        weight, pos_weight = (None if a is None else self._broadcast(op, name, a, logits.size)
                              for name, a in (("weight", weight), ("pos_weight", pos_weight)))
        forward = backend.pick(logits, cpu=_bce_forward_cpu, cuda=_bce_forward_cuda)
        elementwise = forward(logits, targets, weight, pos_weight)
        self.save_for_backward(logits, targets, weight, pos_weight)
        if reduction == "none":
            return elementwise.reshape(self.shape)
        return elementwise.sum() if reduction == "sum" else xp.mean(elementwise)

    def _broadcast(self, op, name, array, size):
        xp = backend.array_module(array)
        try:
            full = xp.broadcast_to(array, self.shape)
        except ValueError:
            raise ValueError(f"{op}: {name} of shape {tuple(array.shape)} does not broadcast to "
                             f"the logits' shape {tuple(self.shape)}") from None
        return xp.ascontiguousarray(full).reshape(size)

    def backward(self, g):
        logits, targets, weight, pos_weight = self.saved
        xp = backend.array_module(logits)
        if self.reduction == "none":
            scale = xp.ascontiguousarray(g, dtype=logits.dtype).reshape(-1)
        else:
            scale = _scalar_buffer(g / logits.size if self.reduction == "mean" else g, logits)
        grad_logits = grad_targets = None
        if self.needs_input_grad[0]:
            backward = backend.pick(logits, cpu=_bce_backward_cpu, cuda=_bce_backward_cuda)
            grad_logits = backward(logits, targets, weight, pos_weight, scale).reshape(self.shape)
        if self.needs_input_grad[1]:
            grad_targets = -logits
            if pos_weight is not None:  # - (pw - 1) log sigmoid(x), log sigmoid = min(x, 0) - log1p(e^-|x|)
                log_sigmoid = xp.minimum(logits, 0) - xp.log1p(xp.exp(-xp.abs(logits)))
                grad_targets = grad_targets - (pos_weight - 1) * log_sigmoid
            if weight is not None:
                grad_targets = grad_targets * weight
            grad_targets = (grad_targets * (scale if scale.size == logits.size else scale[0]))
            grad_targets = grad_targets.reshape(self.shape)
        return grad_logits, grad_targets, None, None


def binary_cross_entropy_with_logits(logits, targets, weight=None, *, reduction="mean",
                                     pos_weight=None):
    """Binary cross-entropy between sigmoid(logits) and targets, as
    ``torch.nn.functional.binary_cross_entropy_with_logits``.

    ``targets`` has the logits' shape, values in [0, 1]. A Tensor of targets must share the
    logits' dtype (it may require a gradient); a plain array or list is converted to the
    logits' dtype and device (so integer or float64 one-hot arrays work as they are).
    ``weight`` rescales each element and ``pos_weight`` the positive term of each class (both
    broadcast against the logits; neither gets a gradient). ``reduction``: "mean" (over all
    elements), "sum" or "none". Returns a 0-d tensor, or the elementwise losses.
    """
    op = "binary_cross_entropy_with_logits"
    data = logits.data if isinstance(logits, Tensor) else logits
    if not hasattr(data, "dtype"):
        raise TypeError(f"{op}: logits must be a float tensor, got {type(logits).__name__}")
    _check_reduction(op, reduction)
    if not isinstance(targets, Tensor):
        targets = targets if hasattr(targets, "dtype") and not _on_host(targets) else np.asarray(targets)
        if targets.dtype.kind not in "biuf":
            raise TypeError(f"{op}: targets must be numbers in [0, 1], got dtype {targets.dtype}")
        if _on_host(targets) and not _on_host(data):
            _check_probabilities(op, targets)  # before the copy to the GPU (module docstring)
        targets = _on_device_of(targets, data)
        if data.dtype in checks.FLOATS:
            targets = targets.astype(data.dtype, copy=False)
        targets = Tensor(targets)
    if data.dtype in checks.FLOATS:
        weight = _constant(op, "weight", weight, data)
        pos_weight = _constant(op, "pos_weight", pos_weight, data)
    return BinaryCrossEntropyWithLogitsFunction.apply(logits, targets, weight, pos_weight,
                                                      reduction=reduction)


# -- softmax and log-softmax along any axis: one code for both devices, on xp ---------------------

def _check_dim(op, x, dim):
    checks.float_array(op, "input", x)
    ndim = max(x.ndim, 1)  # a 0-d input is one entry along dim 0 (or -1)
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not -ndim <= dim < ndim:
        raise ValueError(f"{op}: dim must be an integer in [{-ndim}, {ndim - 1}] for an input "
                         f"of shape {tuple(x.shape)}, got {dim!r}")


def _shifted(x, axis):
    """x - max(x, axis): every exp below sees arguments <= 0 and cannot overflow."""
    return x - x.max(axis=axis, keepdims=True)


class LogSoftmaxFunction(Function):
    def forward(self, x, dim):
        _check_dim("log_softmax", x, dim)
        xp = backend.array_module(x)
        self.shape, self.axis = x.shape, dim
        if x.size == 0:
            return xp.empty_like(x)
        x = x.reshape(1) if x.ndim == 0 else x
        y = _shifted(x, dim)
        y -= xp.log(xp.exp(y).sum(axis=dim, keepdims=True))
        self.save_for_backward(y)
        return y.reshape(self.shape)

    def backward(self, g):
        if not self.saved:
            return g, None
        (y,) = self.saved
        xp = backend.array_module(y)
        g = g.reshape(y.shape)
        return (g - xp.exp(y) * g.sum(axis=self.axis, keepdims=True)).reshape(self.shape), None


class SoftmaxFunction(Function):
    def forward(self, x, dim):
        _check_dim("softmax", x, dim)
        xp = backend.array_module(x)
        self.shape, self.axis = x.shape, dim
        if x.size == 0:
            return xp.empty_like(x)
        x = x.reshape(1) if x.ndim == 0 else x
        y = _shifted(x, dim)
        xp.exp(y, out=y)
        y /= y.sum(axis=dim, keepdims=True)
        self.save_for_backward(y)
        return y.reshape(self.shape)

    def backward(self, g):
        if not self.saved:
            return g, None
        (y,) = self.saved
        g = g.reshape(y.shape)
        return (y * (g - (g * y).sum(axis=self.axis, keepdims=True))).reshape(self.shape), None


def _softmax_input(op, x, dim, axis, dtype):
    if axis is not None:
        if dim is not None and dim != axis:
            raise ValueError(f"{op}: got dim={dim!r} and axis={axis!r}; axis is another name "
                             "for dim, pass one")
        dim = axis
    if dtype is not None:
        if np.dtype(dtype) not in checks.FLOATS:
            raise TypeError(f"{op}: dtype must be float32 or float64, got {np.dtype(dtype)}")
        x = (x if isinstance(x, Tensor) else Tensor(x)).astype(dtype)
    return x, -1 if dim is None else dim


def log_softmax(x, dim=None, *, axis=None, dtype=None):
    """log(softmax(x)) along ``dim`` (default: the last; ``axis`` is another name for it),
    computed without forming softmax (no log(0)). ``dtype`` converts the input first, as in
    PyTorch."""
    x, dim = _softmax_input("log_softmax", x, dim, axis, dtype)
    return LogSoftmaxFunction.apply(x, dim)


def softmax(x, dim=None, *, axis=None, dtype=None):
    """exp(x) / sum(exp(x)) along ``dim`` (default: the last; ``axis`` is another name for it),
    shifted by the max so it never overflows. ``dtype`` converts the input first."""
    x, dim = _softmax_input("softmax", x, dim, axis, dtype)
    return SoftmaxFunction.apply(x, dim)
