"""Data-parallel training (minidl.distributed): N ranks train as one process does.

Without MPI: the loader's sharding, the bucket plan, DistributedDataParallel against a fake
world of two identical ranks (the gradients, the order in which buckets are sent and that
they are sent during backward, the dropout masks of a rank's samples), NCCL's calls against a
fake ``cupy.cuda.nccl`` (no GPU here), and the scalar helpers of a world of one.

With MPI (``pip install -e ".[mpi]"``: mpi4py and the MPICH wheel): each test starts
``mpiexec -n 2`` on ``tests/distributed_worker.py`` or an example, and compares with one process
run here. Where mpi4py or mpiexec is missing these are skipped, and a warning says why.

Tolerance of "2 ranks equal 1 process": after 6 SGD steps (2 epochs of 3, global batch 8,
dropout and random flips on) every parameter is within 1e-6 x the largest weight of the model
(measured: about 3e-8 for the sized-down AlexNet, 1e-7 for EuroNet). The ranks split each
batch's sums (weight gradients, the loss) into two halves added in another order, which changes
float32 roundings; with a larger rate (0.05) a rounding can flip a ReLU or a pooling choice
within a few steps and the runs then drift apart by far more (1e-3 relative was seen in
EuroNet's conv6 after 6 steps), so these runs use lr 0.01. Logged losses agree to 1e-6
relative, logged errors exactly. On every rank the parameters are identical bit for bit after
every step (hashes), and a resume on the same number of ranks is bitwise.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import minidl
from minidl import distributed, layers, ops, runs
from minidl.data import ArrayDataset, DataLoader
from minidl.train import ResumeWarning

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "distributed_worker.py")


def load_worker():
    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = load_worker()


# == without MPI ======================================================================================
def test_sharded_loader_reads_disjoint_pieces_of_the_same_global_batches():
    x = np.arange(11, dtype=np.float32).reshape(11, 1, 1, 1)
    dataset = ArrayDataset(x, np.zeros(11, dtype=np.int64))
    whole = DataLoader(dataset, 4, shuffle=True, seed=5, num_workers=0)
    shards = [DataLoader(dataset, 4, shuffle=True, seed=5, num_workers=0, num_replicas=3, rank=r)
              for r in range(3)]
    for epoch in (0, 1):
        for loader in [whole] + shards:
            loader.set_epoch(epoch)
        batches = [[images.reshape(-1).tolist() for images, _ in loader] for loader in shards]
        assert [len(b) for b in batches] == [len(whole)] * 3 == [3] * 3
        for k, (images, _) in enumerate(whole):
            pieces = [batches[r][k] for r in range(3)]
            assert sum(pieces, []) == images.reshape(-1).tolist()  # in rank order, nothing repeated
            assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    # The last global batch holds 3 samples, one per rank; with 2 samples one rank gets none
    # and still yields, so that every rank takes every step.
    short = [DataLoader(ArrayDataset(x[:6], np.zeros(6, dtype=np.int64)), 4, num_workers=0,
                        num_replicas=3, rank=r) for r in range(3)]
    last = [list(loader)[-1] for loader in short]
    assert [len(labels) for _, labels in last] == [0, 1, 1]
    assert last[0][0].shape == (0,)
    dropped = DataLoader(dataset, 4, num_workers=0, drop_last=True, num_replicas=2, rank=1)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [2, 2]
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 2\)"):
        DataLoader(dataset, 4, num_replicas=2, rank=2)


def test_buckets_hold_several_parameters_last_layer_first():
    sizes, itemsizes = [100, 10, 5000, 20, 30], [4] * 5
    assert distributed.plan_buckets(sizes, itemsizes, 500) == [[4, 3], [2], [1, 0]]
    assert distributed.plan_buckets(sizes, itemsizes, 10 ** 6) == [[4, 3, 2, 1, 0]]


class TwinWorld(distributed._World):
    """A fake world of two ranks whose other rank is this one's twin: it sends the same batch
    sizes and gradients, so each sum is twice this rank's. Records when each bucket starts."""

    def __init__(self, rank=0):
        super().__init__(None)
        self.size, self.rank, self.started, self.ddp = 2, rank, [], None

    def allgather(self, value, what):
        return [value, value]

    def bcast(self, value, root, what):
        return value

    def broadcast_array(self, array, root, what):
        return array

    def start_allreduce(self, buffer, what):
        buffer *= 2
        self.started.append((int(what.split()[-1]), self.ddp._arrived))
        return "request"

    def test(self, request):
        return True

    def wait(self, request, what):
        pass


def wrap(model, world, bucket_mb):
    previous = distributed._state["world"]
    distributed._state["world"] = world
    try:
        ddp = distributed.DistributedDataParallel(model, bucket_mb=bucket_mb)
    finally:
        distributed._state["world"] = previous
    world.ddp = ddp
    return ddp


def test_gradients_are_averaged_in_buckets_sent_in_order_during_backward():
    minidl.manual_seed(0)
    model = worker.mini_alexnet()
    x = np.random.default_rng(1).normal(0, 1, (4, 3, 67, 67)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    with model.evaluating():  # no dropout: the same function twice
        ops.softmax_cross_entropy(model(minidl.Tensor(x)), y).backward()
        expected = [p.grad.data.copy() for p in model.parameters()]
        model.zero_grad()
        world = TwinWorld()
        ddp = wrap(model, world, bucket_mb=0.004)
        ops.softmax_cross_entropy(ddp(minidl.Tensor(x)), y).backward()  # no synchronize() needed
    for p, g in zip(model.parameters(), expected):
        np.testing.assert_array_equal(p.grad.data, g)  # (g / 2) * 2: exact
    numbers = [number for number, _ in world.started]
    assert numbers == list(range(len(ddp._buckets))) and len(numbers) >= 4
    assert sum(len(b.indices) for b in ddp._buckets) == 16 > len(ddp._buckets)  # several per message
    # The first buckets left while backward still had gradients to deliver: overlap.
    assert world.started[0][1] < 16 and world.started[-1][1] == 16
    # State dicts carry no prefix: a checkpoint of many ranks loads into one process's model.
    assert list(ddp.state_dict()) == list(model.state_dict())


def test_a_ranks_dropout_masks_are_those_of_its_samples_in_the_global_batch():
    model = layers.Sequential(layers.Linear(6, 6), layers.Dropout(0.5))
    x = np.random.default_rng(2).normal(0, 1, (8, 6)).astype(np.float32)
    minidl.manual_seed(7)
    whole = model(minidl.Tensor(x)).data
    ddp = wrap(model, TwinWorld(rank=1), bucket_mb=1)  # rank 1: the second half of the batch
    minidl.manual_seed(7)
    half = ddp(minidl.Tensor(x[4:])).data
    np.testing.assert_array_equal(half, whole[4:])
    assert (half == 0).any()  # dropout was on
    # Outside the wrapper's forward the module is as it was: the first half's masks.
    minidl.manual_seed(7)
    np.testing.assert_array_equal(model(minidl.Tensor(x[:4])).data, whole[:4])


class FakeNccl:
    """What minidl uses of ``cupy.cuda.nccl`` and ``cupy.cuda``, recording the calls."""
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM, NCCL_MAX, NCCL_MIN = "f32", "f64", "sum", "max", "min"
    NCCL_FLOAT16, NCCL_INT32, NCCL_INT64, NCCL_UINT8 = "f16", "i32", "i64", "u8"

    def __init__(self):
        self.calls = []
        nccl = self

        class Communicator:
            def __init__(self, size, uid, rank):
                nccl.calls.append(("communicator", size, uid, rank))

            def allReduce(self, send, receive, count, dtype, op, stream):
                nccl.calls.append(("allReduce", send, receive, count, dtype, op, stream))

            def bcast(self, pointer, count, dtype, root, stream):
                nccl.calls.append(("bcast", pointer, count, dtype, root, stream))

        class Event:
            def __init__(self, disable_timing=True):
                self.done = False

            def record(self, stream):
                nccl.calls.append(("record", stream.ptr))

        class Stream:
            def __init__(self, non_blocking=False, ptr=7):
                self.ptr = ptr

            def wait_event(self, event):
                nccl.calls.append(("wait_event", self.ptr))

            def synchronize(self):
                nccl.calls.append(("synchronize", self.ptr))

        self.NcclCommunicator, self.Event, self.Stream = Communicator, Event, Stream
        self.current = Stream(ptr=1)

    def get_unique_id(self):
        return (1, 2, 3)

    def get_current_stream(self):
        return self.current


class FakeDeviceArray:
    """A float32 array that says where it lives as CuPy's do (``.data.ptr``)."""

    def __init__(self, n):
        self.size, self.dtype = n, np.dtype(np.float32)
        self.flags = np.empty(1).flags
        self.data = type("Memory", (), {"ptr": 4096})()


def test_nccl_reduces_device_buffers_on_its_own_stream_after_the_gradients_are_written():
    fake = FakeNccl()
    nccl = distributed._Nccl(TwinWorld(), nccl=fake, cuda=fake)
    assert fake.calls == [("communicator", 2, (1, 2, 3), 0)]
    fake.calls.clear()
    request = nccl.start(FakeDeviceArray(1000))
    # The communication stream (7) waits for the compute stream (1), then reduces in place.
    assert fake.calls == [("record", 1), ("wait_event", 7), ("allReduce", 4096, 4096, 1000, "f32", "sum", 7),
                          ("record", 7)]
    fake.calls.clear()
    nccl.wait(request)  # the compute stream waits on the device: no host synchronisation
    assert fake.calls == [("wait_event", 1)]
    fake.calls.clear()
    nccl.broadcast(FakeDeviceArray(10), 0, "test")
    assert fake.calls == [("bcast", 4096, 10, "f32", 0, 1), ("synchronize", 1)]
    bad = FakeDeviceArray(3)
    bad.dtype = np.dtype(np.complex64)
    with pytest.raises(TypeError, match="NCCL cannot reduce complex64"):
        nccl.start(bad)


def test_alone_the_helpers_return_their_input_and_the_checkpoint_records_one_process():
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.allreduce(3) == 3 and distributed.allreduce(2.5, op="mean") == 2.5
    np.testing.assert_array_equal(distributed.allreduce(np.arange(3.0)), np.arange(3.0))
    state = {"a": [np.ones(2), ("x", 1)]}
    assert distributed.broadcast(state) is state
    with pytest.raises(ValueError, match="op must be one of"):
        distributed.allreduce(1, op="product")
    assert runs.environment()["processes"] == 1
    here = runs.environment()
    assert runs.environment_differences({**here, "processes": 2}, here) == ["processes 2 -> 1"]
    older = {key: value for key, value in here.items() if key != "processes"}
    assert runs.environment_differences(older, here) == []  # before the record: one process


# == with MPI ========================================================================================
def _mpi_missing():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e \".[mpi]\")"
    if shutil.which("mpiexec") is None:
        return "mpiexec is not on PATH (pip install -e \".[mpi]\" brings MPICH's)"
    return None


MPI_MISSING = _mpi_missing()
if MPI_MISSING:
    warnings.warn(f"tests/test_distributed.py: the tests that need MPI are skipped: {MPI_MISSING}")
needs_mpi = pytest.mark.skipif(MPI_MISSING is not None, reason=f"needs MPI: {MPI_MISSING}")
# One thread per rank, two ranks on two cores; the process compared with them uses the same.
ENV = {**os.environ, "PYTHONPATH": ROOT, "MINIDL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MINIDL_DISTRIBUTED_TIMEOUT": "60", "PYTHONUNBUFFERED": "1"}


def mpiexec(args, timeout=240, env=None):
    started = time.monotonic()
    done = subprocess.run(["mpiexec", "-n", "2", sys.executable] + args, capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)
    return done, time.monotonic() - started


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    done, _ = mpiexec([WORKER, "train", str(out)])
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def load(out, name, rank):
    with open(out / f"{name}-rank{rank}.json") as f:
        return dict(np.load(out / f"{name}-rank{rank}.npz")), json.load(f)


def scores(history):
    return [{k: v for k, v in record.items() if k not in ("seconds", "val_seconds", "images_per_s")}
            for record in history]


@needs_mpi
@pytest.mark.parametrize("name", ["alexnet", "euronet"])
def test_two_ranks_train_as_one_process_at_the_same_global_batch(trained, name, monkeypatch):
    params0, log0 = load(trained, name, 0)
    params1, log1 = load(trained, name, 1)
    assert len(log0["digests"]) == worker.STEPS * worker.EPOCHS
    assert log0["digests"] == log1["digests"]  # every rank, every step, bit for bit
    for key in params0:
        np.testing.assert_array_equal(params0[key], params1[key])
    with _one_thread(monkeypatch):
        model, _, result = worker.train(name)
    scale = max(float(np.abs(p.data).max()) for p in model.parameters())
    for key, p in model.named_parameters():
        np.testing.assert_allclose(params0[key], p.data, rtol=0, atol=1e-6 * scale, err_msg=key)
    single, together = scores(result["history"]), scores(log0["history"])
    assert len(single) == len(together) == worker.EPOCHS
    for a, b in zip(together, single):
        assert a.keys() == b.keys()
        for key in a:
            if key.endswith("loss"):
                assert a[key] == pytest.approx(b[key], rel=1e-6), key
            else:
                assert a[key] == b[key], key  # errors, epochs, steps, lr


class _one_thread:
    """MINIDL_NUM_THREADS / BLAS at one thread in this process, like each rank's."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def __enter__(self):
        from threadpoolctl import threadpool_limits
        self.limits = threadpool_limits(1, user_api="blas")
        set_threads = getattr(minidl.cpu, "set_num_threads", None)
        self.previous = set_threads(1) if set_threads else None
        return self

    def __exit__(self, *exc):
        self.limits.restore_original_limits()
        if self.previous is not None:
            minidl.cpu.set_num_threads(self.previous)


@needs_mpi
def test_a_stopped_two_rank_run_resumes_bitwise_and_on_one_process_to_rounding(trained, tmp_path, monkeypatch):
    _, uninterrupted = load(trained, "euronet", 0)
    resumed_params, resumed = load(trained, "resumed", 0)
    assert resumed["digests"][-1] == uninterrupted["digests"][-1]
    assert scores(resumed["history"])[-1]["val_loss"] == scores(uninterrupted["history"])[-1]["val_loss"]
    # The checkpoint of 2 ranks, stopped after step 2 of epoch 1, goes on in one process.
    folder = tmp_path / "run"
    shutil.copytree(trained / "stopped", folder)
    with _one_thread(monkeypatch), pytest.warns(ResumeWarning, match="processes 2 -> 1"):
        model, _, result = worker.train("euronet", folder, resume=True)
    scale = max(float(np.abs(p.data).max()) for p in model.parameters())
    for key, p in model.named_parameters():
        np.testing.assert_allclose(resumed_params[key], p.data, rtol=0, atol=1e-6 * scale, err_msg=key)
    assert result["step"] == worker.STEPS * worker.EPOCHS


@needs_mpi
def test_a_run_stopped_on_one_process_resumes_on_two_to_rounding(trained, tmp_path, monkeypatch):
    """The other way round: one process stops after step 2 of epoch 1, two ranks finish the
    run, rank 0 warned of the change, and end where the uninterrupted two-rank run ended."""
    params_together, _ = load(trained, "euronet", 0)
    folder = tmp_path / "run"
    with _one_thread(monkeypatch):
        worker.train("euronet", folder, max_steps=2)
    done, _ = mpiexec([WORKER, "resume", str(folder)])
    assert done.returncode == 0, done.stdout + done.stderr
    with open(folder / "warnings-rank0.json") as f:
        assert any("processes 1 -> 2" in message for message in json.load(f))
    with open(folder / "warnings-rank1.json") as f:
        assert json.load(f) == []  # rank 0 alone warns: every rank would say the same
    resumed0, log0 = load(folder, "resumed", 0)
    resumed1, log1 = load(folder, "resumed", 1)
    assert log0["digests"] == log1["digests"]
    assert len(log0["history"]) == worker.EPOCHS
    scale = max(float(np.abs(v).max()) for v in params_together.values())
    for key, value in params_together.items():
        np.testing.assert_array_equal(resumed0[key], resumed1[key])
        np.testing.assert_allclose(resumed0[key], value, rtol=0, atol=1e-6 * scale, err_msg=key)


@needs_mpi
def test_different_models_are_named_and_a_nan_on_one_rank_stops_every_rank(trained):
    for rank in (0, 1):
        with open(trained / f"faults-rank{rank}.json") as f:
            faults = json.load(f)
        assert "the ranks hold different models" in faults["mismatch"]
        assert "first difference: parameter 0.weight (12, 3, 11, 11)" in faults["mismatch"]
        assert "(8, 3, 11, 11) float32 on cpu on rank 1" in faults["mismatch"]
        assert faults["diverged"] is not None and "the loss is nan" in faults["diverged"]


@needs_mpi
def test_a_rank_that_raises_ends_the_job_naming_it():
    done, seconds = mpiexec([WORKER, "raise"], timeout=120)
    assert done.returncode == 1
    assert "rank 1 of 2 failed (RuntimeError: a planned failure of rank 1); stopping all ranks" in done.stderr
    assert seconds < 60


@needs_mpi
def test_an_error_meant_for_every_rank_met_by_one_alone_ends_the_job_naming_it():
    """An error marked as one every rank meets (the same options, the same data) but met by
    one rank alone -- its machine lacks the data folder -- ends the job after the grace period
    (a quarter of the watchdog's 8 s here), naming the rank, instead of leaving the others to
    wait for the watchdog."""
    done, seconds = mpiexec([WORKER, "raise-as-if-everywhere"], timeout=120,
                            env={**ENV, "MINIDL_DISTRIBUTED_TIMEOUT": "8"})
    assert done.returncode == 1
    assert "rank 1 of 2 failed (FileNotFoundError: rank 1's data is missing)" in done.stderr
    assert "waited more than" not in done.stderr  # not the watchdog


@needs_mpi
def test_a_killed_rank_ends_the_job_and_its_pid_names_the_rank():
    done, seconds = mpiexec([WORKER, "kill"], timeout=120)
    assert done.returncode != 0 and seconds < 60
    table = done.stdout.splitlines()[0]  # 'rank 0: PID 123 on vm; rank 1: PID 124 on vm'
    pid = table.split("rank 1: PID ")[1].split()[0]
    assert f"PID {pid} " in done.stdout + done.stderr.replace("PID " + pid + "\n", f"PID {pid} \n")


@needs_mpi
def test_a_rank_that_stops_answering_is_ended_by_the_watchdog():
    done, seconds = mpiexec([WORKER, "hang"], timeout=120,
                            env={**ENV, "MINIDL_DISTRIBUTED_TIMEOUT": "3"})
    assert done.returncode != 0
    assert "rank 0 of 2 waited more than 3 s for the other ranks" in done.stderr
    assert seconds < 60


@needs_mpi
def test_the_example_under_mpiexec_prints_once_saves_once_on_sigterm_and_resumes(tmp_path):
    out = tmp_path / "out"
    command = ["mpiexec", "-n", "2", sys.executable, os.path.join(ROOT, "examples", "euronet_eurosat.py"),
               "--demo-per-class", "3", "--batch-size", "8", "--grad-cam-images", "1", "--workers", "0",
               "--demo-dir", str(tmp_path / "demo"), "--out", str(out), "--epochs", "30"]
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    lines = []
    for line in running.stdout:
        lines.append(line)
        if line.startswith("epoch 2/30"):
            break
    running.send_signal(signal.SIGTERM)  # mpiexec passes it to every rank
    rest, err = running.communicate(timeout=120)
    printed = "".join(lines) + rest
    assert running.returncode == 143, err
    assert printed.startswith("processes: 2 (rank 0: PID")
    assert printed.count("epoch 1/30") == 1 and printed.count("Total params") == 1
    assert err.count("stopped by SIGTERM after step") == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("--epochs 30 --resume") and "mpiexec -n 2 python" in err
    from minidl import checkpoint
    saved = checkpoint.load(out / "checkpoint.npz")
    assert saved["environment"]["processes"] == 2 and saved["run"]["epoch"] >= 2
    finish = command[:-2] + ["--epochs", str(saved["run"]["epoch"] + 1), "--resume", "--grad-cam-images", "0"]
    done = subprocess.run(finish, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(f"resuming from {out / 'checkpoint.npz'}") == 1
    with open(out / "metrics.jsonl") as f:
        assert len([line for line in f if line.strip()]) == saved["run"]["epoch"] + 1


@needs_mpi
def test_the_alexnet_example_trains_on_an_imagenet_folder_under_mpiexec(tmp_path):
    """``mpiexec -n 2 python examples/alexnet_imagenet.py --data DIR``: an ImageNet-layout folder
    (here the demo's, written first by one process), one epoch, rank 0 alone printing and
    writing, the ten-crop evaluation over the whole validation set."""
    data = tmp_path / "data"
    make = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "alexnet_imagenet.py"),
                           "--demo-classes", "2", "--demo-per-class", "4", "--demo-val-per-class", "3",
                           "--demo-dir", str(data), "--out", str(tmp_path / "first"), "--max-steps", "1",
                           "--grad-cam-images", "0", "--workers", "0"],
                          capture_output=True, text=True, timeout=240, env=ENV)
    assert make.returncode == 0, make.stderr
    out = tmp_path / "out"
    done, _ = mpiexec([os.path.join(ROOT, "examples", "alexnet_imagenet.py"), "--data", str(data),
                       "--batch-size", "4", "--epochs", "1", "--grad-cam-images", "1", "--workers", "0",
                       "--out", str(out)], timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("processes: 2 (rank 0: PID")
    assert done.stdout.count("epoch 1/1") == 1 and done.stdout.count("Total params") == 1
    assert "evaluating the final model on 6 validation images, ten crops each" in done.stdout
    assert done.stdout.count("ten-crop validation: loss") == 1
    from minidl import checkpoint
    assert checkpoint.load(out / "checkpoint.npz")["environment"]["processes"] == 2
    assert len(list(out.glob("grad_cam_*.png"))) == 1
