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

Both limits are per device: ``WORKSPACE_BYTES`` and ``KEEP_BYTES`` are the CPU's, sized for a
machine of a few cores and gigabytes. On a GPU they would split an AlexNet batch of 128 into
several chunks (several times the launches, each GEMM smaller) and make backward recompute
im2col; there ``workspace_bytes(xp)`` and ``keep_bytes(xp)`` are fractions of the memory the
device had free when first asked (``GPU_WORKSPACE_FRACTION``, ``GPU_KEEP_FRACTION``), between
the CPU's values and ``GPU_WORKSPACE_MAX``/``GPU_KEEP_MAX``: bounds past which larger GEMMs
run no faster and the step's peak memory only grows.
"""
import threading
import weakref

import numpy as np

WORKSPACE_BYTES = 128 * 2**20
KEEP_BYTES = 384 * 2**20
GPU_WORKSPACE_FRACTION, GPU_WORKSPACE_MAX = 1 / 16, 4 * 2**30
GPU_KEEP_FRACTION, GPU_KEEP_MAX = 1 / 8, 8 * 2**30

_buffers = threading.local()
_kept = {}  # device (None: the host) -> bytes kept there now
_kept_lock = threading.Lock()
_free_at_first_use = {}  # GPU id -> bytes free when its budgets were first asked for
_constants = {}  # (array module, GPU id, name) -> a small constant copied to that device


def _gpu(xp):
    """The id of ``xp``'s current GPU, or None for a host array module (NumPy, the shim's)."""
    cuda = getattr(xp, "cuda", None)
    return None if cuda is None else cuda.Device().id


def _gpu_budget(xp, device, fraction, low, high):
    if device not in _free_at_first_use:
        # Once per device, before a training step's arrays fill CuPy's memory pool (whose
        # cached blocks the driver counts as used).
        _free_at_first_use[device] = xp.cuda.Device().mem_info[0]
    return int(min(high, max(low, fraction * _free_at_first_use[device])))


def workspace_bytes(xp=np):
    """The limit on one workspace buffer of a chunk, for arrays of ``xp`` (module doc)."""
    device = _gpu(xp)
    if device is None:
        return WORKSPACE_BYTES
    return _gpu_budget(xp, device, GPU_WORKSPACE_FRACTION, WORKSPACE_BYTES, GPU_WORKSPACE_MAX)


def keep_bytes(xp=np):
    """The budget for arrays kept for backward, for arrays of ``xp`` (module doc)."""
    device = _gpu(xp)
    if device is None:
        return KEEP_BYTES
    return _gpu_budget(xp, device, GPU_KEEP_FRACTION, KEEP_BYTES, GPU_KEEP_MAX)


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


def constant(xp, name, array):
    """The small NumPy constant ``array`` as an array of ``xp``, copied to its device once:
    a copy from the host at every call would make the GPU wait for it."""
    if xp is np:
        return array
    key = (xp.__name__, _gpu(xp), name)
    if key not in _constants:
        _constants[key] = xp.asarray(array)
    return _constants[key]


def kept_bytes(xp=np):
    """Bytes of kept arrays of ``xp``'s device alive now."""
    return _kept.get(_gpu(xp), 0)


def _release(device, nbytes):
    with _kept_lock:
        _kept[device] -= nbytes


def keep(xp, shape, dtype):
    """A fresh array counted against its device's ``keep_bytes`` until it is garbage, or None
    if it does not fit (or the array type cannot be watched for garbage collection)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    device, budget = _gpu(xp), keep_bytes(xp)
    with _kept_lock:
        if _kept.get(device, 0) + nbytes > budget:
            return None
        _kept[device] = _kept.get(device, 0) + nbytes
    array = xp.empty(shape, dtype=dtype)
    try:
        weakref.finalize(array, _release, device, nbytes)
    except TypeError:  # an array type without weak references: do not keep
        _release(device, nbytes)
        return None
    return array
