"""The training loop: ``fit`` and ``evaluate``, the metrics log, the curves, checkpoints.

``fit(model, loss_fn, optimizer, train_loader, epochs, val_loader=...)`` trains for ``epochs``
epochs. What it writes to ``out_dir``:

* ``metrics.jsonl`` -- one JSON object per epoch: epoch, step, train loss and errors, val loss
  and errors, lr, images/s, seconds;
* ``curves.png`` -- loss and error against the epoch, train and val, redrawn each epoch;
* ``checkpoint.npz`` -- everything needed to go on exactly where the run stopped (model,
  optimiser, schedule, epoch, step, random-number states, history, the recipe, versions and
  thread settings), written atomically at the end of every epoch and when a run is stopped
  (``max_steps``, SIGINT, SIGTERM): ``fit(..., resume=True)`` continues from it;
* ``best.npz`` -- the model of the epoch with the lowest monitored error (never a model with
  non-finite weights or a non-finite loss).

A run holds its folder alone (``minidl.runs``): a second run there is refused, and so is a
folder that holds a finished run unless ``resume=True`` or ``overwrite=True``.

What keeps a run from losing work:

* **Divergence guard.** Each step reads the loss and the squared gradient norm together (the
  loss was read anyway; the norm is one dot product per parameter array) and looks at both
  before the update. A non-finite value, by ``on_nonfinite``: ``"stop"`` (default) raises
  ``DivergenceError`` naming the step and the last good checkpoint, the weights untouched;
  ``"skip"`` leaves the batch out (ten in a row stop the run); ``"reduce_lr"`` goes back to
  the state of the last checkpoint, divides the learning rate by 10 and goes on (three times at
  most). Before any save the weights are checked once more: non-finite weights are never written.
* **Graceful stop.** SIGINT (Ctrl-C) and SIGTERM (what SLURM and Kubernetes send) let the
  current step finish; then the checkpoint is written with the epoch's position and
  ``TrainingInterrupted`` (a ``KeyboardInterrupt``) is raised, saying how to resume. A second
  signal stops at once. The previous handlers are put back when ``fit`` returns.
* **Honest resume.** The recipe -- the optimiser's and schedule's settings, the batch size and
  whatever the caller adds (``recipe={"variant": ...}``) -- is stored; resuming with other
  values is an error listing them, unless ``accept_changed_recipe=True``: then the new values
  are used (the learning rate from now on, a new momentum...) and said so. Other versions or
  thread settings than the checkpoint's give a warning: results then match an uninterrupted run
  to float rounding, not bitwise.

Loaders: any iterable of ``(images, labels)`` NumPy batches with a ``len`` (the number of
batches). If it has ``set_epoch(e)`` it is called before each epoch, so a loader can derive its
shuffling and augmentation from (seed, epoch) -- that is what makes a resumed run draw the same
batches as an uninterrupted one. A loader with ``state_dict()``/``load_state_dict()`` has that
state saved too.

**Many processes** (``minidl.distributed``, ``mpiexec -n N``): pass the model wrapped in
``DistributedDataParallel`` and loaders sharded with ``num_replicas``/``rank``; the batch size is
the global one. Every rank runs ``fit``; the loss, errors and stop decisions are those of the
whole global batch and the whole validation set, reduced over the ranks, so every rank takes
the same decisions; only rank 0 prints, holds the run folder's lock and writes files (a failure
there is raised on every rank). A NaN on one rank reaches all of them through the averaged
gradient and the reduced loss; a signal to any rank stops all of them after the same step. The
checkpoint is the same as one process's, so a run resumes on another number of ranks too (to
float rounding: the sums are split differently; a ``ResumeWarning`` says so).

The errors come from ``minidl.metrics``: a metric is a function ``metric(scores, labels) ->
error`` of a batch, where ``scores = predict(outputs)``, by default the softmax of the model's
outputs. For a sigmoid model such as EuroNet pass ``predict=metrics.sigmoid_scores``,
``metrics=(metrics.binary_error, metrics.top1)`` and
``loss_fn=metrics.with_one_hot(ops.binary_cross_entropy_with_logits)``.
"""
import copy
import dataclasses
import inspect
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Callable, Optional

import numpy as np
from tqdm import tqdm

from . import backend, checkpoint, distributed, runs
from . import random as minidl_random
from .metrics import named_metrics, softmax_scores, top1, top5
from .plot import plot_curves
from .tensor import Tensor, no_grad

NONFINITE_CHOICES = ("stop", "skip", "reduce_lr")
SKIPS_IN_A_ROW = 10       # on_nonfinite="skip": this many non-finite batches in a row stop the run
LR_REDUCTIONS = 3         # on_nonfinite="reduce_lr": at most this many divisions per fit call
LR_FACTOR = 0.1


class DivergenceError(FloatingPointError):
    """The loss or the gradient became NaN or infinite and the run stopped; the weights of the
    last good checkpoint are intact. ``step`` and ``checkpoint`` (a path, or None) say where."""

    def __init__(self, message, step=None, checkpoint=None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped ``fit``. After the first signal the checkpoint holds every
    step taken (``saved`` is True where there is an out_dir); a second signal stops at once.
    ``signal_name``, ``exit_status`` (128 + the signal's number: 130, 143), ``checkpoint``, ``step``."""

    def __init__(self, message, signum, checkpoint=None, step=None, saved=False):
        super().__init__(message)
        self.signum, self.checkpoint, self.step, self.saved = signum, checkpoint, step, saved
        self.signal_name = signal.Signals(signum).name
        self.exit_status = 128 + int(signum)

    def __str__(self):
        return self.args[0]


class RecipeChangedError(ValueError):
    """Resuming with other settings than the checkpoint's; ``changes`` is [(key, old, new)]."""

    def __init__(self, message, changes):
        super().__init__(message)
        self.changes = changes


class ResumeWarning(UserWarning):
    """The resumed run will not repeat the uninterrupted one bit for bit (other thread settings
    or versions, a checkpoint without a recipe...)."""


# -- moving batches ------------------------------------------------------------------------------
def _as_raw(value):
    return value.data if isinstance(value, Tensor) else value


def _images_to_device(images, device, dtype):
    images = backend.to_device(_as_raw(images), device)
    if images.dtype != dtype:
        images = images.astype(dtype)
    return images


def _refuse_bad_labels(labels, outputs):
    """Called when a step's loss or gradient is not finite: an integer label outside the
    outputs' classes is named, rather than reported as a divergence. (On a GPU the losses do
    not read labels back, which would make every step wait for the device, so there a bad
    label first shows as a NaN loss.) -100, the losses' default ignore_index, passes."""
    labels = _as_raw(labels)
    if not (isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and outputs.ndim >= 2):
        return
    classes = outputs.shape[1]
    flat = labels.reshape(-1)
    bad = np.flatnonzero(((flat < 0) & (flat != -100)) | (flat >= classes))
    if bad.size:
        raise ValueError(f"fit: the batch holds label {flat[bad[0]]} (at position {bad[0]}; "
                         f"{bad.size} bad in all), but the model has {classes} outputs: labels "
                         f"must be class indices 0..{classes - 1}; this, not a divergence, made "
                         "the loss not finite")


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
            for batch, _ in _batches(loader, device, "evaluate"):
                images, labels = _split_batch(batch, "evaluate")
                n = int(np.shape(_as_raw(labels))[0])
                if n == 0:
                    bar.update()
                    continue  # a rank's empty piece of a sharded batch
                x = _images_to_device(images, device, dtype)
                y = backend.to_device(_as_raw(labels), device)
                crops = 1
                if ten_crop:
                    if x.ndim != 5:
                        raise ValueError(f"evaluate: ten_crop=True expects image batches of shape "
                                         f"(N, 10, C, H, W), got {tuple(x.shape)}")
                    crops = x.shape[1]
                    x = x.reshape((n * crops,) + tuple(x.shape[2:]))
                outputs = model(Tensor(x))
                loss = None
                if loss_fn is not None:
                    xp = backend.array_module(y)
                    crop_labels = xp.repeat(y, crops, axis=0) if crops > 1 else y
                    loss = loss_fn(outputs, crop_labels).data
                scores = predict(outputs.data)
                if ten_crop:
                    scores = scores.reshape((n, crops) + tuple(scores.shape[1:])).mean(axis=1)
                loss, scores = _to_host(loss, scores)  # one wait for the GPU per batch
                if loss is not None:
                    loss_sum += float(loss) * n
                host_labels = backend.to_numpy(_as_raw(labels))
                for name, fn in metric_fns:
                    sums[name] += fn(scores, host_labels) * n
                seen += n
                bar.update()
    finally:
        bar.close()
    if getattr(loader, "num_replicas", 1) > 1 and distributed.world_size() > 1:
        # A sharded loader: the sums over every rank's piece are those of the whole set.
        names = list(sums)
        total = distributed.allreduce(np.array([loss_sum, seen] + [sums[k] for k in names], np.float64))
        loss_sum, seen = float(total[0]), int(total[1])
        sums = {name: float(value) for name, value in zip(names, total[2:])}
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
    parameters: list          # the model's parameters, for the gradient norm
    recipe: dict              # the settings a resumed run must share with its checkpoint
    recipe_keys: set          # the caller's own recipe entries: a resume must have them all
    accept_changed_recipe: bool
    on_nonfinite: str
    stop: Any = None          # the _GracefulStop watching SIGINT/SIGTERM
    last_checkpoint: Optional[tuple] = None   # (path, epoch, step) of the last state written
    snapshot: Optional[dict] = None           # on_nonfinite="reduce_lr": the state to go back to
    lr_reductions: int = 0
    nonfinite_in_a_row: int = 0               # batches refused since the last good step
    state_model: Any = None   # whose state a checkpoint holds: the model, unwrapped from DDP
    world: int = 1            # processes training together (minidl.distributed)
    root: bool = True         # rank 0: prints, holds the folder, writes the files
    agreed_signum: Optional[int] = None       # a signal some rank got, once all ranks know it
    checkpoint_every: Optional[int] = None    # steps between checkpoints inside an epoch

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
        self.partial = None       # the sums of an epoch that was stopped, to go on with
        self.best = None          # the lowest monitored value so far, and its epoch
        self.best_epoch = None
        self.bad_epochs = 0       # epochs since the monitored value last improved

    def state_dict(self):
        return {name: getattr(self, name) for name in self.FIELDS}

    def load_state_dict(self, state):
        for name in self.FIELDS:
            setattr(self, name, state[name])


def _check_options(epochs, max_steps, early_stopping_patience, checkpoint_every, on_nonfinite,
                   resume, overwrite):
    if checkpoint_every is not None and (int(checkpoint_every) != checkpoint_every or checkpoint_every < 1):
        raise ValueError(f"fit: checkpoint_every must be a positive number of steps or None, "
                         f"got {checkpoint_every!r}")
    if on_nonfinite not in NONFINITE_CHOICES:
        raise ValueError(f"fit: on_nonfinite must be one of {NONFINITE_CHOICES}, got {on_nonfinite!r}")
    if resume and overwrite:
        raise ValueError("fit: resume and overwrite exclude each other (continue a run, or replace it)")
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


# -- the recipe -----------------------------------------------------------------------------------
def _check_recipe(setup, saved, path):
    """Compare the checkpoint's recipe with this run's: equal, or an error listing the changes,
    or -- accepted -- the changes, to apply once the state is loaded."""
    if saved.get("recipe") is None:
        _warn(setup, f"fit(resume=True): {path} holds no recipe (an older minidl wrote it), so a "
                      "changed learning rate, batch size or model cannot be noticed", ResumeWarning)
        return []
    changes = runs.recipe_changes(saved["recipe"], setup.recipe,
                                  setup.recipe_keys | set(saved.get("recipe_keys") or ()))
    for key, old, new in changes:
        if key in ("optimizer", "scheduler"):
            raise RecipeChangedError(f"fit: cannot resume {path}: it was written with {key} {old}, "
                                     f"this run has {new}", changes)
    if changes and not setup.accept_changed_recipe:
        raise RecipeChangedError(f"fit: resuming {path} with a changed recipe ({runs.describe_changes(changes)}); "
                                 "resume with the checkpoint's values, or accept the new ones "
                                 "(accept_changed_recipe=True)", changes)
    partial = saved["run"].get("partial")
    if partial and any(key == "batch_size" for key, _, _ in changes):
        raise RecipeChangedError(f"fit: {path} stopped inside epoch {saved['run']['epoch'] + 1} after "
                                 f"{partial['batches']} batches of the old size: a new batch size "
                                 "can only start at an epoch's beginning", changes)
    return changes


def _apply_recipe_changes(setup, changes):
    """Put accepted new settings into the optimiser and schedule just loaded from the
    checkpoint. A new ``lr`` is the rate from now on (a step schedule's base rate is scaled
    with it); the caller's own entries are already in the objects it built."""
    optimizer, scheduler = setup.optimizer, setup.scheduler
    for key, old, new in changes:
        if key.startswith("scheduler."):
            setattr(scheduler, key[len("scheduler."):], new)
        elif key != "batch_size" and hasattr(optimizer, key):
            if key == "lr" and scheduler is not None and getattr(scheduler, "base_lr", None) and optimizer.lr:
                scheduler.base_lr *= new / optimizer.lr
            setattr(optimizer, key, tuple(new) if isinstance(new, list) else new)
    if setup.root:
        print(f"resume: using the changed recipe (accepted): {runs.describe_changes(changes)}")


# -- the state a checkpoint holds -------------------------------------------------------------------
def _capture(setup, run, rng_state, model_state, epoch):
    """Everything a checkpoint holds, as ``checkpoint.save`` keywords (``epoch``: the index of
    the epoch just trained, as the loader counts)."""
    loader = setup.train_loader
    return dict(
        kind="minidl.train.fit", model=model_state, optimizer=setup.optimizer.state_dict(),
        scheduler=None if setup.scheduler is None else setup.scheduler.state_dict(),
        run=run.state_dict(), rng=rng_state, monitor=setup.monitor,
        loader={"seed": getattr(loader, "seed", None), "epoch": epoch,
                "state": loader.state_dict() if hasattr(loader, "state_dict") else None},
        recipe=setup.recipe, recipe_keys=sorted(setup.recipe_keys),
        environment=runs.environment(processes=setup.world))


_REQUIRED = ("model", "optimizer", "scheduler", "run", "rng", "loader")


def _restore(setup, run, saved, where):
    """Put model, optimiser, schedule, ``run``, the random-number states and the loader back as
    ``saved`` (a checkpoint's contents) has them; ``where`` names it in errors."""
    try:
        setup.model.load_state_dict(saved["model"])
        setup.optimizer.load_state_dict(saved["optimizer"])
    except (KeyError, ValueError) as error:
        raise checkpoint.CheckpointError(f"checkpoint {where} does not fit this model and "
                                         f"optimiser (another model, class count or band count?): "
                                         f"{error}") from error
    if setup.scheduler is not None:
        if saved["scheduler"] is None:
            raise ValueError(f"fit: resuming with a scheduler, but {where} was "
                             "written by a run without one")
        setup.scheduler.load_state_dict(saved["scheduler"])
    run.load_state_dict(copy.deepcopy(saved["run"]))
    minidl_random.restore_state(saved["rng"], setup.generators)
    loader, loader_state = setup.train_loader, saved["loader"]
    if loader_state.get("state") is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(loader_state["state"])
    return loader_state


def _resume(setup, run, resume):
    """Load the checkpoint ``resume`` names (True: out_dir's), after checking that this run
    has its recipe; a fresh start, with a note, where out_dir has none yet. With many ranks,
    rank 0 reads the file and sends its contents to the others."""
    if isinstance(resume, (str, os.PathLike)):
        path, named = os.fspath(resume), True
    elif not setup.files:
        raise distributed.raised_on_all_ranks(ValueError(
            "fit: resume=True needs out_dir (where checkpoint.npz is) or a checkpoint path"))
    else:
        path, named = setup.files["checkpoint.npz"], False
    saved = distributed.on_root(lambda: _read_checkpoint(path, named), share_result=True,
                                what="reading the checkpoint to resume")
    if saved is None:
        if setup.progress:
            print(f"no checkpoint at {path} yet: starting from scratch")
        return
    try:  # every rank decides from the same contents: an error here is raised by all
        changes = _check_recipe(setup, saved, path)
        loader_state = _restore(setup, run, saved, repr(path))
    except Exception as error:
        raise distributed.raised_on_all_ranks(error)
    if changes:
        _apply_recipe_changes(setup, changes)
    seed = getattr(setup.train_loader, "seed", None)
    if loader_state.get("seed") is not None and seed != loader_state["seed"]:
        _warn(setup, f"fit(resume=True): the train loader's seed is {seed}, the checkpoint's "
                     f"{loader_state['seed']}: the batches will differ from the original run")
    differences = (runs.environment_differences(saved["environment"], runs.environment(processes=setup.world))
                   if saved.get("environment") else [])  # an older checkpoint has no record
    if differences:
        _warn(setup, f"fit(resume=True): {path} was written with other settings ({'; '.join(differences)}): "
                     "the resumed run can differ from an uninterrupted one at the level of float "
                     "rounding (about 1e-7), not bit for bit", ResumeWarning)
    setup.last_checkpoint = (path, run.epoch, run.step)
    if setup.progress:
        print(f"resuming from {path}: {run.epoch} epoch(s) and {run.step} step(s) done")


def _read_checkpoint(path, named):
    """The contents of the checkpoint at ``path``, checked to be one ``fit`` can resume; None
    if there is none yet (an error if the caller ``named`` it)."""
    if not os.path.exists(path):
        if named:
            raise FileNotFoundError(f"fit: resume={path!r} but there is no such checkpoint")
        return None
    saved = checkpoint.load(path)
    if saved.get("kind") != "minidl.train.fit":
        raise checkpoint.CheckpointError(f"checkpoint {path!r} was not written by fit() "
                                         "and cannot be resumed")
    missing = [key for key in _REQUIRED if key not in saved]
    if missing:
        raise checkpoint.CheckpointError(f"checkpoint {path!r} lacks {missing}: it cannot be resumed")
    return saved


def _warn(setup, message, category=UserWarning):
    """A warning from rank 0 only: every rank would say the same."""
    if setup.root:
        warnings.warn(message, category, stacklevel=3)


# -- stopping on a signal -------------------------------------------------------------------------
class _GracefulStop:
    """While active, the first SIGINT or SIGTERM only asks the loop to stop after the current
    step (``signum`` is set); a second one raises ``TrainingInterrupted`` at once. Handlers can
    be set only in the main thread; elsewhere, and with ``enabled=False``, nothing changes."""

    def __init__(self, enabled, announce=True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.announce = announce  # with many ranks, rank 0 alone says it
        self.signum = None
        self.previous = {}

    def __enter__(self):
        if self.enabled:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:
            raise TrainingInterrupted(f"stopped at once by a second {name}: nothing was saved after "
                                      "the last checkpoint", signum)
        self.signum = signum
        if not self.announce:
            return
        print(f"\n{name}: stopping after this step and saving a checkpoint "
              f"({'Ctrl-C' if signum == signal.SIGINT else name} again stops at once, saving nothing)",
              file=sys.stderr, flush=True)


def _stop_agreed(setup, ask=False):
    """Whether a signal asks the run to stop. One process: whether it got one. Many: whether
    any rank got one, as of the last exchange -- each step's, or a new one with ``ask`` -- so
    that all ranks stop after the same step."""
    if setup.world == 1:
        setup.agreed_signum = setup.stop.signum
    elif ask:
        got = distributed.allgather(setup.stop.signum)
        setup.agreed_signum = next((signum for signum in got if signum is not None), None)
    return setup.agreed_signum is not None


def _interrupted(setup, run):
    signum = setup.agreed_signum
    name = signal.Signals(signum).name
    if setup.files:  # every rank stops after the same step: nothing to abort
        path = setup.files["checkpoint.npz"]
        return distributed.raised_on_all_ranks(TrainingInterrupted(
            f"stopped by {name} after step {run.step}; the checkpoint {path} holds every step "
            "taken: resume to go on", signum, path, run.step, saved=True))
    return distributed.raised_on_all_ranks(TrainingInterrupted(
        f"stopped by {name} after step {run.step}; nothing was saved (no out_dir)", signum, None,
        run.step))


# -- training ------------------------------------------------------------------------------------
def fit(model, loss_fn, optimizer, train_loader, epochs, val_loader=None, scheduler=None,
        device="cpu", out_dir=None, resume=False, max_steps=None, early_stopping_patience=None,
        metrics=(top1, top5), predict=softmax_scores, progress=True, val_ten_crop=False, monitor=None,
        generators=(), overwrite=False, recipe=None, accept_changed_recipe=False,
        on_nonfinite="stop", handle_signals=True, checkpoint_every=None):
    """Train ``model`` and return ``{"history", "best_epoch", "best", "monitor", "step",
    "stopped_early"}``.

    ``loss_fn(outputs, labels)`` -> a scalar Tensor (labels arrive as an array on ``device``).
    ``epochs`` is the total count, resumed epochs included: resuming a run that stopped after
    epoch 2 with ``epochs=4`` trains epochs 3 and 4.

    ``out_dir``: the run's folder (see the module docstring), held alone for the run's life.
    A folder that holds a run is refused unless ``resume`` or ``overwrite=True`` (which deletes
    that run's files first).

    ``resume``: True continues from ``out_dir/checkpoint.npz`` (starting afresh, with a note,
    if there is none yet); a path continues from that file. Model, optimiser, schedule, step,
    history and every random-number state (minidl's generator, NumPy's global one, Python's,
    each Generator found on the model's modules or the train loader, ``generators``) are
    restored, so the continued run is bitwise the uninterrupted one. ``recipe`` (a dict of
    JSON values, e.g. the model variant and the class names) is added to the optimiser's and
    schedule's settings and the batch size; resuming with a different recipe is a
    ``RecipeChangedError`` unless ``accept_changed_recipe=True``.

    ``max_steps`` stops after that many optimiser steps in all (a smoke test). A stop inside an
    epoch is checkpointed with its position; resuming skips the batches already used: through
    ``set_epoch(epoch, batch=k)`` where the loader offers it (``minidl.data.DataLoader``),
    else by iterating the loader up to that point (so its order must depend on the epoch only).
    SIGINT and SIGTERM stop the same way and then raise ``TrainingInterrupted``
    (``handle_signals=False`` leaves the handlers alone). ``checkpoint_every=n`` also writes
    checkpoint.npz inside an epoch every ``n`` optimiser steps, so a crash or ``kill -9``
    loses at most ``n`` steps: a resume from it goes on bitwise as from a stop.

    ``on_nonfinite``: ``"stop"``, ``"skip"`` or ``"reduce_lr"`` (module docstring).

    ``monitor`` (lower is better) decides ``best.npz``, early stopping and the argument to a
    ``ReduceLROnPlateau``: by default the validation error of the first metric, or the
    training loss without ``val_loader``. ``early_stopping_patience=p`` stops when it has not
    improved for ``p`` epochs. ``scheduler`` is stepped once per epoch.

    ``progress``: a tqdm bar (only when stderr is a terminal) and a summary line per epoch.
    """
    _check_options(epochs, max_steps, early_stopping_patience, checkpoint_every, on_nonfinite,
                   resume, overwrite)
    batches_per_epoch = _batches_per_epoch(train_loader)
    world, root, state_model = _processes(model, train_loader)
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
        progress=progress and root,
        generators=minidl_random.find_generators(state_model, train_loader, generators),
        files={}, parameters=list(model.parameters()),
        recipe=runs.make_recipe(optimizer, scheduler, train_loader, recipe),
        recipe_keys={"optimizer", "scheduler", "batch_size"} | {str(key) for key in (recipe or {})},
        accept_changed_recipe=accept_changed_recipe, on_nonfinite=on_nonfinite,
        state_model=state_model, world=world, root=root, checkpoint_every=checkpoint_every)
    folder = None
    if out_dir is not None:  # rank 0 holds the folder; the others learn whether it could
        folder = distributed.on_root(lambda: runs.claim(out_dir, resume=bool(resume), overwrite=overwrite),
                                     what="claiming the run folder")
        setup.files = {name: os.path.join(os.fspath(out_dir), name) for name in runs.RUN_FILES}
    try:
        with _GracefulStop(handle_signals, announce=root) as stop:
            setup.stop = stop
            return _run(setup, resume)
    finally:
        if folder is not None:
            folder.release()


def _processes(model, train_loader):
    """(processes training together, whether this is rank 0, the model unwrapped from
    DistributedDataParallel), checking that with many the model and loader are made for it."""
    world = distributed.world_size()
    if world > 1:
        _check_distributed(model, train_loader, world)
    state_model = model.module if isinstance(model, distributed.DistributedDataParallel) else model
    return world, distributed.rank() == 0, state_model


def _check_distributed(model, train_loader, world):
    """With many ranks: the model must average its gradients, the loader read this rank's share."""
    if not isinstance(model, distributed.DistributedDataParallel):
        raise distributed.raised_on_all_ranks(ValueError(
            f"fit: {world} processes are training together (minidl.distributed), but the model is "
            "not wrapped in distributed.DistributedDataParallel: each would train a copy of its own"))
    replicas = getattr(train_loader, "num_replicas", None)
    if replicas is not None and replicas != world:
        raise distributed.raised_on_all_ranks(ValueError(
            f"fit: the train loader is sharded for {replicas} process(es), but {world} are training: "
            "make it with num_replicas=distributed.world_size(), rank=distributed.rank()"))


def _run(setup, resume):
    """The epochs of ``fit``, once its folder is held and the signals are watched."""
    run = _Run()
    if resume:
        _resume(setup, run, resume)
    if setup.files:
        distributed.on_root(lambda: _write_metrics(setup.files["metrics.jsonl"], run.history),
                            what="writing metrics.jsonl")
    if setup.on_nonfinite == "reduce_lr":
        setup.snapshot = _snapshot(setup, run, minidl_random.capture_state(setup.generators))
    stopped_early = False
    while run.epoch < setup.epochs and not stopped_early:
        if _stop_agreed(setup, ask=True):
            raise _interrupted(setup, run)
        if setup.max_steps is not None and run.step >= setup.max_steps:
            break
        if hasattr(setup.train_loader, "set_epoch"):
            setup.train_loader.set_epoch(run.epoch)
        lr = setup.optimizer.lr
        try:
            totals, complete = _train_epoch(setup, run)
        except _RollBack as roll_back:
            _roll_back(setup, run, roll_back)
            continue
        rng_state = minidl_random.capture_state(setup.generators)  # before validation could draw
        stopped_early = _close_epoch(setup, run, totals, complete, lr, rng_state)
        if _stop_agreed(setup, ask=True):
            raise _interrupted(setup, run)
        if not complete:
            break
    return {"history": run.history, "best_epoch": run.best_epoch, "best": run.best,
            "monitor": setup.monitor, "step": run.step, "stopped_early": stopped_early}


def _batches(loader, device, where):
    """(batch, the loader's ``state_dict()`` right after drawing it, or None) for each batch
    of ``loader``. On a GPU, with a loader whose batches depend on the epoch and position only
    (``minidl.data.DataLoader``: drawing one batch early changes no random state), each
    batch's images are copied to the device one step ahead (``_copied_ahead``)."""
    def with_states():
        for batch in loader:
            yield batch, (loader.state_dict() if hasattr(loader, "state_dict") else None)

    if device == "cuda" and _can_start_at_batch(loader):
        return _copied_ahead(with_states(), where)
    return with_states()


def _copied_ahead(items, where):
    """``items`` of (batch, state) with each batch's images already on the GPU: batch k+1's
    are copied while step k runs, from page-locked host memory (the only memory a copy can
    overlap computation from) on a stream of their own. Labels stay on the host: ``fit``
    checks them there, the metrics run there and the losses copy them. The host waits for a
    copy only when its batch is next, a step after it started."""
    import cupy
    import cupyx

    stream = cupy.cuda.Stream(non_blocking=True)

    def start_copy(batch, state):
        images, labels = _split_batch(batch, where)
        images = _as_raw(images)
        if not isinstance(images, np.ndarray):
            return (images, labels), state, None, None
        pinned = cupyx.empty_pinned(images.shape, images.dtype)
        pinned[...] = images
        with stream:
            on_device = cupy.empty(images.shape, images.dtype)
            on_device.set(pinned, stream=stream)
            copied = stream.record()
        # The device array comes from the side stream's pool; the step frees it after fit's
        # read of the loss, when every kernel that used it has run.
        return (on_device, labels), state, copied, pinned

    def arrived(staged):
        batch, state, copied, pinned = staged
        if copied is not None:
            copied.synchronize()  # the copy is done, so ``pinned`` may be dropped and reused
        return batch, state

    pending = None
    for batch, state in items:
        staged = start_copy(batch, state)
        if pending is not None:
            yield arrived(pending)
        pending = staged
    if pending is not None:
        yield arrived(pending)


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
    """One pass over the train loader (or the rest of one, after a stop inside it); advances
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
        for index, (batch, state) in enumerate(_batches(loader, setup.device, "fit"), start=first):
            if index < skip:
                continue  # already trained on before the stop this run resumes from
            if _stop_agreed(setup) or (setup.max_steps is not None and run.step >= setup.max_steps):
                complete = False
                break
            nonfinite = _train_step(setup, batch, totals)
            totals["batches"] = _batches_consumed(state, loader, run.epoch, totals["batches"] + 1)
            if nonfinite is None:
                run.step += 1
                setup.nonfinite_in_a_row = 0
                if (setup.checkpoint_every and setup.files and run.step % setup.checkpoint_every == 0
                        and totals["batches"] < setup.batches_per_epoch):
                    _save_within_epoch(setup, run, totals, time.perf_counter() - start)
            elif nonfinite is _NO_SAMPLES:
                pass  # every file of the batch, on every rank, was unreadable
            else:
                setup.nonfinite_in_a_row += 1
                _on_nonfinite(setup, run, totals, nonfinite)
            if not bar.disable and totals["seen"]:
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
    if complete and _stop_agreed(setup):
        complete = False  # stopped before validation: a resumed run validates this epoch
    if totals["seen"] == 0 and complete and not totals.get("skipped"):
        raise distributed.raised_on_all_ranks(
            ValueError(f"fit: the train loader yielded no batches in epoch {run.epoch + 1}"))
    return totals, complete


def _save_within_epoch(setup, run, totals, seconds):
    """checkpoint.npz as a stop after this step would write it (the epoch's sums so far, the
    random-number states now), and the epoch goes on: ``checkpoint_every``. No line in
    metrics.jsonl, which holds finished epochs (and stops)."""
    model_state = setup.model.state_dict()
    if not _finite_state(model_state):
        return  # never saved; the epoch's end stops the run, naming the last good checkpoint
    run.partial = dict(totals, seconds=totals["seconds"] + seconds)
    try:
        state = _capture(setup, run, minidl_random.capture_state(setup.generators), model_state,
                         run.epoch)
    finally:
        run.partial = None
    distributed.on_root(lambda: checkpoint.save(setup.files["checkpoint.npz"], **state),
                        what="writing checkpoint.npz")
    setup.last_checkpoint = (setup.files["checkpoint.npz"], run.epoch, run.step)


def _batches_consumed(state, loader, epoch, counted):
    """Where the epoch stands, in the loader's batches: the loader's own count where its
    ``state_dict()`` keeps one (``state``, taken when the batch was drawn: ``minidl.data.
    DataLoader`` yields nothing for a batch whose every file was unreadable, yet that batch
    was used up), else the batches seen."""
    if not (isinstance(state, dict) and isinstance(state.get("batch"), int) and "epoch" in state):
        return counted
    if state["epoch"] == epoch:
        return state["batch"]
    if state["epoch"] == epoch + 1 and state["batch"] == 0:
        return len(loader)
    return counted


_NO_SAMPLES = "no samples"  # what _train_step returns for a global batch without a sample


def _train_step(setup, batch, totals):
    """One optimiser step on ``batch``; adds its loss and errors, weighted by its size, to
    ``totals``. Returns None, or -- the loss or the gradient norm being NaN or infinite --
    (loss, squared gradient norm), and then takes no step."""
    images, labels = _split_batch(batch, "fit")
    if setup.world > 1:
        return _train_step_together(setup, images, labels, totals)
    x = Tensor(_images_to_device(images, setup.device, setup.dtype))
    y = backend.to_device(_as_raw(labels), setup.device)
    outputs = setup.model(x)
    loss = setup.loss_fn(outputs, y)
    setup.optimizer.zero_grad()
    loss.backward()
    with no_grad():
        scores = setup.predict(outputs.data)
    loss_value, norm_squared, scores = _step_numbers(loss, setup.parameters, scores)
    if not (math.isfinite(loss_value) and math.isfinite(norm_squared)):
        _refuse_bad_labels(labels, outputs)
        setup.optimizer.zero_grad()
        return loss_value, norm_squared
    setup.optimizer.step()
    n = int(y.shape[0])
    host_labels = backend.to_numpy(_as_raw(labels))
    for name, fn in setup.metrics:
        totals[name] += fn(scores, host_labels) * n
    totals["loss"] += loss_value * n
    totals["seen"] += n
    return None


def _train_step_together(setup, images, labels, totals):
    """``_train_step`` on this rank's piece of a global batch: forward and backward here, the
    gradients averaged by the DistributedDataParallel model, then one exchange of the loss,
    the errors, the sample counts, the finiteness of each rank's values and any signal, from
    which every rank takes the same decision. Returns as ``_train_step`` does, or
    ``_NO_SAMPLES`` when no rank had a sample."""
    n = int(np.shape(_as_raw(labels))[0])
    setup.optimizer.zero_grad()
    sums = [0.0] * len(setup.metrics)
    if n == 0:
        setup.model.empty_step()
        loss_value, norm_squared = 0.0, _step_numbers(None, setup.parameters)[1]
    else:
        x = Tensor(_images_to_device(images, setup.device, setup.dtype))
        y = backend.to_device(_as_raw(labels), setup.device)
        outputs = setup.model(x)
        loss = setup.loss_fn(outputs, y)
        loss.backward()
        setup.model.synchronize()
        with no_grad():
            scores = setup.predict(outputs.data)
        loss_value, norm_squared, scores = _step_numbers(loss, setup.parameters, scores)
        host_labels = backend.to_numpy(_as_raw(labels))
        sums = [fn(scores, host_labels) * n for _, fn in setup.metrics]
        if not (math.isfinite(loss_value) and math.isfinite(norm_squared)):
            _refuse_bad_labels(labels, outputs)
    finite = math.isfinite(loss_value) and math.isfinite(norm_squared)
    rows = distributed.allgather((loss_value * n, n, finite, setup.stop.signum, sums))
    setup.agreed_signum = next((row[3] for row in rows if row[3] is not None), None)
    seen = sum(row[1] for row in rows)
    if seen == 0:
        setup.optimizer.zero_grad()
        return _NO_SAMPLES
    loss_sum = sum(row[0] for row in rows)  # in rank order: the same sum on every rank
    if not (all(row[2] for row in rows) and math.isfinite(loss_sum)):
        setup.optimizer.zero_grad()
        return loss_sum / seen, norm_squared
    setup.optimizer.step()
    for k, (name, _) in enumerate(setup.metrics):
        totals[name] += sum(row[4][k] for row in rows)
    totals["loss"] += loss_sum
    totals["seen"] += seen
    return None


def _step_numbers(loss, parameters, scores=None):
    """The loss, the squared norm of all gradients and the scores (for the metrics, which then
    run on the host), read from the device in one transfer: the divergence guard needs the
    first two before the update, and each further read would be another wait for the GPU. A
    norm past the float range (about 1e19 in float32) counts as infinite, which is divergence
    by any measure. ``loss`` None: a rank without a sample (loss 0)."""
    xp = backend.array_module(loss.data if loss is not None else parameters[0].data)
    norm_squared = None
    for p in parameters:
        g = p.grad
        if g is None:
            continue
        flat = (g.data if isinstance(g, Tensor) else g).reshape(-1)
        term = xp.dot(flat, flat)
        norm_squared = term if norm_squared is None else norm_squared + term
    loss_value, norm_squared, scores = _to_host(
        xp.zeros(()) if loss is None else loss.data, norm_squared, scores)
    return float(loss_value), (0.0 if norm_squared is None else float(norm_squared)), scores


def _to_host(*arrays):
    """The arrays (None passes through) as NumPy arrays of their shapes and dtypes, in one
    transfer from the device: concatenated as float64, which holds float32 and float64 values
    and integers below 2^53 exactly."""
    present = [a for a in arrays if a is not None]
    if not present or backend.array_module(present[0]) is np:
        return arrays
    xp = backend.array_module(present[0])
    flat = backend.to_numpy(xp.concatenate([xp.asarray(a, dtype=np.float64).reshape(-1)
                                            for a in present]))
    result, at = [], 0
    for a in arrays:
        if a is None:
            result.append(None)
            continue
        result.append(flat[at:at + a.size].reshape(a.shape).astype(a.dtype))
        at += a.size
    return result


# -- non-finite values -------------------------------------------------------------------------------
class _RollBack(Exception):
    """on_nonfinite="reduce_lr": go back to the last good state (raised out of the epoch)."""

    def __init__(self, what):
        super().__init__(what)
        self.what = what


def _last_good(setup):
    if setup.last_checkpoint is None:
        return ("no checkpoint has been written yet" if setup.files
                else "nothing is saved without out_dir")
    path, epoch, step = setup.last_checkpoint
    return f"the last good checkpoint is {path} ({epoch} epoch(s), step {step})"


def _on_nonfinite(setup, run, totals, values):
    """What ``on_nonfinite`` says to do about the batch just refused (``totals["batches"]``-th
    of epoch ``run.epoch + 1``)."""
    loss_value, norm_squared = values
    step = run.step + 1
    what = (f"step {step} (epoch {run.epoch + 1}, batch {totals['batches']}): "
            + (f"the loss is {loss_value}" if not math.isfinite(loss_value)
               else f"the gradient norm is {math.sqrt(norm_squared) if norm_squared >= 0 else norm_squared}"))
    if setup.on_nonfinite == "skip" and setup.nonfinite_in_a_row < SKIPS_IN_A_ROW:
        totals["skipped"] = totals.get("skipped", 0) + 1
        print(f"fit: {what}; batch skipped", file=sys.stderr, flush=True)
        return
    if setup.on_nonfinite == "reduce_lr" and setup.lr_reductions < LR_REDUCTIONS:
        raise _RollBack(what)
    if setup.on_nonfinite == "skip":
        what += f", the {SKIPS_IN_A_ROW}th non-finite batch in a row"
    elif setup.on_nonfinite == "reduce_lr":
        what += f", after {LR_REDUCTIONS} reductions of the learning rate"
    last = setup.last_checkpoint[0] if setup.last_checkpoint else None
    raise distributed.raised_on_all_ranks(DivergenceError(
        f"training diverged at {what}; stopped without saving these weights; {_last_good(setup)}. "
        "Resume from it with a lower learning rate, or choose on_nonfinite='skip' or 'reduce_lr'",
        step=step, checkpoint=last))


def _snapshot(setup, run, rng_state):
    """A copy of what a checkpoint would hold now, kept in memory to go back to."""
    state = _capture(setup, run, rng_state, setup.model.state_dict(), run.epoch)
    state.pop("environment")
    return {key: value if key == "model" else copy.deepcopy(value) for key, value in state.items()}


def _roll_back(setup, run, roll_back):
    """Back to the snapshot, with the learning rate divided by 10."""
    _restore(setup, run, setup.snapshot, "the last good state")
    old = setup.optimizer.lr
    setup.optimizer.lr = old * LR_FACTOR
    setup.lr_reductions += 1
    print(f"fit: {roll_back.what}; went back to the state after step {run.step} and divided the "
          f"learning rate by {1 / LR_FACTOR:g}: {old:.3g} -> {setup.optimizer.lr:.3g} "
          f"({setup.lr_reductions} of at most {LR_REDUCTIONS})", file=sys.stderr, flush=True)


def _finite_state(state):
    return all(np.isfinite(value).all() for value in state.values()
               if isinstance(value, np.ndarray) and value.dtype.kind in "fc")


def _finite_record(record):
    return all(math.isfinite(record[key]) for key in ("train_loss", "val_loss")
               if isinstance(record.get(key), float))


# -- the end of an epoch -------------------------------------------------------------------------
def _close_epoch(setup, run, totals, complete, lr, rng_state):
    """Write the epoch's record; for a finished epoch first validate, keep the best model, step
    the schedule and judge early stopping. Then save the checkpoint, the log line and the
    curves, and print the record. Returns whether early stopping ends the run."""
    epoch, names = run.epoch, setup.metric_names
    seen = totals["seen"] or math.nan  # every batch skipped: no loss to report, not 0
    record = {"epoch": epoch + 1, "step": run.step, "train_loss": totals["loss"] / seen}
    record.update({f"train_{name}": totals[name] / seen for name in names})
    if setup.val_loader is not None:
        record["val_loss"] = None
        record.update({f"val_{name}": None for name in names})
    record.update(lr=lr, images_per_s=totals["seen"] / max(totals["seconds"], 1e-9))
    if totals.get("skipped"):
        record["skipped_batches"] = totals["skipped"]
    model_state = setup.model.state_dict()
    if setup.world > 1:
        distributed.check_same_parameters(setup.state_model, f"after step {run.step}")
    if not _finite_state(model_state):
        raise distributed.raised_on_all_ranks(DivergenceError(
            f"the weights are not finite after step {run.step} (epoch {epoch + 1}); they were not "
            f"saved; {_last_good(setup)}", step=run.step,
            checkpoint=setup.last_checkpoint[0] if setup.last_checkpoint else None))
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
        if math.isfinite(value) and _finite_record(record) and (run.best is None or value < run.best):
            run.best, run.best_epoch, run.bad_epochs = value, epoch + 1, 0
            if setup.files:
                distributed.on_root(lambda: checkpoint.save(
                    setup.files["best.npz"], kind="minidl.train.best", model=model_state,
                    epoch=epoch + 1, monitor=setup.monitor, value=value, record=record),
                    what="writing best.npz")
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
        _save_epoch(setup, run, record, _capture(setup, run, rng_state, model_state, epoch))
    if setup.on_nonfinite == "reduce_lr":
        setup.snapshot = _snapshot(setup, run, rng_state)
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


def _save_epoch(setup, run, record, state):
    """checkpoint.npz (``state``, its random-number states as they were before validation), the
    record's line in metrics.jsonl, and curves.png redrawn."""
    files, names = setup.files, setup.metric_names
    distributed.on_root(lambda: checkpoint.save(files["checkpoint.npz"], **state),
                        what="writing checkpoint.npz")
    setup.last_checkpoint = (files["checkpoint.npz"], run.epoch, run.step)

    def log():
        _append_metrics(files["metrics.jsonl"], record)
        plot_curves(run.history, files["curves.png"], error_key=names[0] if names else None,
                    extra_error_key=names[1] if len(names) > 1 else None)
    distributed.on_root(log, what="writing metrics.jsonl and curves.png")


# -- the log -------------------------------------------------------------------------------------
def _json_safe(record):
    """NaN/inf become null: metrics.jsonl stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _write_metrics(path, history):
    """Rewrite metrics.jsonl from ``history``, atomically (a resumed run drops lines written
    after the checkpoint it resumes from): through an exclusively created temporary with a
    random name, so a link planted in the folder cannot redirect it."""
    text = "".join(json.dumps(_json_safe(record)) + "\n" for record in history)
    checkpoint.write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def _append_metrics(path, record):
    """One line, written with one call in append mode, never through a symbolic link."""
    line = (json.dumps(_json_safe(record)) + "\n").encode("utf-8")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as error:
        raise checkpoint.SaveError(path, error) from error


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
    if record.get("skipped_batches"):
        parts.append(f"| {record['skipped_batches']} non-finite batch(es) skipped")
    parts.append(f"| lr {record['lr']:.3g}, {record['images_per_s']:.0f} img/s, {record['seconds']:.1f} s")
    return "  ".join(parts)
