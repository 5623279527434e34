"""The training loop: ``fit`` and ``evaluate``, the metrics log, the curves, checkpoints.

``fit(model, loss_fn, optimizer, train_loader, epochs, val_loader=...)`` trains for ``epochs``
epochs. What it writes to ``out_dir``:

* ``metrics.jsonl`` -- one JSON object per epoch: epoch, step, train loss and errors, val loss
  and errors, lr, images/s, seconds;
* ``curves.png`` -- loss and error against the epoch, train and val, redrawn each epoch;
* ``checkpoint.npz`` -- everything needed to go on exactly where the run stopped (model,
  optimiser, schedule, epoch, step, random-number states, history), written atomically at the
  end of every epoch: ``fit(..., resume=True)`` continues from it;
* ``best.npz`` -- the model of the epoch with the lowest monitored error.

Loaders: any iterable of ``(images, labels)`` NumPy batches with a ``len`` (the number of
batches). If it has ``set_epoch(e)`` it is called before each epoch, so a loader can derive its
shuffling and augmentation from (seed, epoch) -- that is what makes a resumed run draw the same
batches as an uninterrupted one. A loader with ``state_dict()``/``load_state_dict()`` has that
state saved too.

The errors come from ``minidl.metrics``: a metric is a function ``metric(scores, labels) ->
error`` of a batch, where ``scores = predict(outputs)``, by default the softmax of the model's
outputs. For a sigmoid model such as EuroNet pass ``predict=metrics.sigmoid_scores``,
``metrics=(metrics.binary_error, metrics.top1)`` and
``loss_fn=metrics.with_one_hot(ops.binary_cross_entropy_with_logits)``.
"""
import dataclasses
import inspect
import json
import math
import os
import sys
import time
import warnings
from typing import Any, Callable, Optional

import numpy as np
from tqdm import tqdm

from . import backend, checkpoint
from . import random as minidl_random
from .metrics import named_metrics, softmax_scores, top1, top5
from .plot import plot_curves
from .tensor import Tensor, no_grad


# -- moving batches ------------------------------------------------------------------------------
def _as_raw(value):
    return value.data if isinstance(value, Tensor) else value


def _images_to_device(images, device, dtype):
    images = backend.to_device(_as_raw(images), device)
    if images.dtype != dtype:
        images = images.astype(dtype)
    return images


def _split_batch(batch, where):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"{where}: each batch must be a pair (images, labels), got a "
                        f"{type(batch).__name__}" + (f" of length {len(batch)}"
                                                     if isinstance(batch, (tuple, list)) else ""))
    return batch


def _safe_len(loader):
    try:
        return len(loader)
    except TypeError:
        return None


def _progress_bar(progress, **options):
    """A tqdm bar, drawn only when asked for and stderr is a terminal (not in logs and tests)."""
    return tqdm(disable=not (progress and sys.stderr.isatty()), unit="batch", leave=False, **options)


# -- evaluation ----------------------------------------------------------------------------------
def evaluate(model, loader, loss_fn=None, device="cpu", ten_crop=False, metrics=(top1, top5),
             predict=softmax_scores, progress=False):
    """Loss and errors of ``model`` over ``loader``, in eval mode and without a graph.

    Returns ``{"loss": ..., "<metric>": ..., "images": n, "seconds": s}``; ``loss`` is None
    without ``loss_fn``. With ``ten_crop=True`` each batch of images has shape
    (N, 10, C, H, W): the ten crops of each image go through the model together, their
    ``predict`` outputs (softmax by default) are averaged and the errors are those of the
    average; the loss is the mean loss over all crops. The model's train/eval mode is restored.
    """
    device = backend.normalize_device(device)
    metric_fns = named_metrics(metrics)
    dtype = model.dtype
    loss_sum, sums, seen = 0.0, {name: 0.0 for name, _ in metric_fns}, 0
    start = time.perf_counter()
    bar = _progress_bar(progress, total=_safe_len(loader), desc="evaluate")
    try:
        with model.evaluating(), no_grad():
            for batch in loader:
                images, labels = _split_batch(batch, "evaluate")
                x = _images_to_device(images, device, dtype)
                y = backend.to_device(_as_raw(labels), device)
                n = int(y.shape[0])
                crops = 1
                if ten_crop:
                    if x.ndim != 5:
                        raise ValueError(f"evaluate: ten_crop=True expects image batches of shape "
                                         f"(N, 10, C, H, W), got {tuple(x.shape)}")
                    crops = x.shape[1]
                    x = x.reshape((n * crops,) + tuple(x.shape[2:]))
                outputs = model(Tensor(x))
                if loss_fn is not None:
                    xp = backend.array_module(y)
                    crop_labels = xp.repeat(y, crops, axis=0) if crops > 1 else y
                    loss_sum += float(loss_fn(outputs, crop_labels).item()) * n
                scores = predict(outputs.data)
                if ten_crop:
                    scores = scores.reshape((n, crops) + tuple(scores.shape[1:])).mean(axis=1)
                for name, fn in metric_fns:
                    sums[name] += fn(scores, y) * n
                seen += n
                bar.update()
    finally:
        bar.close()
    if seen == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    seconds = time.perf_counter() - start
    result = {"loss": loss_sum / seen if loss_fn is not None else None}
    result.update({name: total / seen for name, total in sums.items()})
    result.update(images=seen, seconds=seconds)
    return result


# -- what a run is ------------------------------------------------------------------------------
@dataclasses.dataclass
class _Setup:
    """What ``fit`` was asked to do, its defaults resolved: the part of a run that stays fixed
    while it runs (``_Run`` is the part that changes)."""
    model: Any
    loss_fn: Callable
    optimizer: Any
    scheduler: Optional[Any]
    train_loader: Any
    val_loader: Optional[Any]
    epochs: int
    batches_per_epoch: int
    max_steps: Optional[int]
    early_stopping_patience: Optional[int]
    device: str
    dtype: np.dtype
    metrics: list             # [(name, fn)]
    predict: Callable
    monitor: str              # the record key that decides best.npz, early stopping, the schedule
    val_ten_crop: bool
    progress: bool
    generators: dict          # name -> Generator: the states a checkpoint holds besides the global ones
    files: dict               # "checkpoint.npz", "best.npz", ... -> path; empty without out_dir

    @property
    def metric_names(self):
        return [name for name, _ in self.metrics]


class _Run:
    """The run's state: everything the checkpoint holds besides model, optimiser, schedule,
    random-number states and loader. ``state_dict()`` is the checkpoint's ``run`` entry."""

    FIELDS = ("epoch", "step", "history", "partial", "best", "best_epoch", "bad_epochs")

    def __init__(self):
        self.epoch = 0            # epochs finished
        self.step = 0             # optimiser steps taken
        self.history = []         # the records of the finished epochs
        self.partial = None       # the sums of an epoch that max_steps stopped, to go on with
        self.best = None          # the lowest monitored value so far, and its epoch
        self.best_epoch = None
        self.bad_epochs = 0       # epochs since the monitored value last improved

    def state_dict(self):
        return {name: getattr(self, name) for name in self.FIELDS}

    def load_state_dict(self, state):
        for name in self.FIELDS:
            setattr(self, name, state[name])


def _check_counts(epochs, max_steps, early_stopping_patience):
    if int(epochs) != epochs or epochs < 0:
        raise ValueError(f"fit: epochs must be an integer >= 0, got {epochs!r}")
    if max_steps is not None and (int(max_steps) != max_steps or max_steps < 1):
        raise ValueError(f"fit: max_steps must be a positive integer or None, got {max_steps!r}")
    if early_stopping_patience is not None and (int(early_stopping_patience) != early_stopping_patience
                                                or early_stopping_patience < 1):
        raise ValueError(f"fit: early_stopping_patience must be a positive integer or None, "
                         f"got {early_stopping_patience!r}")


def _batches_per_epoch(train_loader):
    try:
        return len(train_loader)
    except TypeError:
        raise TypeError(f"fit: train_loader ({type(train_loader).__name__}) must have a len(), "
                        "the number of batches per epoch") from None


def _default_monitor(metric_names, has_val):
    if has_val:
        return f"val_{metric_names[0]}" if metric_names else "val_loss"
    return "train_loss"


def _output_files(out_dir):
    if out_dir is None:
        return {}
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    return {name: os.path.join(out_dir, name)
            for name in ("checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png")}


# -- training ------------------------------------------------------------------------------------
def fit(model, loss_fn, optimizer, train_loader, epochs, val_loader=None, scheduler=None,
        device="cpu", out_dir=None, resume=False, max_steps=None, early_stopping_patience=None,
        metrics=(top1, top5), predict=softmax_scores, progress=True, val_ten_crop=False, monitor=None,
        generators=()):
    """Train ``model`` and return ``{"history", "best_epoch", "best", "monitor", "step",
    "stopped_early"}``.

    ``loss_fn(outputs, labels)`` -> a scalar Tensor (labels arrive as an array on ``device``).
    ``epochs`` is the total count, resumed epochs included: resuming a run that stopped after
    epoch 2 with ``epochs=4`` trains epochs 3 and 4.

    ``resume``: True continues from ``out_dir/checkpoint.npz`` (starting afresh, with a note,
    if there is none yet); a path continues from that file. Model, optimiser, schedule, step,
    history and every random-number state (minidl's generator, NumPy's global one, Python's,
    each Generator found on the model's modules or the train loader, ``generators``) are
    restored, so the continued run is bitwise the uninterrupted one.

    ``max_steps`` stops after that many optimiser steps in all (a smoke test). A stop inside an
    epoch is checkpointed with its position; resuming skips the batches already used: through
    ``set_epoch(epoch, batch=k)`` where the loader offers it (``minidl.data.DataLoader``),
    else by iterating the loader up to that point (so its order must depend on the epoch only).

    ``monitor`` (lower is better) decides ``best.npz``, early stopping and the argument to a
    ``ReduceLROnPlateau``: by default the validation error of the first metric, or the
    training loss without ``val_loader``. ``early_stopping_patience=p`` stops when it has not
    improved for ``p`` epochs. ``scheduler`` is stepped once per epoch.

    ``progress``: a tqdm bar (only when stderr is a terminal) and a summary line per epoch.
    """
    _check_counts(epochs, max_steps, early_stopping_patience)
    batches_per_epoch = _batches_per_epoch(train_loader)
    device = backend.normalize_device(device)
    model.to(device)
    metric_fns = named_metrics(metrics)
    if monitor is None:
        monitor = _default_monitor([name for name, _ in metric_fns], val_loader is not None)
    setup = _Setup(
        model=model, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
        train_loader=train_loader, val_loader=val_loader, epochs=epochs,
        batches_per_epoch=batches_per_epoch, max_steps=max_steps,
        early_stopping_patience=early_stopping_patience, device=device, dtype=model.dtype,
        metrics=metric_fns, predict=predict, monitor=monitor, val_ten_crop=val_ten_crop,
        progress=progress, generators=minidl_random.find_generators(model, train_loader, generators),
        files=_output_files(out_dir))
    run = _Run()
    if resume:
        _resume(setup, run, resume)
    if setup.files:
        _write_metrics(setup.files["metrics.jsonl"], run.history)

    stopped_early = False
    while run.epoch < epochs and not stopped_early:
        if max_steps is not None and run.step >= max_steps:
            break
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(run.epoch)
        lr = optimizer.lr
        totals, complete = _train_epoch(setup, run)
        rng_state = minidl_random.capture_state(setup.generators)  # before validation could draw
        stopped_early = _close_epoch(setup, run, totals, complete, lr, rng_state)
        if not complete:
            break
    return {"history": run.history, "best_epoch": run.best_epoch, "best": run.best,
            "monitor": monitor, "step": run.step, "stopped_early": stopped_early}


def _resume(setup, run, resume):
    """Load model, optimiser, schedule, ``run``, the random-number states and the loader's state
    from the checkpoint ``resume`` names (True: out_dir's); a fresh start, with a note, where
    out_dir has none yet."""
    if isinstance(resume, (str, os.PathLike)):
        path = os.fspath(resume)
        if not os.path.exists(path):
            raise FileNotFoundError(f"fit: resume={path!r} but there is no such checkpoint")
    elif not setup.files:
        raise ValueError("fit: resume=True needs out_dir (where checkpoint.npz is) or a checkpoint path")
    else:
        path = setup.files["checkpoint.npz"]
    if not os.path.exists(path):
        if setup.progress:
            print(f"no checkpoint at {path} yet: starting from scratch")
        return
    saved = checkpoint.load(path)
    if saved.get("kind") != "minidl.train.fit":
        raise checkpoint.CheckpointError(f"checkpoint {path!r} was not written by fit() "
                                         "and cannot be resumed")
    setup.model.load_state_dict(saved["model"])
    setup.optimizer.load_state_dict(saved["optimizer"])
    if setup.scheduler is not None:
        if saved["scheduler"] is None:
            raise ValueError(f"fit: resuming with a scheduler, but {path!r} was "
                             "written by a run without one")
        setup.scheduler.load_state_dict(saved["scheduler"])
    run.load_state_dict(saved["run"])
    minidl_random.restore_state(saved["rng"], setup.generators)
    loader, loader_state = setup.train_loader, saved["loader"]
    if loader_state.get("state") is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(loader_state["state"])
    seed = getattr(loader, "seed", None)
    if loader_state.get("seed") is not None and seed != loader_state["seed"]:
        warnings.warn(f"fit(resume=True): the train loader's seed is {seed}, the checkpoint's "
                      f"{loader_state['seed']}: the batches will differ from the original run")
    if setup.progress:
        print(f"resuming from {path}: {run.epoch} epoch(s) and {run.step} step(s) done")


def _can_start_at_batch(loader):
    """Does ``loader.set_epoch`` take ``batch=`` (start the epoch at that batch), as
    ``minidl.data.DataLoader``'s does?"""
    set_epoch = getattr(loader, "set_epoch", None)
    if set_epoch is None:
        return False
    try:
        return "batch" in inspect.signature(set_epoch).parameters
    except (TypeError, ValueError):
        return False


def _train_epoch(setup, run):
    """One pass over the train loader (or the rest of one, after a mid-epoch stop); advances
    ``run.step``. Returns (sums over the epoch's images, whether the epoch finished)."""
    setup.model.train()
    loader, names = setup.train_loader, setup.metric_names
    totals = dict(run.partial or {"batches": 0, "seen": 0, "loss": 0.0, "seconds": 0.0,
                                  **{name: 0.0 for name in names}})
    skip = totals["batches"]
    first = 0
    if skip and _can_start_at_batch(loader):
        loader.set_epoch(run.epoch, batch=skip)  # the loader jumps there without decoding the rest
        first = skip
    bar = _progress_bar(setup.progress, total=setup.batches_per_epoch, initial=skip,
                        desc=f"epoch {run.epoch + 1}/{setup.epochs}")
    complete = True
    start = time.perf_counter()
    try:
        for index, batch in enumerate(loader, start=first):
            if index < skip:
                continue  # already trained on before the stop this run resumes from
            if setup.max_steps is not None and run.step >= setup.max_steps:
                complete = False
                break
            _train_step(setup, batch, totals)
            run.step += 1
            if not bar.disable:
                elapsed = totals["seconds"] + time.perf_counter() - start
                postfix = {"loss": f"{totals['loss'] / totals['seen']:.4f}"}
                if names:
                    postfix["acc"] = f"{100 * (1 - totals[names[0]] / totals['seen']):.1f}%"
                postfix["img/s"] = f"{totals['seen'] / max(elapsed, 1e-9):.0f}"
                bar.set_postfix(postfix, refresh=False)
            bar.update()
    finally:
        bar.close()
    totals["seconds"] += time.perf_counter() - start
    if totals["seen"] == 0 and complete:
        raise ValueError(f"fit: the train loader yielded no batches in epoch {run.epoch + 1}")
    return totals, complete


def _train_step(setup, batch, totals):
    """One optimiser step on ``batch``; adds its loss and errors, weighted by its size, to ``totals``."""
    images, labels = _split_batch(batch, "fit")
    x = Tensor(_images_to_device(images, setup.device, setup.dtype))
    y = backend.to_device(_as_raw(labels), setup.device)
    outputs = setup.model(x)
    loss = setup.loss_fn(outputs, y)
    setup.optimizer.zero_grad()
    loss.backward()
    setup.optimizer.step()
    n = int(y.shape[0])
    with no_grad():
        scores = setup.predict(outputs.data)
        for name, fn in setup.metrics:
            totals[name] += fn(scores, y) * n
    totals["loss"] += float(loss.item()) * n
    totals["seen"] += n
    totals["batches"] += 1


# -- the end of an epoch -------------------------------------------------------------------------
def _close_epoch(setup, run, totals, complete, lr, rng_state):
    """Write the epoch's record; for a finished epoch first validate, keep the best model, step
    the schedule and judge early stopping. Then save the checkpoint, the log line and the
    curves, and print the record. Returns whether early stopping ends the run."""
    epoch, names = run.epoch, setup.metric_names
    seen = max(totals["seen"], 1)
    record = {"epoch": epoch + 1, "step": run.step, "train_loss": totals["loss"] / seen}
    record.update({f"train_{name}": totals[name] / seen for name in names})
    if setup.val_loader is not None:
        record["val_loss"] = None
        record.update({f"val_{name}": None for name in names})
    record.update(lr=lr, images_per_s=totals["seen"] / max(totals["seconds"], 1e-9))
    stopped_early = False
    if complete:
        run.partial = None
        if setup.val_loader is not None:
            val = evaluate(setup.model, setup.val_loader, setup.loss_fn, setup.device,
                           setup.val_ten_crop, setup.metrics, setup.predict)
            record["val_loss"] = val["loss"]
            record.update({f"val_{name}": val[name] for name in names})
            record["val_seconds"] = val["seconds"]
        record["seconds"] = totals["seconds"] + record.get("val_seconds", 0.0)
        run.history.append(record)
        value = _monitored_value(setup.monitor, record)
        if math.isfinite(value) and (run.best is None or value < run.best):
            run.best, run.best_epoch, run.bad_epochs = value, epoch + 1, 0
            if setup.files:
                checkpoint.save(setup.files["best.npz"], kind="minidl.train.best",
                                model=setup.model.state_dict(), epoch=epoch + 1,
                                monitor=setup.monitor, value=value, record=record)
        else:
            run.bad_epochs += 1
        if setup.scheduler is not None:
            if getattr(setup.scheduler, "needs_metric", False):
                setup.scheduler.step(value)
            else:
                setup.scheduler.step()
        run.epoch = epoch + 1
        patience = setup.early_stopping_patience
        stopped_early = patience is not None and run.bad_epochs >= patience
    else:
        record["complete"] = False
        record["seconds"] = totals["seconds"]
        run.partial = totals
    if setup.files:
        _save_epoch(setup, run, record, epoch, rng_state)
    if setup.progress:
        print(_format_record(record, setup.epochs, names))
        if stopped_early:
            print(f"early stopping: {setup.monitor} has not improved for {run.bad_epochs} epochs "
                  f"(best {run.best:.4f} at epoch {run.best_epoch})")
    return stopped_early


def _monitored_value(monitor, record):
    if monitor not in record or record[monitor] is None:
        raise KeyError(f"fit: monitor={monitor!r} is not in the epoch record "
                       f"(keys: {sorted(record)})")
    return float(record[monitor])


def _save_epoch(setup, run, record, epoch, rng_state):
    """checkpoint.npz (``rng_state`` as it was before validation), the record's line in
    metrics.jsonl, and curves.png redrawn."""
    files, loader, names = setup.files, setup.train_loader, setup.metric_names
    checkpoint.save(
        files["checkpoint.npz"], kind="minidl.train.fit", model=setup.model.state_dict(),
        optimizer=setup.optimizer.state_dict(),
        scheduler=None if setup.scheduler is None else setup.scheduler.state_dict(),
        run=run.state_dict(), rng=rng_state, monitor=setup.monitor,
        loader={"seed": getattr(loader, "seed", None), "epoch": epoch,
                "state": loader.state_dict() if hasattr(loader, "state_dict") else None})
    _append_metrics(files["metrics.jsonl"], record)
    plot_curves(run.history, files["curves.png"], error_key=names[0] if names else None,
                extra_error_key=names[1] if len(names) > 1 else None)


# -- the log -------------------------------------------------------------------------------------
def _json_safe(record):
    """NaN/inf become null: metrics.jsonl stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _write_metrics(path, history):
    """Rewrite metrics.jsonl from ``history`` (atomically: a resumed run drops lines written
    after the checkpoint it resumes from)."""
    temp = path + ".tmp"
    with open(temp, "w") as f:
        for record in history:
            f.write(json.dumps(_json_safe(record)) + "\n")
    os.replace(temp, path)


def _append_metrics(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(_json_safe(record)) + "\n")


def _format_record(record, epochs, metric_names):
    parts = [f"epoch {record['epoch']}/{epochs}"]
    if not record.get("complete", True):
        parts.append(f"(stopped after step {record['step']})")
    parts.append(f"train loss {record['train_loss']:.4f}")
    parts += [f"{m} {100 * record[f'train_{m}']:.2f}%" for m in metric_names]
    if record.get("val_loss") is not None or any(record.get(f"val_{m}") is not None for m in metric_names):
        if record.get("val_loss") is not None:
            parts.append(f"| val loss {record['val_loss']:.4f}")
        else:
            parts.append("| val")
        parts += [f"{m} {100 * record[f'val_{m}']:.2f}%" for m in metric_names]
    parts.append(f"| lr {record['lr']:.3g}, {record['images_per_s']:.0f} img/s, {record['seconds']:.1f} s")
    return "  ".join(parts)
