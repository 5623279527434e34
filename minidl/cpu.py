"""How minidl's CPU kernels run: the process settings, Numba's thread count, the allocator.

``backend.py`` answers "where do arrays live"; this module answers "how do the Numba loops
run", as ``cuda.py`` does for the CUDA kernels.

* ``configure()`` -- called by ``import minidl`` -- sets minidl's process-wide defaults
  (environment variables, each only if the user has not set it, and the allocator), so that a
  user gets the fast settings without asking. ``MINIDL_NO_CONFIGURE=1`` turns it all off.
* ``parallel_kernel`` compiles a Numba loop with ``prange`` and runs it on one thread when
  its arrays are small (the one place where that decision is made).
* ``tune_cpu_allocator()`` keeps freed memory in the process.
"""
import contextlib
import functools
import os
import sys

# Below this many elements a Numba kernel runs on one thread: waking the others costs more
# than the work (tens of microseconds on an idle machine, milliseconds on a busy one).
SERIAL_BELOW = 1 << 15


def configure():
    """Set minidl's process-wide defaults, keeping any value the user has set; returns what
    they are now (``{}`` when turned off).

    * ``OMP_WAIT_POLICY=PASSIVE``: by default OpenMP workers (Numba's parallel loops) spin
      after each parallel region waiting for more work; on a small machine they then steal
      the cores from OpenBLAS and from every other process, and a small network's step ran
      many times slower on a busy machine. PASSIVE makes them sleep. It takes effect only if
      set before the OpenMP runtime loads, which Numba does on its first parallel call.
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


@contextlib.contextmanager
def threads_for(n_elements):
    """Run the Numba kernels inside on one thread when the input is small."""
    if n_elements >= SERIAL_BELOW:
        yield
        return
    import numba
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# Only the kernels' explicit prange loops run in parallel. Numba would otherwise also turn every
# array expression inside them (np.zeros of a scratch plane, a slice copy) into a parallel loop
# of its own, nested and then run serially anyway: no faster, and slower to compile.
PARALLEL_OPTIONS = {"prange": True, "fusion": False, "numpy": False, "setitem": False,
                    "reduction": False, "comprehension": False, "inplace_binop": False,
                    "stencil": False}


def parallel_kernel(function):
    """Decorator: compile ``function`` with ``njit(parallel=..., cache=True)`` (its prange loops
    only, ``PARALLEL_OPTIONS``) and run it with as many threads as its largest array argument
    warrants (``threads_for``).

    The compiled dispatcher is ``kernel.compiled`` (for ``inspect_asm`` and the like).
    """
    from numba import njit  # not at the top: configure() must run before Numba is imported

    compiled = njit(parallel=PARALLEL_OPTIONS, cache=True)(function)

    @functools.wraps(function)
    def run(*args):
        size = max((a.size for a in args if hasattr(a, "size") and hasattr(a, "shape")), default=0)
        with threads_for(size):
            return compiled(*args)

    run.compiled = compiled
    return run


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
