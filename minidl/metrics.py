"""Scores and error metrics of a batch: what ``train.fit`` and ``train.evaluate`` report.

A metric is a function ``metric(scores, labels) -> error`` of one batch, where ``scores`` are
what ``predict(outputs)`` makes of the model's raw outputs (N, C): ``softmax_scores`` for a
softmax classifier such as AlexNet, ``sigmoid_scores`` for independent yes/no outputs such as
EuroNet's. Errors are fractions (0.25 = 25 %). ``labels`` are class indices (N,) or one-hot /
multi-hot rows (N, C). Everything here takes and returns raw NumPy or CuPy arrays and builds no
graph.
"""
import numpy as np

from . import backend, ops
from .ops.checks import class_labels
from .tensor import no_grad


# -- scores --------------------------------------------------------------------------------------
def softmax_scores(outputs):
    """Row-wise softmax of raw outputs (N, C): class probabilities that sum to 1."""
    with no_grad():
        return ops.softmax(outputs, axis=1).data


def sigmoid_scores(outputs):
    """Element-wise logistic function of raw outputs: one probability per independent output."""
    with no_grad():
        return ops.sigmoid(outputs).data


def identity(outputs):
    """The raw outputs themselves, for metrics that rank them (top-k needs no softmax)."""
    return outputs


# -- errors --------------------------------------------------------------------------------------
def _class_labels(labels, scores, metric="metrics"):
    """Integer class labels from int labels (N,) -- each checked to lie in [0, C) -- or one-hot /
    multi-hot labels (N, C)."""
    if labels.ndim == 2:
        return labels.argmax(axis=1)
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"{metric}: labels of shape {tuple(labels.shape)} do not match scores of "
                         f"shape {tuple(scores.shape)}; expected (N,) class indices or (N, C)")
    class_labels(metric, labels, scores.shape[0], scores.shape[1])
    return labels.astype(np.int64, copy=False)


def topk_error(scores, labels, k):
    """Fraction of rows whose true class is not among the ``k`` highest scores.

    The rank of the true class is the number of classes scoring higher, plus those scoring the
    same with a smaller index (the tie rule of ``argmax``, so top-1 error = argmax is wrong).
    A row containing NaN counts as an error.
    """
    xp = backend.array_module(scores)
    if scores.ndim != 2:
        raise ValueError(f"topk_error: scores must be (N, C), got shape {tuple(scores.shape)}")
    n, c = scores.shape
    labels = _class_labels(labels, scores, f"top-{k} error")
    if n == 0:
        return 0.0
    true = scores[xp.arange(n), labels][:, None]
    before = (scores > true) | ((scores == true) & (xp.arange(c)[None, :] < labels[:, None]))
    wrong = (before.sum(axis=1) >= k) | xp.isnan(scores).any(axis=1)
    return float(wrong.mean())


def top1(scores, labels):
    """Top-1 error: the highest score is not the true class."""
    return topk_error(scores, labels, 1)


def top5(scores, labels):
    """Top-5 error: the true class is not among the five highest scores."""
    return topk_error(scores, labels, 5)


def binary_error(scores, labels, threshold=0.5):
    """Element-wise error of independent yes/no outputs: 1 - Keras's ``binary_accuracy``.

    ``scores`` (N, C) are probabilities (``predict=sigmoid_scores``); each is "yes" above
    ``threshold``. ``labels`` are class indices (N,) -- made one-hot -- or 0/1 targets (N, C).
    """
    xp = backend.array_module(scores)
    if labels.ndim == 1:
        class_labels("binary_error", labels, scores.shape[0], scores.shape[1])
        labels = xp.arange(scores.shape[1])[None, :] == labels[:, None]
    if labels.shape != scores.shape:
        raise ValueError(f"binary_error: labels of shape {tuple(labels.shape)} do not match "
                         f"scores of shape {tuple(scores.shape)}")
    wrong = ((scores > threshold) != (labels > 0.5)) | xp.isnan(scores)
    return float(wrong.mean())


binary_error.name = "binary"


def named_metrics(metrics):
    """[(name, fn)] from a tuple of functions (named by ``fn.name`` or ``__name__``) or of
    (name, fn) pairs, or from a dict; None gives no metrics."""
    if metrics is None:
        return []
    if isinstance(metrics, dict):
        return list(metrics.items())
    named = []
    for fn in metrics:
        if isinstance(fn, tuple):
            named.append(fn)
        else:
            named.append((getattr(fn, "name", None) or getattr(fn, "__name__", "metric"), fn))
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"fit: metric names must differ, got {names}")
    return named


# -- labels for losses that want 0/1 targets ----------------------------------------------------
def one_hot(labels, num_classes, dtype=np.float32):
    """Class indices (N,) -> 0/1 rows (N, num_classes), on the labels' device. Each label must
    be an integer in [0, num_classes): an index outside would give an all-zero row, which a
    loss takes for "none of the classes" without a word."""
    class_labels("one_hot", labels, labels.shape[0] if labels.ndim else -1, num_classes)
    xp = backend.array_module(labels)
    return (xp.arange(num_classes)[None, :] == labels[:, None]).astype(dtype)


def with_one_hot(loss_fn):
    """Wrap a loss that wants 0/1 targets (``ops.binary_cross_entropy_with_logits``) so it takes
    the class indices a loader yields: EuroNet's sigmoid outputs are trained this way. The
    labels are checked first: integers, one per row of outputs, each in [0, C)."""
    name = f"{getattr(loss_fn, '__name__', 'loss')}_one_hot"

    def loss(outputs, labels):
        if labels.ndim == 1:
            class_labels(name, labels, outputs.shape[0], outputs.shape[1])
            labels = one_hot(labels, outputs.shape[1], outputs.dtype)
        return loss_fn(outputs, labels)
    loss.__name__ = name
    return loss
