"""Input checks shared by the ops, so a mistake is reported where it is made.

Each raises ``TypeError`` (wrong dtype) or ``ValueError`` (wrong shape or value) with a
message naming the op, what it got and what it expected -- never a crash inside a kernel.
"""
import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(op, name, array, ndim=None, layout=None):
    """``array`` must be float32/float64 and, if ``ndim`` is given, have that many dims."""
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


def positive_ints(op, **values):
    for name, value in values.items():
        for v in (value if isinstance(value, tuple) else (value,)):
            if int(v) != v or v < 1:
                raise ValueError(f"{op}: {name} must be a positive integer, got {value!r}")


def non_negative_ints(op, **values):
    for name, value in values.items():
        for v in (value if isinstance(value, tuple) else (value,)):
            if int(v) != v or v < 0:
                raise ValueError(f"{op}: {name} must be a non-negative integer, got {value!r}")


def pair(value):
    """2 -> (2, 2); (3, 2) -> (3, 2)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair of ints, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def class_labels(op, labels, batch, num_classes):
    """Integer labels, one per example, each in [0, num_classes)."""
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers (class indices), got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"{op}: expected {batch} labels (one per example), got shape {tuple(labels.shape)}")
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{op}: labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                         f"got values from {int(labels.min())} to {int(labels.max())}")
