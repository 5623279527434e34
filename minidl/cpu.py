"""How minidl's CPU kernels run: the process settings, Numba's thread count, the allocator.

``backend.py`` answers "where do arrays live"; this module answers "how do the Numba loops
run", as ``cuda.py`` does for the CUDA kernels.

* ``configure()`` -- called by ``import minidl`` -- sets minidl's process-wide defaults
  (environment variables, each only if the user has not set it, and the allocator), so that a
  user gets the fast settings without asking. ``MINIDL_NO_CONFIGURE=1`` turns it all off.
* ``kernel`` compiles a CPU kernel, written as the work of a range of items, and launches it
  on minidl's threads in chunks handed out one at a time (``run_items``); ``matmul_many`` runs
  a stack of matrix products on the same threads. Both decide, in one place, when the work is
  too small to be worth more than one thread.
* ``tune_cpu_allocator()`` keeps freed memory in the process.
"""
import concurrent.futures
import contextlib
import functools
import itertools
import os
import sys
import threading

# Below this many elements a Numba kernel runs on one thread: waking the others costs more
# than the work (tens of microseconds on an idle machine, milliseconds on a busy one).
SERIAL_BELOW = 1 << 15


def configure():
    """Set minidl's process-wide defaults, keeping any value the user has set; returns what
    they are now (``{}`` when turned off).

    * ``OMP_WAIT_POLICY=PASSIVE``: by default OpenMP workers spin after each parallel region
      waiting for more work, and on a small machine steal the cores from every other thread
      and process. minidl's own kernels do not use OpenMP, but a library in the same process
      may; PASSIVE makes its workers sleep. It takes effect only if set before the OpenMP
      runtime loads.
    * ``OPENBLAS_THREAD_TIMEOUT=4``: OpenBLAS's worker threads spin for about 0.1 s after
      each matrix product, and on a small machine take the cores from the Numba loops that
      follow; 4 makes them sleep almost at once. OpenBLAS reads it when NumPy is first
      imported, so it takes effect only where ``import minidl`` comes first (the examples do
      that; so should a training script).
    * ``NUMBA_OPT=2``: Numba compiles at LLVM's -O3 by default; minidl's kernels compile about
      twice as fast at -O2 and run as fast, which shortens a fresh install's first step.
    * ``NUMBA_CACHE_DIR``: Numba caches compiled kernels beside the source; if the installed
      package is read-only (a system site-packages, a container image), the cache goes to the
      user's cache folder (``$XDG_CACHE_HOME/minidl/numba`` or ``~/.cache/minidl/numba``).
    * the allocator: ``tune_cpu_allocator()``, unless ``MINIDL_CPU_ALLOCATOR=system``.

    Does nothing when ``MINIDL_NO_CONFIGURE`` is set to a non-empty value other than "0".
    """
    if os.environ.get("MINIDL_NO_CONFIGURE", "0") not in ("", "0"):
        return {}
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    if "numba" not in sys.modules:
        os.environ.setdefault("NUMBA_OPT", "2")
    package_dir = os.path.dirname(os.path.abspath(__file__))
    if "NUMBA_CACHE_DIR" not in os.environ and not os.access(package_dir, os.W_OK):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, "minidl", "numba")
    settings = {name: os.environ.get(name) for name in
                ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "NUMBA_OPT", "NUMBA_CACHE_DIR")}
    allocator = os.environ.get("MINIDL_CPU_ALLOCATOR", "tuned")
    if allocator not in ("tuned", "system"):
        raise ValueError(f"MINIDL_CPU_ALLOCATOR must be 'tuned' (the default) or 'system', "
                         f"got {allocator!r}")
    settings["allocator"] = "tuned" if allocator == "tuned" and tune_cpu_allocator() else "system"
    return settings


# -- minidl's CPU threads ----------------------------------------------------------------------
# A CPU kernel is written like a CUDA kernel: as the work of a range of items (planes, rows,
# elements), ``kernel(first, stop, ...)`` doing items first .. stop-1 and touching nothing that
# another item owns. ``run_items`` cuts the items into chunks and hands them out one at a time
# to minidl's threads -- the calling thread and a small pool -- so a thread that the OS puts
# aside (another process wants the core) holds up one chunk, not half the kernel, and a
# machine shared with other work slows a step down in proportion, not many times over. The
# same threads run the many small matrix products of a convolution (``matmul_many``), each on
# one BLAS thread. Numba compiles each kernel as plain serial code (no ``parallel=True``: its
# parallel pipeline made a cold first step two to three times longer to compile and ran no
# faster here) with ``error_model="numpy"``: a division by zero gives inf or NaN, as on the
# GPU, instead of a test for it in every iteration that keeps LLVM from vectorising the
# loop. Numba's own thread team is never used.

CHUNKS_PER_THREAD = 8  # enough to even out threads that run at different speeds

_threads = [0]  # the number of threads, 0 until first asked
_pool = {"executor": None, "pid": None}
_pool_lock = threading.Lock()


def num_threads():
    """How many threads minidl's CPU kernels use: ``MINIDL_NUM_THREADS``, else the CPUs this
    process may run on."""
    if not _threads[0]:
        wanted = os.environ.get("MINIDL_NUM_THREADS")
        if wanted:
            _threads[0] = max(1, int(wanted))
        elif hasattr(os, "sched_getaffinity"):
            _threads[0] = max(1, len(os.sched_getaffinity(0)))
        else:
            _threads[0] = max(1, os.cpu_count() or 1)
    return _threads[0]


def set_num_threads(count):
    """Use ``count`` threads (at least 1) from now on; returns the previous count."""
    previous = num_threads()
    _threads[0] = max(1, int(count))
    return previous


def _executor():
    """The pool of helper threads (one fewer than num_threads: the caller works too), made
    anew in a forked child, whose copy of the parent's pool has no threads."""
    with _pool_lock:
        if _pool["executor"] is None or _pool["pid"] != os.getpid() \
                or _pool["executor"]._max_workers < num_threads() - 1:
            _pool["executor"] = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, num_threads() - 1), thread_name_prefix="minidl-cpu")
            _pool["pid"] = os.getpid()
        return _pool["executor"]


def run_items(work, n_items, n_elements):
    """Call ``work(first, stop)`` over chunks that cover items 0 .. n_items-1, on minidl's
    threads; all on the calling thread when there is little to do (``n_elements`` below
    ``SERIAL_BELOW``: waking a thread costs more than the work)."""
    threads = min(num_threads(), n_items)
    if threads <= 1 or n_elements < SERIAL_BELOW:
        if n_items > 0:
            work(0, n_items)
        return
    chunk = -(-n_items // (threads * CHUNKS_PER_THREAD))
    n_chunks = -(-n_items // chunk)
    counter = itertools.count()  # next() on it is atomic: each chunk is taken once

    def take_chunks():
        while True:
            index = next(counter)
            if index >= n_chunks:
                return
            first = index * chunk
            work(first, min(first + chunk, n_items))

    helpers = [_executor().submit(take_chunks) for _ in range(threads - 1)]
    try:
        take_chunks()
    finally:
        for helper in helpers:
            helper.result()


def kernel(function):
    """Decorator for a CPU kernel ``function(first, stop, *args)`` whose loop over its items
    is ``for i in range(first, stop)`` (see above): compiled by Numba (``nogil``, cached), and
    launched as ``kernel(n_items, *args)`` -- the CUDA launcher's convention -- on minidl's
    threads. The compiled dispatcher is ``kernel.compiled`` (for ``inspect_asm``)."""
    from numba import njit  # not at the top: configure() must run before Numba is imported

    compiled = njit(nogil=True, cache=True, error_model="numpy")(function)

    @functools.wraps(function)
    def launch(n_items, *args):
        elements = max((a.size for a in args if hasattr(a, "shape")), default=0)
        run_items(lambda first, stop: compiled(first, stop, *args), int(n_items), elements)

    launch.compiled = compiled
    return launch


_blas = {}


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS runs each product on the calling thread while the block runs (threadpoolctl)."""
    if "controller" not in _blas:
        from threadpoolctl import ThreadpoolController
        _blas["controller"] = ThreadpoolController().select(user_api="blas")
    with _blas["controller"].limit(limits=1):
        yield


def matmul_many(a, b, out):
    """out[l] = a[l] @ b[l] for every l of the stacked (L, M, K) and (L, K, N) arrays, on
    minidl's threads, each product or piece of one on one BLAS thread.

    Many products (a Winograd convolution's 36 per group) are handed out whole. Fewer than
    twice the threads are cut into pieces along the longer side of ``out`` -- column blocks
    of b and out, or row blocks of a and out -- so that one large product (conv1's im2col
    GEMM, a fully connected layer) keeps every thread busy too. BLAS's own threads are never
    woken: they would spin after each product and take the cores from the Numba kernels
    that follow (unless ``OPENBLAS_THREAD_TIMEOUT`` was set before NumPy loaded, which
    ``configure()`` cannot do when NumPy came first), and a product cut into more pieces
    than threads goes on at full speed when another process takes a core."""
    import numpy as np  # not at the top: configure() must run before NumPy is imported

    count, rows, columns = out.shape
    depth = a.shape[-1]
    multiply_adds = out.size * depth
    if multiply_adds < SERIAL_BELOW:  # BLAS runs a product this small on one thread anyway
        np.matmul(a, b, out=out)
        return
    threads = num_threads()
    along_columns = columns >= rows
    side = columns if along_columns else rows
    # More pieces than threads, to even out a slow thread -- except where the inner
    # dimension is long (conv1's dW: K = B*55*55), and every piece reads all of the other
    # operand's K-long rows again.
    wanted = threads if depth > 4 * max(rows, columns) else 2 * threads
    pieces = max(1, min(-(-wanted // count), side // 32))  # pieces of at least 32
    step = -(-side // pieces)
    pieces = -(-side // step)

    def work(first, stop):
        for item in range(first, stop):
            l, piece = divmod(item, pieces)
            part = slice(piece * step, (piece + 1) * step)
            if pieces == 1:
                np.matmul(a[l], b[l], out=out[l])
            elif along_columns:
                np.matmul(a[l], b[l][:, part], out=out[l][:, part])
            else:
                np.matmul(a[l][part], b[l], out=out[l][part])

    with single_threaded_blas():
        run_items(work, count * pieces, multiply_adds)


def matmul(a, b):
    """a @ b for 2-D arrays, as ``matmul_many`` runs it; returns a new C-contiguous array."""
    import numpy as np

    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    matmul_many(a[None], b[None], out[None])
    return out


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4


def tune_cpu_allocator(keep_bytes=1 << 30):
    """Keep freed memory in the process instead of giving it back to the OS (``configure()``
    does this unless ``MINIDL_CPU_ALLOCATOR=system``).

    By default glibc's malloc serves every block over 32 MiB (a conv layer's activations, a
    gradient of fc6) with a fresh ``mmap`` and returns it with ``munmap`` when freed, so the
    next training step's array of the same size is new memory again: the kernel zeroes it and
    takes a page fault on first touch of every page (docs/PERFORMANCE.md has what that costs
    an AlexNet step). This call tells malloc to carve large blocks from its heap
    (``M_MMAP_MAX=0``) and to keep up to ``keep_bytes`` of free memory at the top of the heap
    (``M_TRIM_THRESHOLD``, ``M_TOP_PAD``), so the step's arrays reuse last step's pages.

    The cost is that memory freed by minidl is not returned to the OS while the process runs
    (the peak resident size is unchanged; the resident size after a step stays near it). It
    affects every library in the process that uses malloc -- NumPy, and any other framework
    imported into the same process. Returns True when applied, False where it cannot be (not
    Linux with glibc); calling it elsewhere is harmless.
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl has no mallopt)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    keep = int(min(keep_bytes, 2**31 - 1))
    ok = mallopt(_M_MMAP_MAX, 0)
    ok &= mallopt(_M_TRIM_THRESHOLD, keep)
    ok &= mallopt(_M_TOP_PAD, min(keep, 64 << 20))
    return bool(ok)
