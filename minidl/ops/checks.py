"""Input checks shared by the ops and the layers, so a mistake is reported where it is made.

Each raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape or value) with
a message naming the op, what it got and what it expected -- never a crash inside a kernel.
"""
import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(op, name, array, ndim=None, layout=None):
    """``array`` must be a float32/float64 array and, if ``ndim`` is given, have that many dims."""
    if not hasattr(array, "dtype") or not hasattr(array, "shape"):
        raise TypeError(f"{op}: {name} must be a minidl Tensor or an array, "
                        f"got {type(array).__name__}")
    if array.dtype not in FLOATS:
        raise TypeError(f"{op}: {name} has dtype {array.dtype}; expected float32 or float64 "
                        "(convert with .astype(np.float32))")
    if ndim is not None and array.ndim != ndim:
        shape_words = f" ({layout})" if layout else ""
        raise ValueError(f"{op}: {name} must be {ndim}-D{shape_words}, got shape {tuple(array.shape)}")


def same_dtype(op, **arrays):
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: inputs must share one dtype, but {listed}")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _kind(low):
    return "positive" if low > 0 else "non-negative" if low == 0 else f">= {low}"


def integer(op, name, value, low):
    """``value`` as a Python int; TypeError if it is not an int, ValueError if below ``low``."""
    if not _is_int(value):
        raise TypeError(f"{op}: {name} must be a {_kind(low)} int, got {value!r}")
    if value < low:
        raise ValueError(f"{op}: {name} must be a {_kind(low)} int, got {value!r}")
    return int(value)


def int_pair(op, name, value, low):
    """An int or a (height, width) pair of ints, each at least ``low`` -> a pair of Python ints.

    TypeError if it is neither an int nor a pair of ints, ValueError if a value is below ``low``.
    """
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    kind = _kind(low)
    if len(items) != 2 or not all(_is_int(v) for v in items):
        raise TypeError(f"{op}: {name} must be a {kind} int or a pair of {kind} ints, got {value!r}")
    if min(items) < low:
        raise ValueError(f"{op}: {name} must be a {kind} int or a pair of {kind} ints, got {value!r}")
    return int(items[0]), int(items[1])


def class_labels(op, labels, batch, num_classes):
    """Integer labels, one per example, each in [0, num_classes)."""
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers (class indices), got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"{op}: expected {batch} labels (one per example), got shape {tuple(labels.shape)}")
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{op}: labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                         f"got values from {int(labels.min())} to {int(labels.max())}")
