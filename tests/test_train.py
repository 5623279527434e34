"""The training loop: metrics, checkpoints (round trip, atomic write, corrupt files), exact
resume, the metrics log, the curves, early stopping, evaluation with ten crops.

The models here are built from ``Module``/``Parameter`` and arithmetic, with a ReLU and a
dropout defined in this file, so the loop is tested apart from the ops; one test at the end
runs the real layers.
"""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

import minidl
from minidl import backend, checkpoint, random
from minidl.layers import Module, Parameter
from minidl.metrics import (binary_error, one_hot, sigmoid_scores, softmax_scores, top1, top5, topk_error,
                            with_one_hot)
from minidl.optim import SGD, ReduceLROnPlateau, StepLR
from minidl.tensor import Function
from minidl.train import evaluate, fit


# -- a small model that needs nothing but arithmetic -----------------------------------------
class ReluFn(Function):
    def forward(self, x):
        self.save_for_backward(x > 0)
        return x * (x > 0)

    def backward(self, g):
        (mask,) = self.saved
        return g * mask


class DropoutFn(Function):
    """Inverted dropout drawing its mask from minidl's generator, as ops.dropout does."""

    def forward(self, x, p):
        xp = backend.array_module(x)
        keep = xp.asarray(random.default_generator().random(x.shape) >= p)
        self.scale = keep.astype(x.dtype) / (1 - p)
        return x * self.scale

    def backward(self, g):
        return g * self.scale, None


class MLP(Module):
    def __init__(self, n_in=8, hidden=16, n_out=3, p=0.5, dtype=np.float64, spy=None):
        super().__init__()
        rng = random.default_generator()
        self.w1 = Parameter(rng.normal(0, 0.5, (n_in, hidden)).astype(dtype))
        self.b1 = Parameter(np.zeros(hidden, dtype))
        self.w2 = Parameter(rng.normal(0, 0.5, (hidden, n_out)).astype(dtype))
        self.b2 = Parameter(np.zeros(n_out, dtype))
        self.p = p
        self.spy = spy

    def forward(self, x):
        if self.spy is not None:
            self.spy.append(self.training)
        x = x.reshape(x.shape[0], -1)
        h = ReluFn.apply(x @ self.w1 + self.b1)
        if self.training and self.p > 0:
            h = DropoutFn.apply(h, self.p)
        return h @ self.w2 + self.b2


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy from arithmetic ops (labels: class indices)."""
    xp = backend.array_module(logits.data)
    n, c = logits.shape
    z = logits - minidl.Tensor(logits.data.max(axis=1, keepdims=True))
    log_sum = z.exp().sum(axis=1, keepdims=True).log()
    onehot = (xp.arange(c)[None, :] == labels[:, None]).astype(logits.dtype)
    return -((z - log_sum) * minidl.Tensor(onehot)).sum() * (1.0 / n)


class ArrayLoader:
    """Shuffles with a generator seeded by (seed, epoch): the order depends on set_epoch only."""

    def __init__(self, x, y, batch_size, seed=0, shuffle=True):
        self.x, self.y, self.batch_size, self.seed, self.shuffle = x, y, batch_size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        order = np.arange(len(self.y))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.y))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            yield self.x[batch], self.y[batch]


class StreamLoader:
    """Shuffles with one generator that runs on from epoch to epoch (no set_epoch): exact
    resume needs fit to find and restore ``self.rng``."""

    def __init__(self, x, y, batch_size, seed=0):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(len(self.y))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            # Augmentation noise from the same stream.
            yield self.x[batch] + self.rng.normal(0, 0.05, self.x[batch].shape), self.y[batch]


def blobs(n=60, d=8, classes=3, seed=0):
    """Gaussian clusters around fixed centres; ``seed`` draws the samples (train vs val)."""
    centres = np.random.default_rng(100).normal(0, 1.0, (classes, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(0, 1.0, (n, d))
    return x, y


def make_run(seed=0, lr=0.05, loader_cls=ArrayLoader, scheduler="plateau", p=0.5):
    """A fresh model, optimiser, schedule and loaders: everything a new process would build."""
    minidl.manual_seed(seed)
    x, y = blobs()
    vx, vy = blobs(n=30, seed=1)
    model = MLP(p=p)
    opt = SGD(model.parameters(), lr=lr)
    sched = {"plateau": lambda: ReduceLROnPlateau(opt, patience=1),
             "step": lambda: StepLR(opt, step_size=2), None: lambda: None}[scheduler]()
    train = loader_cls(x, y, batch_size=8)
    val = ArrayLoader(vx, vy, batch_size=16, shuffle=False)
    return model, opt, sched, train, val


def params_of(model):
    return {name: p.data.copy() for name, p in model.named_parameters()}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype
        assert np.array_equal(a[name], b[name]), f"{name} differs"


TIMING_KEYS = {"seconds", "images_per_s", "val_seconds"}


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


# -- metrics -----------------------------------------------------------------------------------
def test_topk_error_on_hand_made_logits():
    logits = np.array([
        [5.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0],   # label 0: top-1 right
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0],   # label 4: rank 4 -> top-1 wrong, top-5 right
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0],   # label 5: rank 5 -> both wrong
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],    # label 1 tied with class 0: argmax says 0 -> top-1 wrong
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],    # label 0 wins the tie
        [np.nan, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0], # NaN in a row: wrong whatever the label
    ])
    labels = np.array([0, 4, 5, 1, 0, 6])
    assert top1(logits, labels) == pytest.approx(4 / 6)   # rows 1, 2, 3, 5
    assert top5(logits, labels) == pytest.approx(2 / 6)   # rows 2, 5
    assert topk_error(logits, labels, 7) == pytest.approx(1 / 6)
    # argmax agreement on random data, and labels given one-hot.
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 10))
    labels = rng.integers(0, 10, 50)
    assert top1(scores, labels) == pytest.approx(np.mean(scores.argmax(1) != labels))
    assert top5(scores, np.eye(10)[labels]) == pytest.approx(
        np.mean([lab not in np.argsort(-s)[:5] for s, lab in zip(scores, labels)]))
    # Fewer classes than k: never wrong.
    assert top5(rng.normal(size=(4, 3)), np.array([0, 1, 2, 0])) == 0.0


def test_binary_error_counts_wrong_yes_no_outputs():
    scores = np.array([[0.9, 0.1, 0.2], [0.6, 0.7, 0.1]])
    # Row 0, label 0: all three right. Row 1, label 1: class 0 wrongly yes.
    assert binary_error(scores, np.array([0, 1])) == pytest.approx(1 / 6)
    assert binary_error(scores, np.array([[1, 0, 0], [0, 1, 0]])) == pytest.approx(1 / 6)
    assert sigmoid_scores(np.array([0.0]))[0] == 0.5
    np.testing.assert_allclose(softmax_scores(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]])


# -- checkpoint files ---------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    rng.random()
    state = {
        "model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.5])},
        "ints": np.array([1, 2, 3], dtype=np.int64), "flag": True, "nothing": None,
        "nested": [1, 2.5, "text", (3, 4), {"k": [np.zeros(0)]}],
        "int_keys": {0: "zero", 1: "one"},
        "rng": rng.bit_generator.state, "numpy_global": np.random.get_state(),
    }
    path = checkpoint.save(tmp_path / "c.npz", **state)
    assert path == str(tmp_path / "c.npz") and os.listdir(tmp_path) == ["c.npz"]
    back = checkpoint.load(path)
    assert back.keys() == state.keys()
    assert back["model"]["w"].dtype == np.float32 and np.array_equal(back["model"]["w"], state["model"]["w"])
    assert back["ints"].dtype == np.int64
    assert back["flag"] is True and back["nothing"] is None
    assert back["nested"][:4] == [1, 2.5, "text", (3, 4)] and back["nested"][4]["k"][0].shape == (0,)
    assert back["int_keys"] == {0: "zero", 1: "one"}
    restored = np.random.default_rng()
    restored.bit_generator.state = back["rng"]
    assert restored.random() == rng.random()
    np.random.set_state(back["numpy_global"])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    checkpoint.save(path, value=np.array([1.0, 2.0]), epoch=1)

    def crash_half_way(file, members):
        file.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt("simulated crash during save")

    monkeypatch.setattr(checkpoint, "_write_npz", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, value=np.array([3.0, 4.0]), epoch=2)
    assert os.listdir(tmp_path) == ["c.npz"]  # the temporary file was removed
    old = checkpoint.load(path)
    assert old["epoch"] == 1 and old["value"].tolist() == [1.0, 2.0]


def test_checkpoint_missing_and_corrupt_files_are_named(tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(FileNotFoundError, match="nowhere.npz.*does not exist"):
        checkpoint.load(missing)
    good = tmp_path / "good.npz"
    checkpoint.save(good, w=np.ones(1000))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated.npz.*corrupt"):
        checkpoint.load(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00not a zip at all" * 10)
    with pytest.raises(checkpoint.CheckpointError, match="garbage.npz"):
        checkpoint.load(garbage)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.ones(2))
    with pytest.raises(checkpoint.CheckpointError, match="foreign.npz.*not a minidl checkpoint"):
        checkpoint.load(foreign)
    with pytest.raises(TypeError, match="checkpoint.save: cannot store a object"):
        checkpoint.save(tmp_path / "bad.npz", thing=object())


# -- fit: exact resume --------------------------------------------------------------------------
def test_resume_after_two_epochs_equals_an_uninterrupted_run(tmp_path):
    model, opt, sched, train, val = make_run()
    full = fit(model, cross_entropy, opt, train, 4, val_loader=val, scheduler=sched,
               out_dir=tmp_path / "full", progress=False)
    uninterrupted = params_of(model)
    assert opt.lr < 0.05  # the plateau schedule acted, so its state matters too

    model, opt, sched, train, val = make_run()
    fit(model, cross_entropy, opt, train, 2, val_loader=val, scheduler=sched,
        out_dir=tmp_path / "split", progress=False)
    after_two = params_of(model)
    # "A new process": fresh objects, other initial weights, the global generators moved on.
    model, opt, sched, train, val = make_run(seed=99)
    np.random.seed(1234)
    resumed = fit(model, cross_entropy, opt, train, 4, val_loader=val, scheduler=sched,
                  out_dir=tmp_path / "split", resume=True, progress=False)
    assert_bitwise_equal(params_of(model), uninterrupted)
    assert without_timing(resumed["history"]) == without_timing(full["history"])
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    assert not np.array_equal(after_two["w1"], uninterrupted["w1"])


def test_resume_without_the_rng_states_would_differ(tmp_path, monkeypatch):
    """The control for the test above: dropout and shuffling make the saved RNG state matter."""
    model, opt, sched, train, val = make_run()
    fit(model, cross_entropy, opt, train, 3, val_loader=val, scheduler=sched, progress=False)
    uninterrupted = params_of(model)
    model, opt, sched, train, val = make_run()
    fit(model, cross_entropy, opt, train, 2, val_loader=val, scheduler=sched,
        out_dir=tmp_path, progress=False)
    monkeypatch.setattr(random, "restore_state", lambda state, generators: None)
    model, opt, sched, train, val = make_run(seed=99)
    fit(model, cross_entropy, opt, train, 3, val_loader=val, scheduler=sched,
        out_dir=tmp_path, resume=True, progress=False)
    assert not np.array_equal(params_of(model)["w1"], uninterrupted["w1"])


def test_resume_is_exact_with_a_loader_whose_generator_runs_on(tmp_path):
    model, opt, sched, train, val = make_run(loader_cls=StreamLoader, scheduler="step")
    fit(model, cross_entropy, opt, train, 3, val_loader=val, scheduler=sched,
        out_dir=tmp_path / "full", progress=False)
    uninterrupted = params_of(model)

    model, opt, sched, train, val = make_run(loader_cls=StreamLoader, scheduler="step")
    fit(model, cross_entropy, opt, train, 1, val_loader=val, scheduler=sched,
        out_dir=tmp_path / "split", progress=False)
    model, opt, sched, train, val = make_run(seed=7, loader_cls=StreamLoader, scheduler="step")
    fit(model, cross_entropy, opt, train, 3, val_loader=val, scheduler=sched,
        out_dir=tmp_path / "split", resume=True, progress=False)
    assert_bitwise_equal(params_of(model), uninterrupted)


def test_max_steps_stops_inside_an_epoch_and_resume_finishes_it(tmp_path):
    model, opt, sched, train, val = make_run()
    full = fit(model, cross_entropy, opt, train, 3, val_loader=val, scheduler=sched,
               out_dir=tmp_path / "full", progress=False)
    uninterrupted = params_of(model)
    assert full["step"] == 3 * len(train) == 24

    model, opt, sched, train, val = make_run()
    stopped = fit(model, cross_entropy, opt, train, 3, val_loader=val, scheduler=sched,
                  out_dir=tmp_path / "split", max_steps=11, progress=False)
    assert stopped["step"] == 11 and len(stopped["history"]) == 1
    lines = [json.loads(s) for s in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"], r.get("complete", True)) for r in lines] == [(1, 8, True), (2, 11, False)]
    model, opt, sched, train, val = make_run(seed=3)
    resumed = fit(model, cross_entropy, opt, train, 3, val_loader=val, scheduler=sched,
                  out_dir=tmp_path / "split", resume=True, progress=False)
    assert_bitwise_equal(params_of(model), uninterrupted)
    assert without_timing(resumed["history"]) == without_timing(full["history"])
    lines = [json.loads(s) for s in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]  # the partial line was replaced


class StartableLoader(ArrayLoader):
    """An ArrayLoader whose epoch can start at a given batch (as minidl.data.DataLoader's can);
    counts the batches it makes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start, self.made = 0, 0

    def set_epoch(self, epoch, batch=0):
        self.epoch, self.start = epoch, batch

    def __iter__(self):
        start, self.start = self.start, 0
        for index, batch in enumerate(super().__iter__()):
            if index >= start:
                self.made += 1
                yield batch


def test_mid_epoch_resume_starts_a_startable_loader_at_the_right_batch(tmp_path):
    model, opt, sched, train, val = make_run(loader_cls=StartableLoader)
    fit(model, cross_entropy, opt, train, 2, val_loader=val, scheduler=sched, progress=False)
    uninterrupted = params_of(model)

    model, opt, sched, train, val = make_run(loader_cls=StartableLoader)
    fit(model, cross_entropy, opt, train, 2, val_loader=val, scheduler=sched, out_dir=tmp_path,
        max_steps=13, progress=False)
    model, opt, sched, train, val = make_run(seed=4, loader_cls=StartableLoader)
    fit(model, cross_entropy, opt, train, 2, val_loader=val, scheduler=sched, out_dir=tmp_path,
        resume=True, progress=False)
    assert train.made == 3  # batches 6, 7, 8 of epoch 2 only: nothing re-made to be skipped
    assert_bitwise_equal(params_of(model), uninterrupted)


def test_resume_errors(tmp_path):
    model, opt, sched, train, val = make_run()
    with pytest.raises(ValueError, match="fit: resume=True needs out_dir"):
        fit(model, cross_entropy, opt, train, 1, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="fit: resume=.*nothing.npz"):
        fit(model, cross_entropy, opt, train, 1, resume=str(tmp_path / "nothing.npz"), progress=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.npz").write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint.npz"):
        fit(model, cross_entropy, opt, train, 1, out_dir=tmp_path / "broken", resume=True, progress=False)


# -- fit: the log, the curves, best.npz, early stopping ----------------------------------------
def test_metrics_log_curves_and_checkpoint_contents(tmp_path):
    model, opt, sched, train, val = make_run(scheduler="step")
    spy = []
    model.spy = spy
    result = fit(model, cross_entropy, opt, train, 3, val_loader=val, scheduler=sched,
                 out_dir=tmp_path, progress=False)
    records = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    keys = {"epoch", "step", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1",
            "val_top5", "lr", "images_per_s", "seconds", "val_seconds"}
    for i, r in enumerate(records):
        assert set(r) == keys
        assert r["epoch"] == i + 1 and r["step"] == 8 * (i + 1)
        assert 0 <= r["train_top1"] <= 1 and 0 <= r["val_top1"] <= 1 and r["val_top5"] == 0.0  # 3 classes
        assert r["images_per_s"] > 0 and r["seconds"] > 0
    assert [r["lr"] for r in records] == pytest.approx([0.05, 0.05, 0.005])  # StepLR(step_size=2)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert result["history"] == records

    # The last record's validation numbers are those of evaluate() on the final model.
    final = evaluate(model, val, cross_entropy)
    assert final["loss"] == pytest.approx(records[-1]["val_loss"], rel=1e-12)
    assert final["top1"] == records[-1]["val_top1"]
    # Train mode while training (8 batches x 3 epochs), eval mode while validating (2 x 3 + 2).
    assert spy.count(True) == 24 and spy.count(False) == 8
    assert spy[:8] == [True] * 8 and spy[8:10] == [False, False]

    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.size == (960, 400)
        image.verify()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    saved = checkpoint.load(tmp_path / "checkpoint.npz")
    assert saved["run"]["epoch"] == 3 and saved["run"]["step"] == 24
    assert set(saved["rng"]) == {"minidl", "numpy_global", "python", "generators"}
    assert saved["loader"]["seed"] == 0 and saved["loader"]["epoch"] == 2
    assert_bitwise_equal(saved["model"], params_of(model))
    assert saved["scheduler"]["epoch"] == 3
    best = checkpoint.load(tmp_path / "best.npz")
    assert best["epoch"] == result["best_epoch"] and best["monitor"] == "val_top1"
    assert best["value"] == min(r["val_top1"] for r in records[: best["epoch"]])
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "checkpoint.npz", "curves.png", "metrics.jsonl"]


def test_early_stopping_triggers_and_keeps_the_best_epoch(tmp_path):
    model, opt, _, train, val = make_run(lr=0.0, scheduler=None)  # lr 0: nothing ever improves
    result = fit(model, cross_entropy, opt, train, 20, val_loader=val, out_dir=tmp_path,
                 early_stopping_patience=2, progress=False)
    assert result["stopped_early"] and len(result["history"]) == 3
    assert result["best_epoch"] == 1
    assert checkpoint.load(tmp_path / "best.npz")["epoch"] == 1

    model, opt, _, train, val = make_run(lr=0.05, scheduler=None, p=0.0)
    result = fit(model, cross_entropy, opt, train, 4, val_loader=val,
                 early_stopping_patience=3, progress=False)
    assert not result["stopped_early"] and len(result["history"]) == 4


def test_fit_without_validation_monitors_training_loss(capsys):
    model, opt, _, train, _ = make_run(scheduler=None)
    result = fit(model, cross_entropy, opt, train, 2, progress=True)
    assert result["monitor"] == "train_loss" and "val_loss" not in result["history"][0]
    printed = capsys.readouterr().out
    assert "epoch 1/2" in printed and "train loss" in printed and "img/s" in printed


def test_sigmoid_model_with_a_metrics_hook():
    model, opt, _, train, val = make_run(scheduler=None)

    def sigmoid_bce(logits, labels):  # one-vs-all cross-entropy, from arithmetic
        target = (np.arange(logits.shape[1])[None, :] == labels[:, None]).astype(logits.dtype)
        p = (1.0 + (-logits).exp()) ** -1
        t = minidl.Tensor(target)
        return -(t * p.log() + (1.0 - t) * (1.0 - p).log()).mean()

    result = fit(model, sigmoid_bce, opt, train, 4, val_loader=val, predict=sigmoid_scores,
                 metrics=(binary_error, top1), progress=False)
    first, last = result["history"][0], result["history"][-1]
    assert result["monitor"] == "val_binary"
    assert {"train_binary", "val_binary", "train_top1", "val_top1"} <= set(last)
    assert last["train_loss"] < first["train_loss"]
    assert last["val_binary"] < first["val_binary"]
    # The hook's numbers are binary_error of sigmoid_scores(outputs) on the final model.
    model.eval()
    with minidl.no_grad():
        scores = sigmoid_scores(model(minidl.Tensor(val.x)).data)
    assert last["val_binary"] == pytest.approx(binary_error(scores, val.y), rel=1e-12)


def test_sigmoid_training_with_the_real_bce_loss():
    if not _real_ops_ready():
        pytest.skip("ops still being written (scaffold)")
    from minidl import ops
    assert one_hot(np.array([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    model, opt, _, train, val = make_run(scheduler=None)
    result = fit(model, with_one_hot(ops.binary_cross_entropy_with_logits), opt, train, 3,
                 val_loader=val, predict=sigmoid_scores, metrics=(binary_error, top1), progress=False)
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]


# -- evaluate -----------------------------------------------------------------------------------
def test_evaluate_ten_crop_averages_softmax_over_crops():
    rng = np.random.default_rng(2)
    model = MLP(n_in=8)
    images = rng.normal(size=(6, 10, 2, 2, 2))
    labels = np.array([0, 1, 2, 0, 1, 2])
    result = evaluate(model, [(images, labels)], cross_entropy, ten_crop=True)
    assert model.training  # mode restored

    model.eval()
    with minidl.no_grad():
        logits = model(minidl.Tensor(images.reshape(60, 8))).data
    probs = softmax_scores(logits).reshape(6, 10, 3).mean(axis=1)
    assert result["top1"] == pytest.approx(np.mean(probs.argmax(1) != labels))
    expected_loss = -np.mean(np.log(softmax_scores(logits))[np.arange(60), np.repeat(labels, 10)])
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-12)
    assert result["images"] == 6
    # Averaging probabilities is not averaging logits: on this data at least one image differs.
    assert not np.allclose(probs, softmax_scores(logits.reshape(6, 10, 3).mean(axis=1)))

    with pytest.raises(ValueError, match=r"evaluate: ten_crop=True expects image batches of shape \(N, 10"):
        evaluate(model, [(images[:, 0], labels)], cross_entropy, ten_crop=True)


def test_evaluate_is_deterministic_with_dropout_and_needs_batches():
    model, _, _, _, val = make_run()
    a, b = evaluate(model, val, cross_entropy), evaluate(model, val, cross_entropy)
    assert (a["loss"], a["top1"]) == (b["loss"], b["top1"])
    with pytest.raises(ValueError, match="evaluate: the loader yielded no batches"):
        evaluate(model, [], cross_entropy)


def test_fit_bad_arguments():
    model, opt, _, train, _ = make_run(scheduler=None)
    with pytest.raises(TypeError, match="fit: train_loader .* must have a len"):
        fit(model, cross_entropy, opt, iter(train), 1, progress=False)
    with pytest.raises(ValueError, match="fit: max_steps must be a positive integer"):
        fit(model, cross_entropy, opt, train, 1, max_steps=0, progress=False)
    with pytest.raises(TypeError, match="fit: each batch must be a pair"):
        fit(model, cross_entropy, opt, [np.zeros((2, 8))], 1, progress=False)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        fit(model, cross_entropy, opt, train, 1, device="tpu", progress=False)


# -- with the real layers and loss ----------------------------------------------------------------
def _real_ops_ready():
    from minidl import ops
    try:
        x = minidl.Tensor(np.ones((2, 3), np.float32))
        ops.relu(x)
        ops.dropout(x, 0.5, training=True)
        ops.linear(x, minidl.Tensor(np.ones((2, 3), np.float32)), None)
        ops.softmax_cross_entropy(x, np.array([0, 1]))
    except NotImplementedError:
        return False
    return True


def test_fit_with_the_real_layers_and_loss(tmp_path):
    if not _real_ops_ready():
        pytest.skip("ops still being written (scaffold)")
    from minidl import layers, ops

    def build():
        minidl.manual_seed(0)
        return layers.Sequential(layers.Linear(8, 32), layers.ReLU(), layers.Dropout(0.5),
                                 layers.Linear(32, 3))

    x, y = blobs(n=120)
    vx, vy = blobs(n=60, seed=1)
    x, vx = x.astype(np.float32), vx.astype(np.float32)

    def run(epochs, out, resume=False):
        model = build()
        opt = SGD(model.parameters(), lr=0.05)
        sched = ReduceLROnPlateau(opt, patience=2)
        result = fit(model, ops.softmax_cross_entropy, opt, ArrayLoader(x, y, 16),
                     epochs, val_loader=ArrayLoader(vx, vy, 32, shuffle=False), scheduler=sched,
                     out_dir=out, resume=resume, progress=False)
        return model, result

    model, result = run(6, tmp_path / "full")
    history = result["history"]
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["val_top1"] < 0.2
    assert all(p.dtype == np.float32 for p in model.parameters())
    run(3, tmp_path / "split")
    resumed, _ = run(6, tmp_path / "split", resume=True)
    assert_bitwise_equal(params_of(resumed), params_of(model))


@pytest.mark.gpu
def test_a_run_checkpointed_on_the_gpu_resumes_on_the_cpu(tmp_path):
    if not backend.cuda_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    model, opt, sched, train, val = make_run()
    cpu = fit(model, cross_entropy, opt, train, 4, val_loader=val, scheduler=sched, progress=False)
    on_cpu = params_of(model)

    model, opt, sched, train, val = make_run()
    gpu = fit(model, cross_entropy, opt, train, 2, val_loader=val, scheduler=sched, device="cuda",
              out_dir=tmp_path, progress=False)
    assert model.device == "cuda" and backend.device_of(opt.velocities[0]) == "cuda"
    for c, g in zip(cpu["history"][:2], gpu["history"]):
        assert g["train_loss"] == pytest.approx(c["train_loss"], rel=1e-9)
        assert g["val_top1"] == c["val_top1"]
    model, opt, sched, train, val = make_run(seed=5)
    fit(model, cross_entropy, opt, train, 4, val_loader=val, scheduler=sched, device="cpu",
        out_dir=tmp_path, resume=True, progress=False)
    for name, value in params_of(model).items():
        assert isinstance(value, np.ndarray)
        np.testing.assert_allclose(value, on_cpu[name], rtol=1e-6, atol=1e-9)


def test_a_bad_label_that_makes_the_loss_nan_is_named_not_called_a_divergence():
    """On a GPU the losses do not read labels back, so an out-of-range class index gives a NaN
    loss there; fit then names the label instead of reporting a divergence. Here a loss that
    behaves so on the CPU stands in for the GPU's."""
    model, opt, _, _, _ = make_run()
    x, y = blobs(n=16)
    y[5] = 7  # 3 classes

    def loss_without_label_checks(logits, labels):
        loss = cross_entropy(logits, labels)
        return loss * float("nan") if (labels >= 3).any() else loss

    with pytest.raises(ValueError, match=r"fit: the batch holds label 7 \(at position 5; 1 bad in "
                                         r"all\), but the model has 3 outputs"):
        fit(model, loss_without_label_checks, opt, ArrayLoader(x, y, 8, shuffle=False), 1,
            metrics=(top1,), progress=False)
    y[5] = -100  # the losses' ignore_index passes, and the NaN is a divergence as before
    with pytest.raises(minidl.train.DivergenceError):
        fit(model, lambda logits, labels: cross_entropy(logits, labels) * float("nan"), opt,
            ArrayLoader(x, y, 8, shuffle=False), 1, metrics=(top1,), progress=False)


class CrashingLoader(ArrayLoader):
    """An ArrayLoader whose process dies (as by kill -9: nothing saved on the way out) when it
    reaches batch ``batch`` of epoch ``epoch``."""

    def __init__(self, *args, crash_at=(1, 5), **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_at = crash_at

    def __iter__(self):
        for index, batch in enumerate(super().__iter__()):
            if (self.epoch, index) == self.crash_at:
                raise SystemError("the machine went down")
            yield batch


def test_checkpoint_every_saves_inside_an_epoch_and_a_crash_loses_only_the_steps_since(tmp_path):
    """checkpoint_every=4: checkpoint.npz after steps 4 and 12 inside epochs, besides the
    epochs' ends; a crash at step 14 (epoch 2, batch 6) resumes from step 12 and ends bitwise
    where the uninterrupted run does, with no partial line left in metrics.jsonl."""
    model, opt, sched, train, val = make_run()
    full = fit(model, cross_entropy, opt, train, 3, val_loader=val, scheduler=sched, progress=False)
    uninterrupted = params_of(model)

    model, opt, sched, train, val = make_run()
    crashing = CrashingLoader(train.x, train.y, batch_size=8, crash_at=(1, 6))
    with pytest.raises(SystemError):
        fit(model, cross_entropy, opt, crashing, 3, val_loader=val, scheduler=sched,
            out_dir=tmp_path / "run", checkpoint_every=4, progress=False)
    saved = checkpoint.load(tmp_path / "run" / "checkpoint.npz")
    assert saved["run"]["step"] == 12 and saved["run"]["epoch"] == 1
    assert saved["run"]["partial"]["batches"] == 4
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]  # the periodic save logs nothing

    model, opt, sched, train, val = make_run(seed=5)
    resumed = fit(model, cross_entropy, opt, train, 3, val_loader=val, scheduler=sched,
                  out_dir=tmp_path / "run", resume=True, progress=False)
    assert_bitwise_equal(params_of(model), uninterrupted)
    assert without_timing(resumed["history"]) == without_timing(full["history"])
    with pytest.raises(ValueError, match="checkpoint_every must be a positive number of steps"):
        fit(model, cross_entropy, opt, train, 1, checkpoint_every=0, progress=False)
