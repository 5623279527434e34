"""Data-parallel training over processes and machines: MPI through ``mpi4py``, NCCL on GPUs.

Each process (a *rank*) holds a whole copy of the model and trains on its share of every global
batch; after each backward the ranks average their gradients, so every copy takes the same
step. This is the scheme of Horovod and ChainerMN, with PyTorch's names:

    mpiexec -n 2 python train.py

    from minidl import distributed
    distributed.init()                                   # MPI; rank(), world_size(), barrier()
    model = distributed.DistributedDataParallel(model)    # rank 0's weights on every rank
    loader = DataLoader(data, batch_size=64, shuffle=True, seed=0,
                        num_replicas=distributed.world_size(), rank=distributed.rank())

Outside ``mpiexec`` the same script runs as one process: ``init()`` then gives rank 0 of 1
(mpi4py is only imported when a launcher started several processes, or when asked).

**The transport.** Messages go through MPI (``mpi4py``), never through sockets of minidl's own.
Gradients of a model on the GPU go through NCCL (``cupy.cuda.nccl``) on the device arrays
themselves, on a stream of their own, with no copy to the host; MPI then only carries NCCL's
start-up id and small Python values.

**Gradient averaging** (``DistributedDataParallel``). After each forward with gradients the
wrapper walks the new graph once and wraps the ``backward`` of every Function that takes a
parameter: the backward walk runs that Function right after the layer above it, and its result
for the parameter is the parameter's gradient (summed over the Functions that share it), which
is thus complete as early as it can be. It is copied, scaled, into a *bucket*: a flat buffer holding several
parameters (about ``bucket_mb`` megabytes; buffers are made once and reused every step). A
full bucket is sent at once with a non-blocking allreduce (``MPI_Iallreduce`` in place, or
``ncclAllReduce`` on the communication stream) while backward goes on with the layers below;
buckets start in a fixed order, the same on every rank, as MPI requires. When the last
expected gradient has arrived, the remaining buckets are sent and waited for, and each
parameter's ``grad`` becomes its slice of the bucket (a view: no copy).

The average is over *samples*, not ranks: rank r's gradient is weighted by n_r / n, its share of
the global batch (1/N when the shares are equal), which is the gradient of the mean loss over
the global batch -- minidl's losses are means over the batch. The sizes are exchanged at each
forward (one small message); with them each rank also learns where its samples sit in the
global batch, and a ``Dropout`` inside the model shifts its random seed by that many elements,
so every sample gets the dropout mask a single process would give it at that position in the
batch. With the loader's sharding (contiguous pieces of each global batch, in rank order), N
ranks then train exactly as one process at the same global batch does, dropout and random
augmentation included, up to the order of float additions.

**Failures.** A collective call waits for every rank, so a rank that dies could leave the others
waiting for ever. Three guards:

* ``init()`` installs an exception hook: an exception that ends a rank prints its traceback and
  a line naming the rank, then calls ``MPI_Abort``, which ends every rank of the job
  (``mpiexec`` returns the status).
* Every wait of this module runs under a watchdog thread: one that lasts longer than
  ``timeout`` seconds (``MINIDL_DISTRIBUTED_TIMEOUT``, default 600) prints what was waited for
  and aborts the job.
* A killed rank is noticed by the launcher, which ends the others at once (MPICH's ``mpiexec``
  names its PID; the examples print the ranks' PIDs and hosts when they start).

Errors that every rank raises at the same point (a diverged loss, a refused resume: decisions
made from values all ranks share) are marked with ``raised_on_all_ranks``; those end each rank
normally, with one message from rank 0, and no abort.

What is left to later: ``no_sync`` gradient accumulation, BatchNorm statistics over the global
batch (``SyncBatchNorm``; here each rank normalises with its own batch's statistics and rank
0's running statistics are copied to the others after every step), and model parallelism
(``docs/DISTRIBUTED.md``).
"""
import contextlib
import hashlib
import os
import socket
import sys
import threading
import time

import numpy as np

from . import backend
from . import random as minidl_random
from .layers import Dropout, Module
from .tensor import Tensor, is_grad_enabled

DEFAULT_TIMEOUT = 600.0   # seconds a rank waits for the others before it ends the job
ENDING_GRACE = 30.0       # seconds ranks ending on a shared error wait to hear that all met it
DEFAULT_BUCKET_MB = 25.0  # PyTorch's default too: large enough to fill the link, small enough to overlap
# The environment variables by which launchers tell a process how many were started:
# MPICH's and Intel's Hydra and Slurm's PMI-2 (PMI_SIZE), Open MPI, MVAPICH.
LAUNCHER_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# The dropout mask of element i is a hash of seed + (i + 1) * GOLDEN (minidl/ops/dropout.py), so
# shifting the seed by k * GOLDEN gives the mask of the elements k places further on.
_GOLDEN = 0x9E3779B97F4A7C15
_OPS = ("sum", "mean", "max", "min")


class PeerError(RuntimeError):
    """Raised on the other ranks when rank 0 failed at something it does for all of them
    (claiming the run folder, reading or writing a checkpoint); the message is rank 0's, which
    rank 0 raises itself with its own type."""


def raised_on_all_ranks(error):
    """Mark ``error`` as raised by every rank at the same point; returns it. A marked error ends
    each rank normally (rank 0 reports it) once every rank has met it (``ending_together``);
    an unmarked one, or a marked one that a rank meets alone, aborts the job."""
    error.raised_on_all_ranks = True
    return error


def is_raised_on_all_ranks(error):
    return bool(getattr(error, "raised_on_all_ranks", False))


def launched_size():
    """How many processes the launcher says it started (1 outside ``mpiexec``/``srun``)."""
    for name in LAUNCHER_SIZES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def launched_by_mpi():
    """Whether an MPI launcher started this process as one of several."""
    return launched_size() > 1


# -- the world ---------------------------------------------------------------------------------------
class _Watchdog:
    """A daemon thread that ends the job when a wait of this module lasts too long."""

    def __init__(self, world, timeout):
        self.world, self.timeout = world, float(timeout)
        self.waiting = None  # (what, since) while the main thread waits for the other ranks
        self.thread = threading.Thread(target=self._watch, name="minidl-watchdog", daemon=True)
        self.thread.start()

    @contextlib.contextmanager
    def wait(self, what):
        outer = self.waiting
        self.waiting = outer or (what, time.monotonic())
        try:
            yield
        finally:
            self.waiting = outer

    def _watch(self):
        period = min(1.0, self.timeout / 10)
        while True:
            time.sleep(period)
            waiting = self.waiting
            if waiting is not None and time.monotonic() - waiting[1] > self.timeout:
                what = waiting[0]
                self.world.abort(1, f"rank {self.world.rank} of {self.world.size} waited more than "
                                    f"{self.timeout:g} s for the other ranks ({what}): one of them "
                                    "has died, hangs, or is not in the same call; stopping the job "
                                    "(MINIDL_DISTRIBUTED_TIMEOUT sets the limit)")


class _World:
    """The processes of the job and how to talk to them: ``comm`` is MPI's COMM_WORLD (None for
    a single process without mpi4py)."""

    def __init__(self, comm=None, timeout=DEFAULT_TIMEOUT):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.local_rank, self.local_size = 0, 1
        self.hosts = [(socket.gethostname(), os.getpid())]
        self.watchdog = None
        self._nccl = None
        if comm is not None and self.size > 1:
            local = comm.Split_type(_mpi().COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()
            self.watchdog = _Watchdog(self, timeout)
            self.ending = comm.Dup()  # used only by ranks that are ending (ending_together)
            self.hosts = self.allgather((socket.gethostname(), os.getpid()), "the ranks' hosts")

    @contextlib.contextmanager
    def waiting(self, what):
        if self.watchdog is None:
            yield
        else:
            with self.watchdog.wait(what):
                yield

    # -- Python objects (pickled; small) ------------------------------------------------------
    def allgather(self, value, what):
        if self.size == 1:
            return [value]
        with self.waiting(what):
            return self.comm.allgather(value)

    def bcast(self, value, root, what):
        if self.size == 1:
            return value
        with self.waiting(what):
            return self.comm.bcast(value, root=root)

    def barrier(self, what="barrier"):
        if self.size > 1:
            with self.waiting(what):
                self.comm.Barrier()

    # -- arrays -------------------------------------------------------------------------------------
    def allreduce_array(self, array, op, what):
        """A new array: ``op`` ("sum", "max", "min") of ``array`` over the ranks (host or device)."""
        if self.size == 1:
            return array.copy()
        if backend.is_cupy_array(array) and self.nccl_available():
            result = array.copy()
            self.nccl().allreduce_blocking(result, op, what)
            return result
        host = np.ascontiguousarray(backend.to_numpy(array))
        result = np.empty_like(host)
        mpi = _mpi()
        with self.waiting(what):
            self.comm.Allreduce(host, result, op={"sum": mpi.SUM, "max": mpi.MAX, "min": mpi.MIN}[op])
        return backend.to_device(result, backend.device_of(array)) if backend.is_cupy_array(array) else result

    def broadcast_array(self, array, root, what):
        """Fill ``array`` (contiguous, the same shape on every rank) with rank ``root``'s, in place."""
        if self.size == 1:
            return array
        if backend.is_cupy_array(array):
            if self.nccl_available():
                self.nccl().broadcast(array, root, what)
                return array
            host = np.ascontiguousarray(backend.to_numpy(array))
            with self.waiting(what):
                self.comm.Bcast(host, root=root)
            array[...] = backend.to_device(host, backend.device_of(array))
            return array
        with self.waiting(what):
            self.comm.Bcast(array, root=root)
        return array

    def start_allreduce(self, buffer, what):
        """Start summing ``buffer`` over the ranks in place; returns a request for ``wait``."""
        if backend.is_cupy_array(buffer):
            return self.nccl().start(buffer)
        with self.waiting(what):
            return self.comm.Iallreduce(_mpi().IN_PLACE, buffer, op=_mpi().SUM)

    def test(self, request):
        """Whether a started allreduce has finished (and, for MPI, a push to its progress)."""
        if isinstance(request, _NcclRequest):
            return request.done.done
        return request.Test()

    def wait(self, request, what):
        if isinstance(request, _NcclRequest):
            self.nccl().wait(request)
            return
        with self.waiting(what):
            request.Wait()

    def ending_together(self):
        """Whether every rank calls this within the grace period (``ENDING_GRACE`` seconds, or a
        quarter of the watchdog's limit if that is shorter). A barrier on a communicator of its
        own, which running ranks never touch: a rank that meets an error alone finds out here,
        instead of leaving the others to wait for the watchdog."""
        if self.size == 1:
            return True
        grace = min(ENDING_GRACE, self.watchdog.timeout / 4)
        request, deadline = self.ending.Ibarrier(), time.monotonic() + grace
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # -- NCCL -----------------------------------------------------------------------------------
    def nccl_available(self):
        try:
            from cupy.cuda import nccl
        except ImportError:
            return False
        return bool(getattr(nccl, "available", True))

    def nccl(self):
        if self._nccl is None:
            self._nccl = _Nccl(self)
        return self._nccl

    # -- ending -----------------------------------------------------------------------------------
    def abort(self, status, message=None):
        """Print ``message`` and end every rank of the job with ``status``."""
        if message:
            print(f"minidl.distributed: {message}", file=sys.stderr, flush=True)
        if self.comm is not None and self.size > 1:
            # MPICH's launcher drops what a rank wrote but it has not forwarded yet when the
            # rank aborts: a moment for the message to get through.
            time.sleep(0.5 if message else 0)
            self.comm.Abort(int(status) or 1)
        os._exit(int(status) or 1)


class _NcclRequest:
    """A started NCCL allreduce: the event recorded on the communication stream after it."""

    def __init__(self, done):
        self.done = done


class _Nccl:
    """NCCL on device arrays (``cupy.cuda.nccl``): a communicator per job, made from an id that
    rank 0 draws and MPI carries to the others, and a stream of its own so that an allreduce
    runs while the compute stream goes on with backward.

    Ordering without the host: before an allreduce the communication stream waits for an event
    recorded on the compute stream (the bucket has been written); ``wait`` makes the compute
    stream wait for the event recorded after the allreduce. Nothing blocks the CPU except a
    blocking call (``allreduce_blocking``, ``broadcast``), which synchronises its stream."""

    TYPES = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64", "float16": "NCCL_FLOAT16",
             "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8"}
    OPS = {"sum": "NCCL_SUM", "max": "NCCL_MAX", "min": "NCCL_MIN"}

    def __init__(self, world, nccl=None, cuda=None):
        if nccl is None or cuda is None:
            import cupy
            from cupy.cuda import nccl
            cuda = cupy.cuda
        self.world, self.lib, self.cuda = world, nccl, cuda
        uid = nccl.get_unique_id() if world.rank == 0 else None
        uid = world.bcast(uid, 0, "NCCL's id")
        with world.waiting("creating the NCCL communicator"):
            self.comm = nccl.NcclCommunicator(world.size, uid, world.rank)
        self.stream = cuda.Stream(non_blocking=True)

    def _type(self, array):
        name = self.TYPES.get(array.dtype.name)
        if name is None:
            raise TypeError(f"minidl.distributed: NCCL cannot reduce {array.dtype} arrays "
                            f"(it takes {', '.join(self.TYPES)})")
        return getattr(self.lib, name)

    def _check(self, array):
        if not array.flags.c_contiguous:
            raise ValueError("minidl.distributed: NCCL needs contiguous arrays")

    def start(self, buffer):
        self._check(buffer)
        written = self.cuda.Event(disable_timing=True)
        written.record(self.cuda.get_current_stream())
        self.stream.wait_event(written)
        pointer = buffer.data.ptr
        self.comm.allReduce(pointer, pointer, buffer.size, self._type(buffer),
                            self.lib.NCCL_SUM, self.stream.ptr)
        done = self.cuda.Event(disable_timing=True)
        done.record(self.stream)
        return _NcclRequest(done)

    def wait(self, request):
        self.cuda.get_current_stream().wait_event(request.done)

    def allreduce_blocking(self, array, op, what):
        self._check(array)
        stream = self.cuda.get_current_stream()
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, self._type(array),
                            getattr(self.lib, self.OPS[op]), stream.ptr)
        with self.world.waiting(what):
            stream.synchronize()

    def broadcast(self, array, root, what):
        self._check(array)
        stream = self.cuda.get_current_stream()
        self.comm.bcast(array.data.ptr, array.size, self._type(array), root, stream.ptr)
        with self.world.waiting(what):
            stream.synchronize()


_state = {"world": None}


def _mpi():
    from mpi4py import MPI
    return MPI


def init(timeout=None, device=None):
    """Join the job's processes; returns the world size. Idempotent.

    Under an MPI launcher (``mpiexec -n N``, ``srun``) this starts MPI through ``mpi4py``;
    without one it gives a world of one process and needs no MPI at all (``mpi4py`` is then
    imported only if installed). ``timeout``: seconds any wait for the other ranks may last
    before the job is ended (default ``MINIDL_DISTRIBUTED_TIMEOUT`` or 600). ``device="cuda"``
    makes each rank use the GPU of its local rank among the ranks on its machine.

    With more than one rank, an exception that ends a rank aborts the whole job (module
    docstring).
    """
    if _state["world"] is None:
        if timeout is None:
            timeout = float(os.environ.get("MINIDL_DISTRIBUTED_TIMEOUT") or DEFAULT_TIMEOUT)
        if not (timeout > 0):
            raise ValueError(f"minidl.distributed.init: timeout must be > 0 seconds, got {timeout!r}")
        try:
            MPI = _mpi()
        except ImportError:
            if launched_by_mpi():
                raise RuntimeError(
                    f"minidl.distributed: an MPI launcher started {launched_size()} processes, but "
                    "mpi4py is not installed, so they cannot talk to each other; install it "
                    "(pip install -e \".[mpi]\", or build mpi4py against your cluster's MPI)") from None
            _state["world"] = _World(None)
        else:
            _state["world"] = _World(MPI.COMM_WORLD, timeout)
        if _state["world"].size > 1:
            _install_excepthook()
    if device is not None and backend.normalize_device(device) == "cuda":
        _use_local_gpu(_state["world"])
    return _state["world"].size


def _use_local_gpu(world):
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(world.local_rank % count).use()


def is_initialized():
    return _state["world"] is not None


def _world():
    """The world, or a world of one process where ``init`` was not called."""
    return _state["world"] or _World(None)


def rank():
    """This process's rank, 0 .. world_size() - 1 (0 before ``init``)."""
    return _world().rank


def world_size():
    """The number of processes in the job (1 before ``init``)."""
    return _world().size


def local_rank():
    """This process's rank among those on its machine."""
    return _world().local_rank


def hosts():
    """[(host, PID)] of every rank, by rank."""
    return list(_world().hosts)


def barrier():
    """Wait until every rank has called ``barrier()``."""
    _world().barrier()


def abort(status=1, message=None):
    """Print ``message`` (from this rank) and end every rank of the job with ``status``."""
    _world().abort(status, message)


def ending_together():
    """For a rank ending on an error every rank should meet (the same options, the same data):
    True if all ranks reach this call within a grace period, so each may end quietly; False if
    this rank met it alone (then abort the job, naming it)."""
    return _world().ending_together()


def _install_excepthook():
    previous = sys.excepthook

    def hook(kind, error, tb):
        previous(kind, error, tb)
        world = _world()
        if is_raised_on_all_ranks(error) and world.ending_together():
            return  # every rank ends the same way: nothing to stop
        status = getattr(error, "exit_status", 1)
        world.abort(status, f"rank {world.rank} of {world.size} failed ({kind.__name__}: {error}); "
                            "stopping all ranks")

    sys.excepthook = hook


# -- values for metrics ---------------------------------------------------------------------------
def allreduce(value, op="sum"):
    """``op`` ("sum", "mean", "max", "min") of ``value`` over all ranks: a NumPy or CuPy array
    (a new array; CuPy arrays through NCCL where available) or a Python number (returned as a
    float, or an int for a sum/max/min of ints)."""
    if op not in _OPS:
        raise ValueError(f"allreduce: op must be one of {_OPS}, got {op!r}")
    world = _world()
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        kind = int if isinstance(value, (int, np.integer)) and op != "mean" else float
        array = np.asarray([value], dtype=np.int64 if kind is int else np.float64)
        result = world.allreduce_array(array, "sum" if op == "mean" else op, f"allreduce ({op})")
        return kind(result[0] / world.size if op == "mean" else result[0])
    if not (isinstance(value, np.ndarray) or backend.is_cupy_array(value)):
        raise TypeError(f"allreduce: expected a NumPy/CuPy array or a number, got {type(value).__name__}")
    result = world.allreduce_array(backend.array_module(value).ascontiguousarray(value),
                                   "sum" if op == "mean" else op, f"allreduce ({op})")
    return result / world.size if op == "mean" else result


def allgather(value):
    """[value of rank 0, value of rank 1, ...] on every rank, for small Python values (pickled)."""
    return _world().allgather(value, "allgather")


def broadcast(value, root=0):
    """Rank ``root``'s ``value`` on every rank. An array (NumPy or CuPy, the same shape and dtype
    everywhere) is filled in place and returned; anything else -- numbers, strings, nested
    dicts and lists, with arrays inside -- is returned (the others may pass None)."""
    world = _world()
    if not 0 <= root < world.size:
        raise ValueError(f"broadcast: root must be a rank in [0, {world.size}), got {root}")
    if isinstance(value, np.ndarray) or backend.is_cupy_array(value):
        if not value.flags.c_contiguous:
            raise ValueError("broadcast: the array must be contiguous (it is filled in place)")
        return world.broadcast_array(value, root, "broadcast")
    return broadcast_object(value, root)


def broadcast_object(value, root=0):
    """Rank ``root``'s ``value`` (nested dicts, lists and tuples of numbers, strings and arrays)
    on every rank. Arrays travel as raw buffers, one message each, not through pickle: a
    checkpoint of hundreds of megabytes costs no second copy."""
    world = _world()
    if world.size == 1:
        return value
    arrays = []
    skeleton = _strip_arrays(value, arrays) if world.rank == root else None
    skeleton, layout = world.bcast((skeleton, [(a.shape, a.dtype.str) for a in arrays])
                                   if world.rank == root else None, root, "broadcast (structure)")
    if world.rank != root:
        arrays = [np.empty(shape, dtype=np.dtype(dtype)) for shape, dtype in layout]
    for array in arrays:
        world.broadcast_array(array, root, "broadcast (arrays)")
    return _put_arrays(skeleton, arrays)


class _ArraySlot:
    def __init__(self, index):
        self.index = index


def _strip_arrays(value, arrays):
    if isinstance(value, np.ndarray) or backend.is_cupy_array(value):
        arrays.append(np.ascontiguousarray(backend.to_numpy(value)))
        return _ArraySlot(len(arrays) - 1)
    if isinstance(value, dict):
        return type(value)((k, _strip_arrays(v, arrays)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_strip_arrays(v, arrays) for v in value)
    return value


def _put_arrays(value, arrays):
    if isinstance(value, _ArraySlot):
        return arrays[value.index]
    if isinstance(value, dict):
        return type(value)((k, _put_arrays(v, arrays)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_put_arrays(v, arrays) for v in value)
    return value


def on_root(fn, share_result=False, what="rank 0's work"):
    """Run ``fn()`` on rank 0 only; every rank learns whether it raised. On rank 0 its exception
    is raised as it is, on the others as a ``PeerError`` with its message; both are marked
    ``raised_on_all_ranks``. Returns ``fn``'s result on rank 0, and on the others too with
    ``share_result`` (through ``broadcast_object``), else None."""
    world = _world()
    if world.size == 1:
        return fn()
    result, error = None, None
    if world.rank == 0:
        try:
            result = fn()
        except BaseException as caught:  # noqa: BLE001 -- even SystemExit: the others must hear
            error = caught
    message = world.bcast(None if error is None else (f"{error}" or type(error).__name__), 0, what)
    if error is not None:
        raise raised_on_all_ranks(error)
    if message is not None:
        raise raised_on_all_ranks(PeerError(message))
    return broadcast_object(result, 0) if share_result else result


# -- checking that the ranks agree ------------------------------------------------------------------
def describe_state(module):
    """[(kind, name, shape, dtype, device)] of a module's parameters and buffers, in order."""
    rows = [("parameter", name, tuple(p.shape), p.dtype.name, p.device)
            for name, p in module.named_parameters()]
    rows += [("buffer", name, tuple(b.shape), b.dtype.name, b.device) for name, b in module.named_buffers()]
    return rows


def _first_difference(mine, theirs):
    for a, b in zip(mine, theirs):
        if a != b:
            return a, b
    return None


def check_same_model(module, world=None):
    """Raise ``ValueError`` on every rank if the ranks' models differ in their parameters or
    buffers (names, count, shapes, dtypes, devices), saying what differs."""
    world = world or _world()
    descriptions = world.allgather(describe_state(module), "comparing the ranks' models")
    reference = descriptions[0]
    problems = []
    for other, rows in enumerate(descriptions[1:], start=1):
        if rows == reference:
            continue
        counts = {kind: sum(1 for r in rows if r[0] == kind) for kind in ("parameter", "buffer")}
        counts0 = {kind: sum(1 for r in reference if r[0] == kind) for kind in ("parameter", "buffer")}
        text = f"rank {other} has {counts['parameter']} parameters and {counts['buffer']} buffers, " \
               f"rank 0 {counts0['parameter']} and {counts0['buffer']}"
        first = _first_difference(reference, rows)
        if first is not None:
            (k0, n0, s0, d0, v0), (k1, n1, s1, d1, v1) = first
            text += (f"; first difference: {k0} {n0} {s0} {d0} on {v0} on rank 0, "
                     f"{k1} {n1} {s1} {d1} on {v1} on rank {other}")
        elif len(rows) != len(reference):
            longer, who = (rows, other) if len(rows) > len(reference) else (reference, 0)
            extra = longer[min(len(rows), len(reference))]
            text += f"; rank {who} also has {extra[0]} {extra[1]} {extra[2]}"
        problems.append(text)
    if problems:
        raise raised_on_all_ranks(ValueError(
            "DistributedDataParallel: the ranks hold different models (each rank must build the "
            "same one): " + "; ".join(problems)))


def parameters_digest(module):
    """A hash of the values of ``module``'s parameters (hex): equal on every rank while the
    copies agree bit for bit."""
    digest = hashlib.blake2b(digest_size=16)
    for name, p in module.named_parameters():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(backend.to_numpy(p.data)).tobytes())
    return digest.hexdigest()


def check_same_parameters(module, when="now"):
    """Raise ``RuntimeError`` (on every rank) unless every rank's parameters are bitwise rank
    0's -- what data-parallel training must keep, step after step."""
    world = _world()
    if world.size == 1:
        return
    digests = world.allgather(parameters_digest(module), "comparing the ranks' parameters")
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise raised_on_all_ranks(RuntimeError(
            f"minidl.distributed: the parameters of rank(s) {differ} differ from rank 0's {when}; "
            "the copies have drifted apart (a step taken without averaging the gradients, or a "
            "non-deterministic reduction), and training them on would mix different models"))


# -- DistributedDataParallel --------------------------------------------------------------------------
class _Bucket:
    """Several parameters' gradients in one flat, reused buffer, sent as one message."""

    def __init__(self, number, indices, sizes):
        self.number = number
        self.indices = list(indices)
        self.offsets = {}
        offset = 0
        for index in self.indices:
            self.offsets[index] = (offset, sizes[index])
            offset += sizes[index]
        self.length = offset
        self.buffer = None      # made at the first backward, on the parameters' device
        self.unfilled = set()   # this round: parameters whose slot holds no gradient yet
        self.missing = set()    # ... of which those whose gradient is still to come
        self.request = None


def plan_buckets(sizes, itemsizes, bucket_bytes):
    """Group parameters (by index, given their sizes and item sizes) into buckets of about
    ``bucket_bytes``, last parameter first -- backward produces the last layers' gradients
    first. A parameter larger than a bucket gets one of its own. Returns [[index, ...], ...]."""
    buckets, current, filled = [], [], 0
    for index in reversed(range(len(sizes))):
        nbytes = sizes[index] * itemsizes[index]
        if current and filled + nbytes > bucket_bytes:
            buckets.append(current)
            current, filled = [], 0
        current.append(index)
        filled += nbytes
    if current:
        buckets.append(current)
    return buckets


class _ShiftedSeeds:
    """A stand-in for a Dropout's generator while the wrapper runs it: draws from the real one
    and shifts the seed by ``shift`` elements (module constant ``_GOLDEN``); counts the draws."""

    def __init__(self, generator, shift, draws):
        self.generator, self.shift, self.draws = generator, shift, draws

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        generator = self.generator if self.generator is not None else minidl_random.default_generator()
        self.draws.append(self.generator)
        seed = generator.integers(low, high, size=size, dtype=dtype, endpoint=endpoint)
        return np.uint64((int(seed) + self.shift * _GOLDEN) % (1 << 64))


class DistributedDataParallel(Module):
    """``module`` trained by all ranks together: rank 0's parameters and buffers are copied to
    every rank here, and gradients are averaged across ranks during backward (module docstring).

    * Construction is collective (every rank builds the same model and wraps it); ranks whose
      models differ in names, count, shapes, dtypes or devices raise a ``ValueError`` saying
      what differs.
    * Every forward *with gradients* is collective too: all ranks call it once per step, and
      backward then averages. Forwards without gradients (``no_grad``: evaluation) are the
      wrapped module's own, on each rank alone. Work for one rank only (pictures, Grad-CAM)
      belongs on ``ddp.module``.
    * After ``loss.backward()`` every parameter's ``grad`` holds the average over the global
      batch, as long as the loss uses every output; otherwise call ``synchronize()`` before the
      optimiser's step (``fit`` always does). A rank with no sample in a step calls
      ``empty_step()`` instead of forward and backward.
    * ``state_dict()`` and ``load_state_dict`` are the wrapped module's, without a prefix, so
      checkpoints of one process and of many are interchangeable.
    * ``bucket_mb``: the size of a message of gradients; ``broadcast_buffers``: copy rank 0's
      buffers (BatchNorm's running statistics) to every rank after each step.
    """

    def __init__(self, module, bucket_mb=DEFAULT_BUCKET_MB, broadcast_buffers=True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected a minidl Module, got {type(module).__name__}")
        if isinstance(module, DistributedDataParallel):
            raise TypeError("DistributedDataParallel: the module is already wrapped")
        if not (isinstance(bucket_mb, (int, float)) and bucket_mb > 0):
            raise ValueError(f"DistributedDataParallel: bucket_mb must be a number > 0, got {bucket_mb!r}")
        self.module = module
        world = _world()
        object.__setattr__(self, "_world", world)
        check_same_model(module, world)
        for _, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            self._broadcast_tensor(tensor, "copying rank 0's model to every rank")
        trained = [p for p in module.parameters() if p.requires_grad]
        object.__setattr__(self, "_params", trained)
        object.__setattr__(self, "_index", {id(p): i for i, p in enumerate(trained)})
        plan = plan_buckets([p.size for p in trained], [p.dtype.itemsize for p in trained],
                            bucket_mb * 2 ** 20)
        # One dtype per buffer: a bucket mixing float32 and float64 parameters is split.
        buckets = []
        for indices in plan:
            for dtype in dict.fromkeys(trained[i].dtype for i in indices):
                buckets.append(_Bucket(len(buckets), [i for i in indices if trained[i].dtype == dtype],
                                       [p.size for p in trained]))
        object.__setattr__(self, "_buckets", buckets)
        object.__setattr__(self, "_bucket_of", {i: b for b in buckets for i in b.indices})
        self.bucket_mb, self.broadcast_buffers = float(bucket_mb), bool(broadcast_buffers)
        self._reset_step()
        for dropout in (m for m in module.modules() if isinstance(m, Dropout)):
            self._shift_dropout_seeds(dropout)

    # -- what the wrapper is ------------------------------------------------------------------------
    def _state_tensors(self):
        return self.module._state_tensors()

    def state_dict_aliases(self):
        return self.module.state_dict_aliases()

    def __getattr__(self, name):
        # Only for names not found the usual way: the wrapped model's own (input_shape, predict...).
        module = self.__dict__.get("module")
        if module is None:
            raise AttributeError(name)
        return getattr(module, name)

    def extra_repr(self):
        return f"{self._world.size} ranks, buckets of {self.bucket_mb:g} MB"

    # -- construction helpers -------------------------------------------------------------------------
    def _broadcast_tensor(self, tensor, what):
        xp = backend.array_module(tensor.data)
        data = xp.ascontiguousarray(tensor.data)
        self._world.broadcast_array(data, 0, what)
        tensor.data = data

    def _shift_dropout_seeds(self, dropout):
        original = dropout.forward
        ddp = self

        def forward(x):
            if ddp._offset is None or not dropout.training:
                return original(x)
            data = x.data if isinstance(x, Tensor) else x
            per_sample = data.size // data.shape[0] if data.ndim and data.shape[0] else 0
            own = dropout.generator
            object.__setattr__(dropout, "generator", _ShiftedSeeds(own, ddp._offset * per_sample, ddp._draws))
            try:
                return original(x)
            finally:
                object.__setattr__(dropout, "generator", own)

        object.__setattr__(dropout, "forward", forward)

    # -- a step -------------------------------------------------------------------------------------
    def _reset_step(self):
        object.__setattr__(self, "_offset", None)
        object.__setattr__(self, "_weight", None)
        object.__setattr__(self, "_draws", [])
        object.__setattr__(self, "_expected", None)   # indices whose gradient this round awaits
        object.__setattr__(self, "_arrived", 0)
        object.__setattr__(self, "_next", 0)          # the next bucket to send, in order
        object.__setattr__(self, "_sending", False)

    def _share_counts(self, n):
        """Exchange the ranks' batch sizes: sets this rank's weight n / total and offset (the
        samples of lower ranks); returns the total."""
        counts = self._world.allgather(int(n), "exchanging the batch sizes")
        total = sum(counts)
        object.__setattr__(self, "_weight", n / total if total else 0.0)
        object.__setattr__(self, "_offset", sum(counts[:self._world.rank]))
        object.__setattr__(self, "_total", total)
        return total

    def _check_no_step_pending(self):
        if self._sending:
            raise RuntimeError("DistributedDataParallel: the previous backward started averaging "
                               "gradients and did not finish (its loss did not use every output?); "
                               "call synchronize() after backward, before the optimiser's step")

    def forward(self, *inputs, **kwargs):
        if not (is_grad_enabled() and self._params and any(p.requires_grad for p in self._params)):
            return self.module(*inputs, **kwargs)
        self._check_no_step_pending()
        self._reset_step()
        n = _batch_size(inputs)
        self._share_counts(n)
        try:
            output = self.module(*inputs, **kwargs)
        finally:
            object.__setattr__(self, "_offset", None)
        object.__setattr__(self, "_expected", self._watch_consumers(output))
        if not self._expected:
            self._finish_without_gradients()
        return output

    def empty_step(self):
        """Take part in a step without a sample on this rank (the last, short global batch, or
        a batch whose files on this rank were all unreadable): the same messages as a forward
        and backward, with weight 0; the gradients become the other ranks' average. The
        dropout seeds the last forward drew are drawn again, so the random streams stay
        those of the other ranks."""
        self._check_no_step_pending()
        draws = list(self._draws)
        self._reset_step()
        self._share_counts(0)
        for generator in draws:
            (generator if generator is not None else minidl_random.default_generator()).integers(
                0, 2 ** 64, dtype=np.uint64)
        object.__setattr__(self, "_draws", draws)
        object.__setattr__(self, "_offset", None)
        object.__setattr__(self, "_expected", set())
        self._finish_without_gradients()

    def _finish_without_gradients(self):
        object.__setattr__(self, "_sending", True)
        self.synchronize()

    def _watch_consumers(self, output):
        """Wrap the backward of every Function of the graph that takes a parameter: it hands
        the parameter's share of the gradient here instead of to the parameter, and once all
        of a parameter's consumers have, its gradient is complete. Returns the indices of the
        parameters the graph uses.

        Why the consumers and not the parameter: the backward walk visits a leaf (and any
        node just above it) in its topological order, which may put it at the very end; its
        consumer runs right after the layer above it, which is as early as the gradient exists."""
        uses = {}
        for function in _functions_in(output):
            positions = [(k, self._index[id(t)]) for k, t in enumerate(function.inputs)
                         if isinstance(t, Tensor) and id(t) in self._index]
            if positions:
                for _, index in positions:
                    uses[index] = uses.get(index, 0) + 1
                function.backward = self._handing_over(function, function.backward, positions)
        object.__setattr__(self, "_use_counts", dict(uses))
        object.__setattr__(self, "_uses", dict(uses))
        object.__setattr__(self, "_partial", {})
        return set(uses)

    def _handing_over(self, function, backward, positions):
        ddp = self

        def handing_over(g):
            grads = backward(g)
            grads = list(grads) if isinstance(grads, tuple) else [grads]
            for k, index in positions:
                if grads[k] is not None:
                    ddp._add_share(index, grads[k])
                    grads[k] = None  # the parameter's grad is written from the averaged bucket
            return tuple(grads)
        return handing_over

    def _add_share(self, index, g):
        """One consumer's part of parameter ``index``'s gradient; the last completes it."""
        left = self._uses[index] - 1
        self._uses[index] = left
        if left > 0:
            held = self._partial.get(index)
            self._partial[index] = g if held is None else held + g
            return
        held = self._partial.pop(index, None)
        self._on_gradient(index, g if held is None else held + g)

    def _on_gradient(self, index, g):
        if not self._sending:
            self._start_round()
        bucket = self._bucket_of[index]
        offset, size = bucket.offsets[index]
        xp = backend.array_module(bucket.buffer)
        xp.multiply(xp.asarray(g).reshape(-1), bucket.buffer.dtype.type(self._weight),
                    out=bucket.buffer[offset:offset + size])
        bucket.unfilled.discard(index)
        bucket.missing.discard(index)
        object.__setattr__(self, "_arrived", self._arrived + 1)
        self._send_ready_buckets()
        if self._arrived == len(self._expected):
            self.synchronize()

    def _start_round(self):
        """The first gradient of a backward: buffers made (once) and a gradient that still
        views a buffer -- kept from an earlier step to accumulate into -- copied out of it."""
        for bucket in self._buckets:
            first = self._params[bucket.indices[0]]
            xp = backend.array_module(first.data)
            if bucket.buffer is None or backend.device_of(bucket.buffer) != first.device:
                bucket.buffer = xp.zeros(bucket.length, dtype=first.dtype)
            bucket.unfilled = set(bucket.indices)
            bucket.missing = {i for i in bucket.indices if i in self._expected}
            bucket.request = None
        for p in self._params:
            if p.grad is not None and _views(p.grad.data, self._buckets):
                p.grad.data = p.grad.data.copy()
        object.__setattr__(self, "_arrived", 0)
        object.__setattr__(self, "_next", 0)
        object.__setattr__(self, "_sending", True)

    def _send_ready_buckets(self):
        world = self._world
        while self._next < len(self._buckets) and not self._buckets[self._next].missing:
            bucket = self._buckets[self._next]
            for index in bucket.unfilled:  # no gradient here (unused in this forward): adds nothing
                offset, size = bucket.offsets[index]
                bucket.buffer[offset:offset + size] = 0
            if world.size > 1:
                bucket.request = world.start_allreduce(bucket.buffer, f"gradients, bucket {bucket.number}")
            object.__setattr__(self, "_next", self._next + 1)
        pending = next((b.request for b in self._buckets[:self._next] if b.request is not None), None)
        if pending is not None and world.size > 1:
            world.test(pending)  # MPI moves a non-blocking collective on only inside its calls

    def synchronize(self):
        """Finish averaging: send what is left (zeros for parameters that got no gradient), wait
        for every bucket and write each parameter's ``grad``. Does nothing when no backward is
        under way (it finishes by itself once every expected gradient has arrived)."""
        if not self._sending:
            return
        if self._arrived == 0:
            self._start_round()  # no gradient came (an empty step): the buckets go out as zeros
        for bucket in self._buckets:
            bucket.missing.clear()
        self._send_ready_buckets()
        world = self._world
        for bucket in self._buckets:
            if bucket.request is not None:
                world.wait(bucket.request, f"gradients, bucket {bucket.number} of {len(self._buckets)}")
                bucket.request = None
        if self._total:
            for index, p in enumerate(self._params):
                bucket = self._bucket_of[index]
                offset, size = bucket.offsets[index]
                averaged = bucket.buffer[offset:offset + size].reshape(p.shape)
                if p.grad is None:
                    p.grad = Tensor(averaged)
                else:
                    p.grad.data = p.grad.data + averaged
        if self.broadcast_buffers and world.size > 1:
            for _, buffer in self.module.named_buffers():
                if buffer.data.dtype.kind in "fiu":
                    self._broadcast_tensor(buffer, "copying rank 0's buffers")
        # A second backward through the same graph (retain_graph) is a round of its own.
        object.__setattr__(self, "_uses", dict(getattr(self, "_use_counts", {})))
        object.__setattr__(self, "_sending", False)


def _views(array, buckets):
    base = array
    while getattr(base, "base", None) is not None:
        base = base.base
    return any(b.buffer is not None and base is b.buffer for b in buckets)


def _batch_size(inputs):
    if not inputs:
        raise TypeError("DistributedDataParallel: forward needs the batch as its first argument")
    first = inputs[0]
    shape = getattr(first, "shape", None)
    if not shape:
        raise TypeError(f"DistributedDataParallel: the first input must be a batch (a Tensor or "
                        f"array with a leading batch axis), got {type(first).__name__}")
    return int(shape[0])


def _functions_in(output):
    """Every Function of the graph that produced ``output``."""
    functions, seen, stack = [], set(), list(_tensors_in(output))
    while stack:
        function = stack.pop().creator
        if function is None or id(function) in seen:
            continue
        seen.add(id(function))
        functions.append(function)
        stack.extend(t for t in function.inputs if isinstance(t, Tensor) and t.requires_grad)
    return functions


def _tensors_in(value):
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors_in(v)


def format_hosts():
    """'rank 0: PID 123 on vm; rank 1: PID 124 on vm' -- to match a launcher's report of a
    killed PID with its rank."""
    return "; ".join(f"rank {r}: PID {pid} on {host}" for r, (host, pid) in enumerate(hosts()))
