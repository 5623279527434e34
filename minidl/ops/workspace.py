"""Memory policy for the ops that work in chunks (the convolutions): reusable buffers, and a
budget for arrays kept from forward for backward.

* ``buffer(xp, role, shape, dtype)``: a C-contiguous array carved from a per-thread buffer that
  is kept between calls and reused. A fresh multi-megabyte array takes a page fault per 4 KiB
  page when it is first written, which about doubles the cost of filling it; a reused one does
  not. The buffer grows to the largest size asked for under ``role``; the caller must be done
  with it before asking for the same role again, and must never return it.
* ``WORKSPACE_BYTES``: the upper bound on each such buffer of one chunk of images; ops split
  the batch into chunks that fit (one image at least). Larger chunks mean fewer, larger matrix
  products, which run faster.
* ``keep(xp, shape, dtype)``: a fresh array that forward may keep for backward (im2col's
  columns, Winograd's transformed input), so that backward need not recompute it -- as long as
  everything kept by all layers alive stays within ``KEEP_BYTES``, taken greedily in forward
  order. Otherwise None: the op recomputes. A kept array counts against the budget until it
  is garbage (freed with the graph, or when the graph is dropped without a backward). The
  peak memory of a step grows by at most ``KEEP_BYTES``; 0 turns keeping off.
"""
import threading
import weakref

import numpy as np

WORKSPACE_BYTES = 128 * 2**20
KEEP_BYTES = 512 * 2**20

_buffers = threading.local()
_kept = {"bytes": 0}
_kept_lock = threading.Lock()


def buffer(xp, role, shape, dtype):
    """A C-contiguous array of ``shape`` from the buffer kept for ``role`` (see the module doc)."""
    buffers = _buffers.__dict__.setdefault("by_role", {})
    key = (xp.__name__, role, np.dtype(dtype).str)
    size = int(np.prod(shape))
    flat = buffers.get(key)
    if flat is None or flat.size < size:
        buffers.pop(key, None)  # free the old one before allocating its successor
        flat = xp.empty(size, dtype=dtype)
        buffers[key] = flat
    return flat[:size].reshape(shape)


def kept_bytes():
    """Bytes of kept arrays alive now."""
    return _kept["bytes"]


def _release(nbytes):
    with _kept_lock:
        _kept["bytes"] -= nbytes


def keep(xp, shape, dtype):
    """A fresh array counted against ``KEEP_BYTES`` until it is garbage, or None if it does not
    fit (or the array type cannot be watched for garbage collection)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with _kept_lock:
        if _kept["bytes"] + nbytes > KEEP_BYTES:
            return None
        _kept["bytes"] += nbytes
    array = xp.empty(shape, dtype=dtype)
    try:
        weakref.finalize(array, _release, nbytes)
    except TypeError:  # an array type without weak references: do not keep
        _release(nbytes)
        return None
    return array
