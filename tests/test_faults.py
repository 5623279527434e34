"""Fault injection: each failure of the reliability review (issue 10, points 1-13) reproduced on a
small run, and what must keep holding (kill -9 never corrupts a checkpoint, resume is bitwise,
corrupt files are refused by name, loader threads do not change the bits).

Runs are tiny: a five-layer network on 48 in-memory samples, 6 steps per epoch. Real signals are
sent in this process where the run survives them (SIGINT, SIGTERM); ``kill -9`` and a second
process on the same folder need child processes, which run this file's ``_child`` entry point.
The examples are run a few times with 2-5 generated images per class.
"""
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

import minidl
from minidl import checkpoint, layers, ops, runs, train
from minidl.data import (ArrayDataset, DataLoader, EuroSAT, ImageFolder, SkippedFileWarning, SkippedSample,
                         collate, demo, eurosat_splits, make_demo_eurosat)
from minidl.data import transforms as T
from minidl.metrics import top1, with_one_hot
from minidl.optim import SGD, ReduceLROnPlateau
from minidl.train import DivergenceError, RecipeChangedError, ResumeWarning, TrainingInterrupted, fit

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")
STEPS_PER_EPOCH = 6


# -- a tiny run -----------------------------------------------------------------------------------
def blobs(n, seed):
    centres = np.random.default_rng(100).normal(0, 1.5, (3, 8))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = centres[y] + rng.normal(0, 1.0, (n, 8))
    return x.reshape(n, 2, 2, 2).astype(np.float32), y


class FaultyLoader:
    """A DataLoader with a hook called as each batch is fetched: ``hook(epoch, batch_index,
    images)`` may send a signal, wait, or return other images (a NaN batch)."""

    def __init__(self, inner, hook=None):
        self.inner, self.hook = inner, hook
        self.seed, self.batch_size = inner.seed, inner.batch_size
        self.start = 0

    def __len__(self):
        return len(self.inner)

    def set_epoch(self, epoch, batch=0):
        self.inner.set_epoch(epoch, batch)
        self.start = batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)
        self.start = state.get("batch", 0)

    def __iter__(self):
        epoch, start, self.start = self.inner.epoch, self.start, 0
        for index, (images, labels) in enumerate(self.inner, start=start):
            replaced = None if self.hook is None else self.hook(epoch, index)
            yield (images if replaced is None else replaced), labels


def at(epoch, batch, action):
    """A hook running ``action()`` once, the first time batch ``batch`` of epoch ``epoch`` is
    fetched (both counted from 0); what ``action`` returns, if not None, replaces the images."""
    done = []

    def hook(e, b):
        if (e, b) == (epoch, batch) and not done:
            done.append(True)
            return action()
        return None
    return hook


def nan_batch():
    return np.full((8, 2, 2, 2), np.nan, np.float32)


def build(lr=0.05, workers=0, batch_size=8, seed=0, momentum=0.9, hook=None):
    """Model, optimiser, schedule and loaders, as a fresh process builds them."""
    minidl.manual_seed(seed)
    model = layers.Sequential(layers.Flatten(), layers.Linear(8, 16), layers.ReLU(), layers.Dropout(0.5),
                              layers.Linear(16, 3))
    optimizer = SGD(model.parameters(), lr=lr, momentum=momentum)
    scheduler = ReduceLROnPlateau(optimizer, patience=1)
    x, y = blobs(48, 0)
    vx, vy = blobs(24, 1)
    train_loader = FaultyLoader(DataLoader(ArrayDataset(x, y), batch_size, shuffle=True, seed=seed,
                                           num_workers=workers), hook)
    val_loader = DataLoader(ArrayDataset(vx, vy), 12, num_workers=0)
    return model, optimizer, scheduler, train_loader, val_loader


def train_run(out, epochs, hook=None, lr=0.05, workers=0, batch_size=8, momentum=0.9, **options):
    """Build and fit; returns (model, optimizer, result)."""
    model, optimizer, scheduler, loader, val = build(lr, workers, batch_size, momentum=momentum, hook=hook)
    options.setdefault("progress", False)
    result = fit(model, ops.softmax_cross_entropy, optimizer, loader, epochs, val_loader=val,
                 scheduler=scheduler, out_dir=out, metrics=(top1,), **options)
    return model, optimizer, result


def weights(model):
    return {name: value.copy() for name, value in model.state_dict().items()}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs"


def digest(folder):
    """name -> sha256 of every file in ``folder``."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The weights of an uninterrupted 3-epoch run, and its history."""
    model, _, result = train_run(tmp_path_factory.mktemp("reference") / "out", 3)
    return weights(model), result["history"]


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s", "val_seconds")} for r in history]


# -- child processes -------------------------------------------------------------------------------
def _child(out, epochs, result_path, fault, resume):
    """A run in its own process (``python test_faults.py OUT EPOCHS RESULT FAULT [--resume]``),
    killed or signalled where ``fault`` says; its final weights go to ``result_path``."""
    kind, _, count = fault.partition(":")
    if kind in ("kill-checkpoint", "kill-best"):
        which = "minidl.train.fit" if kind == "kill-checkpoint" else "minidl.train.best"
        original, calls = checkpoint._write_npz, []

        def write_half_then_die(file, members):
            if json.loads(members["tree"].tobytes())["state"]["kind"] == which:
                calls.append(1)
                if len(calls) == int(count):
                    file.write(b"PK\x03\x04" + b"\x00" * 5000)  # half a zip, then the power goes
                    file.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
            original(file, members)
        checkpoint._write_npz = write_half_then_die
    if kind == "kill-before-metrics":
        original_append, appended = train._append_metrics, []

        def die_before_the_log(path, record):
            appended.append(1)
            if len(appended) == int(count):
                os.kill(os.getpid(), signal.SIGKILL)
            original_append(path, record)
        train._append_metrics = die_before_the_log
    hook = None
    if kind == "wait":  # announce batch 3 of epoch 2, then wait for the parent's signal
        def wait():
            open(os.path.join(os.path.dirname(out), "ready"), "w").close()
            for _ in range(4000):
                if os.path.exists(os.path.join(os.path.dirname(out), "go")):
                    break
                time.sleep(0.005)
        hook = at(1, 3, wait)
    try:
        model, _, _ = train_run(out, int(epochs), hook=hook, resume=resume)
    except TrainingInterrupted as stop:
        print(f"child: {stop}", file=sys.stderr, flush=True)
        sys.exit(stop.exit_status)
    np.savez(result_path, **weights(model))


def child(tmp_path, name, epochs, fault="", resume=False, wait=True):
    """Start ``_child`` in a new process; returns the Popen (waited for unless ``wait`` is False)."""
    out, result = tmp_path / "out", tmp_path / f"{name}.npz"
    command = [sys.executable, os.path.abspath(__file__), str(out), str(epochs), str(result), fault]
    process = subprocess.Popen(command + (["--resume"] if resume else []), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})
    if wait:
        process.stdout_text, process.stderr_text = process.communicate(timeout=120)
    return process


def load_result(path):
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}


def stale_temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if runs.STALE_TEMPORARY.match(p.name))


# == what must keep holding ============================================================================
@pytest.mark.parametrize("fault, saves_before", [("kill-checkpoint:2", 1), ("kill-best:1", None),
                                                 ("kill-before-metrics:2", 2)])
def test_kill_9_inside_a_save_never_corrupts_and_resume_is_bitwise(tmp_path, reference, fault, saves_before):
    """kill -9 half-way through writing checkpoint.npz or best.npz, or between the checkpoint's
    rename and the log line: the old (or new) checkpoint loads, the temporary is deleted and
    named by the next start, and the resumed run ends bitwise where the uninterrupted one did."""
    killed = child(tmp_path, "killed", 3, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr_text
    out = tmp_path / "out"
    if saves_before is None:  # killed inside the first save of all, best.npz's
        assert not (out / "checkpoint.npz").exists() and not (out / "best.npz").exists()
    else:
        assert checkpoint.load(out / "checkpoint.npz")["run"]["epoch"] == saves_before
    leftovers = stale_temporaries(out)
    assert len(leftovers) == (0 if fault.startswith("kill-before") else 1)
    assert (out / runs.LOCK_NAME).exists()  # the killed run's lock, stale now

    resumed = child(tmp_path, "resumed", 3, resume=True)
    assert resumed.returncode == 0, resumed.stderr_text
    assert stale_temporaries(out) == []
    for name in leftovers:
        assert f"deleted 1 temporary file(s) left by a save that was killed: {name}" in resumed.stderr_text
    assert "took over a stale lock" in resumed.stderr_text
    assert_bitwise_equal(load_result(tmp_path / "resumed.npz"), reference[0])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_loader_threads_do_not_change_the_bits(tmp_path, reference):
    model, _, _ = train_run(tmp_path / "w2", 3, workers=2)
    assert_bitwise_equal(weights(model), reference[0])


def test_corrupt_and_foreign_checkpoints_are_refused_by_name_without_unpickling(tmp_path):
    train_run(tmp_path / "run", 1)
    good = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    cases = {"random.npz": np.random.default_rng(0).bytes(4000), "half.npz": good[:len(good) // 2],
             "empty.npz": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(checkpoint.CheckpointError, match=name) as caught:
            checkpoint.load(tmp_path / name)
        assert "pickle" not in str(caught.value)  # review 2.2: NumPy's hint about allow_pickle
    tree = checkpoint.load(tmp_path / "run" / "checkpoint.npz")
    del tree["run"]
    checkpoint.save(tmp_path / "norun" / "checkpoint.npz", **tree)
    with pytest.raises(checkpoint.CheckpointError, match=r"lacks \['run'\]"):
        train_run(tmp_path / "norun", 2, resume=True)


def test_a_checkpoint_of_another_model_is_refused_naming_the_file(tmp_path):
    train_run(tmp_path / "run", 1)
    minidl.manual_seed(0)
    other = layers.Sequential(layers.Flatten(), layers.Linear(8, 4), layers.ReLU(), layers.Linear(4, 3))
    _, _, _, loader, val = build()
    optimizer = SGD(other.parameters(), lr=0.05)
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint.npz.*does not fit this model"):
        fit(other, ops.softmax_cross_entropy, optimizer, loader, 2, val_loader=val, out_dir=tmp_path / "run",
            resume=True, progress=False, metrics=(top1,), scheduler=ReduceLROnPlateau(optimizer, patience=1))


# == 1. a second run without --resume ==================================================================
def test_1_a_second_run_in_a_folder_holding_a_run_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    train_run(out, 2)
    before = digest(out)
    with pytest.raises(runs.RunFolderError, match=r"already holds a run \(checkpoint.npz, best.npz, "
                                                   r"metrics.jsonl, curves.png\)") as refused:
        train_run(out, 1)
    assert refused.value.files == ["checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png"]
    assert digest(out) == before
    assert not (out / runs.LOCK_NAME).exists()  # released after the refusal
    _, _, result = train_run(out, 1, overwrite=True)
    assert "overwrite: deleted the previous run's checkpoint.npz, best.npz, metrics.jsonl, curves.png" \
        in capsys.readouterr().err
    assert len(result["history"]) == 1 and len((out / "metrics.jsonl").read_text().splitlines()) == 1
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        train_run(out, 2, resume=True, overwrite=True)


def test_1_the_examples_refuse_a_folder_holding_a_run_before_reading_any_data(tmp_path, capsys, load_example):
    euronet = load_example("euronet_eurosat")
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"a previous run")
    (out / "best.npz").write_bytes(b"its best model")
    with pytest.raises(SystemExit, match=r"--out .*out already holds a run \(checkpoint.npz, best.npz\): "
                                         r"add --resume to continue it, or --overwrite to replace it"):
        euronet.main(["--out", str(out), "--demo-dir", str(tmp_path / "demo")])
    assert not (tmp_path / "demo").exists()  # refused before the demo set was written
    assert (out / "checkpoint.npz").read_bytes() == b"a previous run"
    with pytest.raises(SystemExit) as usage:
        euronet.main(["--out", str(out), "--resume", "--overwrite"])
    assert usage.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_1_resume_into_a_folder_with_only_best_npz_is_refused_and_keeps_it(tmp_path, load_example):
    """A folder holding best.npz and metrics but no checkpoint.npz (the user deleted it, or
    copied best.npz there) cannot be resumed; neither fit nor the example touches the files."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "best.npz").write_bytes(b"its best model")
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(runs.RunFolderError, match=r"already holds a run \(best.npz, metrics.jsonl\); "
                                                   r"it holds no checkpoint.npz to resume from"):
        train_run(out, 1, resume=True)
    euronet = load_example("euronet_eurosat")
    with pytest.raises(SystemExit, match=r"holds best.npz, metrics.jsonl but no checkpoint.npz to resume "
                                         r"from; add --overwrite \(instead of --resume\)"):
        euronet.main(["--out", str(out), "--resume", "--demo-dir", str(tmp_path / "demo")])
    assert (out / "best.npz").read_bytes() == b"its best model"
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert not (tmp_path / "demo").exists()


# == 2. NaN and divergence =========================================================================
class ExplodeAfter:
    """A schedule that sets the learning rate to ``lr`` after ``epochs`` epochs (review 4.3)."""

    needs_metric = False

    def __init__(self, optimizer, epochs, lr):
        self.optimizer, self.epochs, self.lr, self.epoch = optimizer, epochs, lr, 0

    def step(self):
        self.epoch += 1
        if self.epoch == self.epochs:
            self.optimizer.lr = self.lr

    def state_dict(self):
        return {"epochs": self.epochs, "lr": self.lr, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.epochs, self.lr, self.epoch = state["epochs"], state["lr"], state["epoch"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy on overflow
def test_2_divergence_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "out"
    model, optimizer, _, loader, val = build()
    with pytest.raises(DivergenceError) as stopped:
        fit(model, ops.softmax_cross_entropy, optimizer, loader, 6, val_loader=val, out_dir=out,
            scheduler=ExplodeAfter(optimizer, 2, 1e30), progress=False, metrics=(top1,))
    message = str(stopped.value)
    # The first step at lr 1e30 still has finite numbers; the second overflows.
    assert "training diverged at step 14 (epoch 3, batch 2): the loss is" in message, message
    assert f"the last good checkpoint is {out / 'checkpoint.npz'} (2 epoch(s), step 12)" in message
    assert stopped.value.step == 14 and stopped.value.checkpoint == str(out / "checkpoint.npz")
    for name in ("checkpoint.npz", "best.npz"):
        state = checkpoint.load(out / name)["model"]
        assert all(np.isfinite(v).all() for v in state.values()), name
    assert checkpoint.load(out / "checkpoint.npz")["run"]["epoch"] == 2
    assert all(np.isfinite(v).all() for v in model.state_dict().values())  # the NaN update was not taken


def test_2_nan_from_step_1_stops_and_writes_no_weights(tmp_path):
    nan_images = at(0, 0, nan_batch)
    with pytest.raises(DivergenceError, match=r"step 1 \(epoch 1, batch 1\): the loss is nan.*"
                                              r"no checkpoint has been written yet"):
        train_run(tmp_path / "out", 3, hook=nan_images)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.jsonl"]


class PoisonOnce(SGD):
    """An optimiser whose update writes NaN into the weights once, at step ``at``, although the
    loss and the gradients were finite: what the per-step guard cannot see."""

    def __init__(self, params, at, **options):
        super().__init__(params, **options)
        self.at = at

    def step(self):
        super().step()
        if self.steps == self.at:
            for p in self.params:
                p.data[...] = np.nan


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy on overflow
def test_2_a_nan_model_is_never_saved_and_never_best(tmp_path):
    """Review 4.2: an all-NaN AlexNet scores a finite top-1 error of 1.0 and became best.npz."""
    model, _, _, loader, val = build()
    scores = model(minidl.Tensor(np.full((4, 2, 2, 2), np.nan, np.float32))).data
    assert top1(scores, np.zeros(4, np.int64)) == 1.0  # finite: the trap
    optimizer = PoisonOnce(model.parameters(), at=2 * STEPS_PER_EPOCH, lr=0.05)
    with pytest.raises(DivergenceError, match="the weights are not finite after step 12"):
        fit(model, ops.softmax_cross_entropy, optimizer, loader, 4, val_loader=val, out_dir=tmp_path,
            progress=False, metrics=(top1,), monitor="val_top1")
    assert checkpoint.load(tmp_path / "checkpoint.npz")["run"]["epoch"] == 1
    best = checkpoint.load(tmp_path / "best.npz")
    assert best["epoch"] == 1 and all(np.isfinite(v).all() for v in best["model"].values())


def test_2_skip_leaves_a_nan_batch_out_and_goes_on(tmp_path):
    nan_images = at(1, 2, nan_batch)
    model, _, result = train_run(tmp_path / "out", 3, hook=nan_images, on_nonfinite="skip")
    history = result["history"]
    assert [r.get("skipped_batches") for r in history] == [None, 1, None]
    assert result["step"] == 3 * STEPS_PER_EPOCH - 1
    assert all(np.isfinite(v).all() for v in weights(model).values())
    lines = [json.loads(s) for s in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["skipped_batches"] == 1 and all(np.isfinite(r["train_loss"]) for r in lines)
    with pytest.raises(DivergenceError, match=r"step 1 \(epoch 2, batch 4\).*the 10th non-finite batch in a row"):
        train_run(tmp_path / "all-nan", 3, hook=lambda epoch, index: nan_batch(), on_nonfinite="skip")
    first = json.loads((tmp_path / "all-nan" / "metrics.jsonl").read_text())
    assert first["train_loss"] is None and first["skipped_batches"] == 6  # not a loss of 0


def test_2_reduce_lr_goes_back_to_the_last_checkpoint_with_a_tenth_of_the_rate(tmp_path, capsys):
    """Going back equals resuming the checkpoint with lr / 10, bit for bit."""
    nan_once = at(1, 3, nan_batch)
    model, optimizer, result = train_run(tmp_path / "rolled", 3, hook=nan_once, on_nonfinite="reduce_lr")
    assert "went back to the state after step 6 and divided the learning rate by 10: 0.05 -> 0.005" \
        in capsys.readouterr().err
    assert [r["lr"] for r in result["history"]][:2] == pytest.approx([0.05, 0.005])

    train_run(tmp_path / "by-hand", 1)
    resumed, _, by_hand = train_run(tmp_path / "by-hand", 3, lr=0.05 * train.LR_FACTOR, resume=True,
                                    accept_changed_recipe=True)
    assert_bitwise_equal(weights(model), weights(resumed))
    assert without_timing(result["history"]) == without_timing(by_hand["history"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy on overflow
def test_2_the_euronet_example_ends_a_diverged_run_with_status_3_and_one_line(tmp_path, capsys, load_example):
    euronet = load_example("euronet_eurosat")
    with pytest.raises(SystemExit) as ended:
        euronet.main(EURONET_TINY + ["--demo-dir", str(tmp_path / "demo"), "--out", str(tmp_path / "out"),
                                     "--lr", "1e30", "--epochs", "2"])
    assert ended.value.code == 3
    err = capsys.readouterr().err
    assert "euronet_eurosat.py: error: training diverged at step" in err and "Traceback" not in err
    assert "--on-nonfinite skip or reduce-lr" in err


# == 3. a NaN pixel in one float GeoTIFF ============================================================
def write_tifs(root, per_class=3, classes=("Forest", "River"), dtype=np.uint16, size=64):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(1, per_class + 1):
            values = rng.uniform(500, 3000, (size, size, 13)) + 100 * c
            tifffile.imwrite(root / name / f"{name}_{k}.tif", values.astype(dtype),
                             photometric="minisblack", planarconfig="contig")


def test_3_a_nan_pixel_is_refused_or_masked_and_never_reaches_the_statistics(tmp_path):
    write_tifs(tmp_path, dtype=np.float32)
    poisoned = tmp_path / "River" / "River_2.tif"
    values = tifffile.imread(poisoned)
    values[5, 7, 3] = np.nan
    tifffile.imwrite(poisoned, values, photometric="minisblack", planarconfig="contig")
    with pytest.warns(SkippedFileWarning, match=r"River_2.tif: holds 1 NaN or infinite value"):
        train_set, test_set, (mean, std) = eurosat_splits(tmp_path, scale=1.0, num_workers=0)
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    assert len(train_set) + len(test_set) == 5
    assert "6 files in 2 classes, 5 used, 1 skipped (1 non-finite values)" in train_set.dataset.summary()
    with pytest.warns(SkippedFileWarning, match=r"River_2.tif: replaced 1 NaN"):
        train_set, test_set, (mean, std) = eurosat_splits(tmp_path, scale=1.0, nonfinite="mask", num_workers=0)
    assert np.isfinite(mean).all() and len(train_set) + len(test_set) == 6
    assert "6 used, 0 skipped; 1 file(s) with NaN or infinite values masked" in train_set.dataset.summary()
    image = train_set.dataset[train_set.dataset.samples.index((str(poisoned), 1))][0]
    assert np.isfinite(image).all()
    with pytest.raises(ValueError, match=r"image 1 \(counting from 0\) has non-finite values"):
        T.channel_mean_std(np.stack([np.ones((2, 3, 3)), np.full((2, 3, 3), np.nan)]))
    with pytest.raises(ValueError, match=r"ArrayDataset: 1 image\(s\) hold NaN.*sample\(s\) \[1\]"):
        ArrayDataset(np.stack([np.ones((1, 2, 2)), np.full((1, 2, 2), np.inf)]), [0, 1])
    masked = ArrayDataset(np.array([[[[1.0, np.nan], [3.0, 5.0]]]]), [0], nonfinite="mask")
    assert masked.images[0, 0, 0, 1] == 3.0


# == 4. Ctrl-C and SIGTERM =========================================================================
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_4_a_signal_saves_the_partial_epoch_and_resume_is_bitwise(tmp_path, reference, signum):
    out = tmp_path / "out"
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    send = at(1, 3, lambda: os.kill(os.getpid(), signum))
    with pytest.raises(TrainingInterrupted) as stopped:
        train_run(out, 3, hook=send)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # put back
    assert stopped.value.exit_status == 128 + signum and stopped.value.saved
    assert str(stopped.value) == (f"stopped by {signal.Signals(signum).name} after step 9; the checkpoint "
                                  f"{out / 'checkpoint.npz'} holds every step taken: resume to go on")
    saved = checkpoint.load(out / "checkpoint.npz")
    assert saved["run"]["step"] == 9 and saved["run"]["partial"]["batches"] == 3
    model, _, result = train_run(out, 3, resume=True)
    assert_bitwise_equal(weights(model), reference[0])
    assert without_timing(result["history"]) == without_timing(reference[1])
    assert not (out / runs.LOCK_NAME).exists()


def test_4_a_second_ctrl_c_stops_at_once_and_saves_nothing(tmp_path):
    out = tmp_path / "out"

    def twice():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="stopped at once by a second SIGINT") as stopped:
        train_run(out, 3, hook=at(1, 3, twice))
    assert not stopped.value.saved and stopped.value.exit_status == 130
    assert checkpoint.load(out / "checkpoint.npz")["run"]["step"] == STEPS_PER_EPOCH  # epoch 1's


def test_4_a_signal_from_outside_stops_a_child_run_which_resumes_bitwise(tmp_path, reference):
    running = child(tmp_path, "stopped", 3, "wait", wait=False)
    ready = tmp_path / "ready"
    for _ in range(6000):
        if ready.exists() or running.poll() is not None:
            break
        time.sleep(0.01)
    assert ready.exists(), running.communicate()
    running.send_signal(signal.SIGTERM)
    (tmp_path / "go").touch()
    _, err = running.communicate(timeout=120)
    assert running.returncode == 143, err
    assert "SIGTERM: stopping after this step and saving a checkpoint" in err
    assert "child: stopped by SIGTERM after step" in err and "Traceback" not in err
    resumed = child(tmp_path, "resumed", 3, resume=True)
    assert resumed.returncode == 0, resumed.stderr_text
    assert_bitwise_equal(load_result(tmp_path / "resumed.npz"), reference[0])


def test_4_ctrl_c_in_the_euronet_example_saves_prints_how_to_resume_and_exits_130(tmp_path):
    out, demo_dir = tmp_path / "out", tmp_path / "demo"
    command = [sys.executable, os.path.join(EXAMPLES, "euronet_eurosat.py")] + EURONET_TINY + [
        "--demo-dir", str(demo_dir), "--out", str(out), "--epochs", "30"]
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.path.dirname(HERE)})
    for line in running.stdout:
        if line.startswith("epoch 1/30"):
            break
    running.send_signal(signal.SIGINT)
    rest, err = running.communicate(timeout=300)
    assert running.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("euronet_eurosat.py: stopped by SIGINT after step") and "Traceback" not in err
    assert last.endswith("--epochs 30 --resume") and "to continue: python " in last
    saved = checkpoint.load(out / "checkpoint.npz")
    assert saved["run"]["epoch"] >= 1  # the signal came after epoch 1's line
    finish = command[:-2] + ["--epochs", str(saved["run"]["epoch"] + 1), "--resume", "--grad-cam-images", "0"]
    done = subprocess.run(finish, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})
    assert done.returncode == 0, done.stderr
    assert f"resuming from {out / 'checkpoint.npz'}" in done.stdout


# == 5. two runs in one folder =======================================================================
def test_5_a_second_run_in_a_folder_in_use_is_refused_naming_the_holder(tmp_path):
    holder = child(tmp_path, "holder", 3, "wait", wait=False)
    ready = tmp_path / "ready"
    for _ in range(6000):
        if ready.exists() or holder.poll() is not None:
            break
        time.sleep(0.01)
    try:
        assert ready.exists(), holder.communicate()
        with pytest.raises(runs.RunLockedError, match=rf"out is in use by another run \(PID {holder.pid} "
                                                      rf"on host {socket.gethostname()}"):
            train_run(tmp_path / "out", 3, resume=True)
        with pytest.raises(runs.RunLockedError):
            train_run(tmp_path / "out", 3, overwrite=True)
    finally:
        (tmp_path / "go").touch()
        holder.communicate(timeout=120)
    assert holder.returncode == 0


def test_5_a_stale_lock_is_taken_over_but_another_hosts_is_not(tmp_path, capsys):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True)
    out = tmp_path / "out"
    out.mkdir()
    lock = out / runs.LOCK_NAME
    lock.write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname(), "started": 0}))
    train_run(out, 1)
    assert f"took over a stale lock of PID {int(gone.stdout)}" in capsys.readouterr().err
    assert not lock.exists()
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": 0}))
    with pytest.raises(runs.RunLockedError, match=rf"PID 1 on host elsewhere.example.*if that run is over, "
                                                  rf"delete {lock}"):
        train_run(out, 2, resume=True)


# == 6. resume with changed options ===================================================================
def test_6_resume_with_changed_options_is_refused_or_really_uses_them(tmp_path, capsys):
    out = tmp_path / "out"
    train_run(out, 1, recipe={"variant": "paper"})
    with pytest.raises(RecipeChangedError, match=r"changed recipe \(lr 0.05 -> 0.5; momentum 0.9 -> 0.0\)"):
        train_run(out, 2, lr=0.5, momentum=0.0, resume=True, recipe={"variant": "paper"})
    with pytest.raises(RecipeChangedError, match=r"batch_size 8 -> 4"):
        train_run(out, 2, batch_size=4, resume=True, recipe={"variant": "paper"})
    with pytest.raises(RecipeChangedError, match=r"variant 'paper' -> 'caffe'"):
        train_run(out, 2, resume=True, recipe={"variant": "caffe"})
    model, optimizer, result = train_run(out, 2, lr=0.5, momentum=0.0, resume=True, accept_changed_recipe=True,
                                         recipe={"variant": "paper"})
    assert "using the changed recipe (accepted): lr 0.05 -> 0.5; momentum 0.9 -> 0.0" in capsys.readouterr().out
    assert result["history"][1]["lr"] == 0.5 and optimizer.momentum == 0.0
    saved = checkpoint.load(out / "checkpoint.npz")
    assert saved["optimizer"]["momentum"] == 0.0 and saved["recipe"]["lr"] == 0.5
    train_run(out, 3, lr=0.5, momentum=0.0, resume=True, recipe={"variant": "paper"})  # now the recipe

    train_run(tmp_path / "partial", 2, max_steps=3)
    with pytest.raises(RecipeChangedError, match="a new batch size can only start at an epoch's beginning"):
        train_run(tmp_path / "partial", 2, batch_size=4, resume=True, accept_changed_recipe=True)


def test_6_the_recipe_holds_the_settings_a_resume_must_share(tmp_path):
    train_run(tmp_path, 1, recipe={"variant": "paper", "classes": ("a", "b", "c")})
    recipe = checkpoint.load(tmp_path / "checkpoint.npz")["recipe"]
    expected = {"optimizer": "SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005,
                "scheduler": "ReduceLROnPlateau", "scheduler.factor": 0.1, "scheduler.patience": 1,
                "scheduler.max_reductions": 3, "batch_size": 8, "variant": "paper", "classes": ["a", "b", "c"]}
    assert {key: recipe.get(key) for key in expected} == expected
    assert not {"steps", "scheduler.bad_epochs", "scheduler.best", "scheduler.reductions"} & set(recipe)
    train_run(tmp_path, 2, resume=True, recipe={"variant": "paper", "classes": ["a", "b", "c"]})
    # A setting only one side knows: an optimiser's new option does not block a resume, a
    # caller's entry that is gone does.
    saved = checkpoint.load(tmp_path / "checkpoint.npz")
    del saved["recipe"]["l1"]
    checkpoint.save(tmp_path / "checkpoint.npz", **saved)
    train_run(tmp_path, 3, resume=True, recipe={"variant": "paper", "classes": ["a", "b", "c"]})
    with pytest.raises(RecipeChangedError, match=r"classes \['a', 'b', 'c'\] -> None"):
        train_run(tmp_path, 4, resume=True, recipe={"variant": "paper"})


# == 7. temporaries of killed saves and demo generations ============================================
def test_7_a_killed_demo_generation_leaves_nothing_behind_for_long(tmp_path, capsys):
    """kill -9 while the demo set is being written: the next generation deletes the
    temporary folder, naming it."""
    script = ("import os, signal, sys\n"
              "from minidl.data import demo\n"
              "made = []\n"
              "original = demo.demo_eurosat_image\n"
              "def dying(*a, **k):\n"
              "    made.append(1)\n"
              "    if len(made) == 3:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return original(*a, **k)\n"
              "demo.demo_eurosat_image = dying\n"
              f"demo.make_demo_eurosat({str(tmp_path / 'eu')!r}, per_class=2, verbose=False)\n")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".eu.partial-")]
    assert len(partial) == 1 and not (tmp_path / "eu").exists()
    make_demo_eurosat(tmp_path / "eu", per_class=2)
    assert f"deleted {partial[0]}, left by a demo generation that was killed" in capsys.readouterr().err
    assert not partial[0].exists() and len(EuroSAT(tmp_path / "eu")) == 20


# == 8. a planted symbolic link ===========================================================================
def test_8_planted_links_never_make_a_run_write_outside_its_folder(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    for name in ("metrics.jsonl.tmp", ".metrics.jsonl.tmp", ".checkpoint.npz.abcdefgh.tmp", "curves.png.tmp"):
        (out / name).symlink_to(victim)
    train_run(out, 2)
    assert victim.read_text() == "precious"
    assert not (out / ".checkpoint.npz.abcdefgh.tmp").exists()  # a stale-temporary name: the link went
    assert (out / "metrics.jsonl.tmp").is_symlink()  # not ours: left alone, never written through
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(victim)
    train_run(out, 3, resume=True)
    assert victim.read_text() == "precious"
    assert not (out / "metrics.jsonl").is_symlink() and len((out / "metrics.jsonl").read_text().splitlines()) == 3
    lock_out = tmp_path / "locked"
    lock_out.mkdir()
    (lock_out / runs.LOCK_NAME).symlink_to(victim)
    with pytest.raises(runs.RunFolderError, match="is a symbolic link"):
        train_run(lock_out, 1)
    assert victim.read_text() == "precious"


# == 9. demo folders: other people's files and concurrent runs ========================================
def test_9_regenerating_a_demo_never_deletes_files_it_did_not_write(tmp_path):
    root = make_demo_eurosat(tmp_path / "eu", per_class=2, classes=("Forest", "River"), verbose=False)
    (root / "River" / "my_notes.txt").write_text("precious")
    (root / "results.txt").write_text("precious too")
    with pytest.raises(FileExistsError, match=r"also 2 file\(s\) the generator did not write "
                                              r"\(River/my_notes.txt, results.txt\); nothing was deleted"):
        make_demo_eurosat(root, per_class=3, classes=("Forest", "River"), verbose=False)
    assert (root / "River" / "my_notes.txt").read_text() == "precious"
    assert (root / "results.txt").read_text() == "precious too"
    assert len(EuroSAT(root)) == 4
    (root / "River" / "my_notes.txt").unlink()
    (root / "results.txt").unlink()
    make_demo_eurosat(root, per_class=3, classes=("Forest", "River"), verbose=False)
    assert len(EuroSAT(root)) == 6


def test_9_a_demo_in_use_by_another_process_is_not_regenerated_under_it(tmp_path):
    script = ("import sys, time\n"
              "from minidl.data import make_demo_eurosat\n"
              f"make_demo_eurosat({str(tmp_path / 'eu')!r}, per_class=2, classes=('Forest',), verbose=False)\n"
              "print('using it', flush=True)\n"
              "sys.stdin.readline()\n")
    user = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})
    try:
        assert user.stdout.readline().strip() == "using it"
        before = digest(tmp_path / "eu" / "Forest")
        with pytest.raises(demo.DemoFolderBusy, match="is in use by another process"):
            make_demo_eurosat(tmp_path / "eu", per_class=3, classes=("Forest",), verbose=False)
        assert digest(tmp_path / "eu" / "Forest") == before
        make_demo_eurosat(tmp_path / "eu", per_class=2, classes=("Forest",), verbose=False)  # sharing is fine
    finally:
        user.communicate("done\n", timeout=60)
    make_demo_eurosat(tmp_path / "eu", per_class=3, classes=("Forest",), verbose=False)
    assert len(EuroSAT(tmp_path / "eu")) == 3


# == 10. crashes on bad images ===========================================================================
def write_jpeg(path, seed=0, size=(300, 260)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_10_a_bad_first_image_of_a_class_is_passed_over_for_the_pictures(tmp_path, load_example):
    alexnet = load_example("alexnet_imagenet")
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a_text.jpg").write_text("not an image")
    write_jpeg(tmp_path / "cat" / "b_good.jpg")
    write_jpeg(tmp_path / "dog" / "a_good.jpg", seed=1)
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.warns(SkippedFileWarning):
        val = ImageFolder(tmp_path, transform=T.alexnet_eval_transform())
        pictures = list(alexnet.picture_images(val))
    assert [label for _, label, _ in pictures] == [0, 1]  # the cat from its second file; no only_bad
    assert all(x.shape == (3, 227, 227) for x, _, _ in pictures)


def test_10_a_thin_strip_is_skipped_by_name_before_any_memory_is_taken(tmp_path):
    write_jpeg(tmp_path / "c" / "normal.jpg")
    Image.fromarray(np.zeros((1, 20000), np.uint8)).save(tmp_path / "c" / "strip.png")
    dataset = ImageFolder(tmp_path, transform=T.alexnet_train_transform())
    with pytest.warns(SkippedFileWarning, match=r"strip.png: 20000x1 pixels would become 5120000x256"):
        (images, labels), = list(DataLoader(dataset, 2, num_workers=0))
    assert images.shape == (1, 3, 227, 227)
    assert "2 files in 1 classes, 1 used, 1 skipped (1 too large)" in dataset.summary()


class Unreadable:
    """An in-memory dataset in which some samples cannot be read, as undecodable files."""

    def __init__(self, dataset, bad):
        self.dataset, self.bad = dataset, set(bad)

    def __len__(self):
        return len(self.dataset)

    def get(self, index, rng):
        if index in self.bad:
            raise SkippedSample(f"sample {index}")
        return self.dataset.get(index, rng)


def test_10_a_stop_after_a_batch_of_unreadable_files_resumes_at_the_right_batch(tmp_path):
    """With batch size 1 an unreadable file is a whole batch the loader yields nothing for:
    the position a stop records must count it, or the resumed run trains a sample twice."""
    def run(out, **options):
        minidl.manual_seed(0)
        model = layers.Sequential(layers.Flatten(), layers.Linear(8, 3))
        optimizer = SGD(model.parameters(), lr=0.05)
        x, y = blobs(12, 0)
        loader = DataLoader(Unreadable(ArrayDataset(x, y), bad=range(0, 12, 4)), 1, shuffle=True, seed=0,
                            num_workers=0)
        fit(model, ops.softmax_cross_entropy, optimizer, loader, 2, out_dir=out, progress=False,
            metrics=(top1,), **options)
        return weights(model)

    uninterrupted = run(tmp_path / "full")
    run(tmp_path / "split", max_steps=13)
    # 9 readable samples per epoch: 4 steps into epoch 2, and more batches than that used up.
    assert checkpoint.load(tmp_path / "split" / "checkpoint.npz")["run"]["partial"]["batches"] > 13 - 9
    assert_bitwise_equal(run(tmp_path / "split", resume=True), uninterrupted)


# == 11. wrong input accepted silently ====================================================================
def test_11_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    gradient = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    write_jpeg(tmp_path / "c" / "other.jpg")
    Image.fromarray(gradient).save(tmp_path / "c" / "deep.png")
    dataset = ImageFolder(tmp_path)
    image, _ = dataset[[p.endswith("deep.png") for p, _ in dataset.samples].index(True)]
    row = image[0, 0]
    assert len(np.unique(row)) > 200 and row.min() == 0.0 and row.max() == 1.0
    np.testing.assert_allclose(row, np.round(gradient[0] / 257) / 255, atol=1e-6)


def test_11_eurosat_types_are_checked_against_uint16_or_an_explicit_scale(tmp_path):
    for dtype in (np.uint8, np.float32):
        root = tmp_path / np.dtype(dtype).name
        write_tifs(root, dtype=dtype, per_class=1)
        with pytest.warns(SkippedFileWarning, match=rf"has dtype {np.dtype(dtype).name}; EuroSAT MS "
                                                     "files are uint16"):
            with pytest.raises(SkippedSample):
                EuroSAT(root)[0]
    explicit = EuroSAT(tmp_path / "uint8", scale=1 / 255)[0][0]
    raw = tifffile.imread(tmp_path / "uint8" / "Forest" / "Forest_1.tif")
    np.testing.assert_allclose(explicit, raw.transpose(2, 0, 1) / 255, rtol=1e-6)
    reflectance = EuroSAT(tmp_path / "float32", scale=1.0)[0][0]
    assert reflectance.max() > 400  # as stored: not multiplied by 1e-4


def test_11_labels_out_of_range_or_fractional_are_refused_on_every_path():
    loss = with_one_hot(ops.binary_cross_entropy_with_logits)
    logits = minidl.Tensor(np.zeros((2, 3), np.float32))
    for labels in ([0, 5], [0, -1]):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\] for 3 classes"):
            loss(logits, np.array(labels))
    with pytest.raises(ValueError, match=r"top-1 error: labels must lie in \[0, 2\]"):
        top1(np.zeros((2, 3)), np.array([0, 9]))
    with pytest.raises(ValueError, match=r"ArrayDataset: labels must be whole class indices; got 0.7"):
        ArrayDataset(np.zeros((2, 1, 1, 1)), [0.7, 1.0])
    assert ArrayDataset(np.zeros((2, 1, 1, 1)), [2.0, 1.0]).targets.tolist() == [2, 1]
    with pytest.raises(ValueError, match=r"ArrayDataset: labels must be >= 0"):
        ArrayDataset(np.zeros((2, 1, 1, 1)), [0, -1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\] for 2 classes, got 2"):
        ArrayDataset(np.zeros((2, 1, 1, 1)), [0, 2], num_classes=2)


# == 12. unclear messages ======================================================================================
def test_12_a_tiff_of_another_size_is_skipped_naming_the_file_and_the_sizes(tmp_path):
    write_tifs(tmp_path / "data", per_class=3)
    write_tifs(tmp_path / "big", per_class=1, classes=("Forest",), size=128)
    os.replace(tmp_path / "big" / "Forest" / "Forest_1.tif", tmp_path / "data" / "Forest" / "Forest_9.tif")
    with pytest.warns(SkippedFileWarning, match=r"Forest_9.tif: 128x128 pixels, expected 64x64"):
        train_set, test_set, _ = eurosat_splits(tmp_path / "data", num_workers=0)
    assert len(train_set) + len(test_set) == 6
    with pytest.raises(ValueError, match=r"one shape, got \(3, 4\) x 2, \(3, 5\) x 1"):
        collate([(np.zeros((3, 4)), 0), (np.zeros((3, 4)), 0), (np.zeros((3, 5)), 1)])
    odd = [(np.zeros((1, 2, 2)), 0), (np.zeros((1, 2, 2)), 1), (np.zeros((1, 3, 3)), 2)]
    with pytest.raises(ValueError, match=r"the odd one\(s\) out: sample 2 \(1, 3, 3\)"):
        list(DataLoader(odd, 3, num_workers=0))


def test_12_a_full_disk_names_the_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "out"
    train_run(out, 1)
    before = (out / "checkpoint.npz").read_bytes()

    def disk_full(file, members):
        file.write(b"PK\x03\x04 a little")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint, "_write_npz", disk_full)
    with pytest.raises(checkpoint.SaveError) as failed:
        train_run(out, 2, resume=True)
    name = os.path.basename(failed.value.path)  # best.npz if epoch 2 improved, else checkpoint.npz
    assert str(failed.value) == (f"could not write {out / name}: No space left on device; the "
                                 f"previous {name} is intact")
    assert failed.value.errno == errno.ENOSPC
    assert (out / "checkpoint.npz").read_bytes() == before and stale_temporaries(out) == []
    assert not (out / runs.LOCK_NAME).exists()


def test_12_the_example_says_disk_full_in_one_line(tmp_path, monkeypatch, capsys, load_example):
    euronet = load_example("euronet_eurosat")

    def disk_full(file, members):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint, "_write_npz", disk_full)
    with pytest.raises(SystemExit, match=r"^euronet_eurosat.py: error: could not write .*(best|checkpoint)"
                                         r".npz: No space left on device; there was no earlier version$"):
        euronet.main(EURONET_TINY + ["--demo-dir", str(tmp_path / "demo"), "--out", str(tmp_path / "out"),
                                     "--epochs", "1"])


def test_12_skipped_files_are_counted_and_an_emptied_class_is_named(tmp_path):
    write_jpeg(tmp_path / "cat" / "good.jpg")
    (tmp_path / "cat" / "bad.jpg").write_text("text")
    (tmp_path / "badonly").mkdir()
    (tmp_path / "badonly" / "x.jpg").write_text("text")
    with pytest.warns(SkippedFileWarning):
        dataset = ImageFolder(tmp_path, check_files=True)
    assert dataset.summary() == (f"ImageFolder {tmp_path}: 3 files in 2 classes, 1 used, 2 skipped "
                                 "(2 cannot decode); classes left with no usable file: badonly")


def test_12_an_unusable_out_is_one_line_and_debug_shows_the_traceback(tmp_path, load_example):
    euronet = load_example("euronet_eurosat")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit, match=r"^euronet_eurosat.py: error: output folder .*file exists and is not "
                                         r"a folder$"):
        euronet.main(["--out", str(tmp_path / "file")])
    with pytest.raises(NotADirectoryError):
        euronet.main(["--out", str(tmp_path / "file"), "--debug"])


# == 13. thread settings ==================================================================================
def test_13_versions_and_thread_settings_are_recorded_and_a_change_is_a_warning(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    train_run(out, 1)
    recorded = checkpoint.load(out / "checkpoint.npz")["environment"]
    assert recorded["threads"]["OPENBLAS_NUM_THREADS"] == "2"
    assert {"python", "numpy", "numba", "minidl"} <= set(recorded)
    assert isinstance(recorded["threads"]["minidl.cpu.num_threads()"], int)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    with pytest.warns(ResumeWarning, match=r"OPENBLAS_NUM_THREADS 2 -> 1.*float rounding"):
        train_run(out, 2, resume=True)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)
        train_run(out, 3, resume=True)  # the same settings as the checkpoint's now: no warning


# == found in review: the examples' options and pictures ===============================================
def test_zero_batch_size_or_patience_is_refused_not_replaced_by_the_default(tmp_path, load_example):
    alexnet = load_example("alexnet_imagenet")
    for option, text in (("--batch-size", "--batch-size must be at least 1, got 0"),
                         ("--lr-patience", "--lr-patience must be at least 1, got 0")):
        with pytest.raises(SystemExit, match=text):
            alexnet.main([option, "0", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--seed must be at least 0, got -1"):
        alexnet.main(["--seed", "-1", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--lr must be a finite number >= 0, got nan"):
        alexnet.main(["--lr", "nan", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_grad_cam_predicts_in_eval_mode(tmp_path, load_example):
    common = load_example("common")
    from minidl.models import euronet
    minidl.manual_seed(0)
    model = euronet(in_channels=3, num_classes=2)
    modes, predict = [], model.predict
    model.predict = lambda x: (modes.append(model.training), predict(x))[1]
    model.train()
    image = np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32)
    shown = Image.new("RGB", (64, 64))
    written = common.save_pictures(model, iter([(image, 0, shown)]), ["a", "b"], tmp_path, 1)
    assert modes == [False] and model.training
    assert any(p.name.startswith("grad_cam_1_a_as_") for p in written)


# -- examples ----------------------------------------------------------------------------------------
EURONET_TINY = ["--demo-per-class", "3", "--batch-size", "8", "--grad-cam-images", "1", "--workers", "0"]


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    _child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], "--resume" in sys.argv)
