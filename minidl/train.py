"""The training loop: ``fit`` and ``evaluate``, error metrics, the log, the curves, checkpoints.

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

Errors are fractions (0.25 = 25 %). A metric is a function ``metric(scores, labels) -> error``
of a batch, where ``scores = predict(outputs)``: by default the softmax of the model's outputs,
for a sigmoid model such as EuroNet pass ``predict=sigmoid``, ``metrics=(binary_error, top1)``
and ``loss_fn=with_one_hot(ops.binary_cross_entropy_with_logits)``.
"""
import inspect
import json
import math
import os
import random as python_random
import sys
import time
import warnings

import numpy as np
from tqdm import tqdm

from . import backend, checkpoint
from . import random as minidl_random
from .autograd import no_grad
from .plot import plot_curves
from .tensor import Tensor


# -- scores and metrics -------------------------------------------------------------------------
def softmax(outputs):
    """Row-wise softmax of raw outputs (N, C), NumPy or CuPy, no graph."""
    xp = backend.array_module(outputs)
    shifted = outputs - outputs.max(axis=1, keepdims=True)  # exp cannot overflow
    e = xp.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(outputs):
    """Element-wise logistic function, for models with independent sigmoid outputs. Written
    as 0.5 * (1 + tanh(x / 2)): the same values as 1 / (1 + exp(-x)) without overflowing
    exp (and warning) for very negative logits."""
    xp = backend.array_module(outputs)
    return 0.5 * (1 + xp.tanh(outputs * 0.5))


def identity(outputs):
    return outputs


def _class_labels(labels, scores):
    """Integer class labels from int labels (N,) or one-hot / multi-hot labels (N, C)."""
    if labels.ndim == 2:
        return labels.argmax(axis=1)
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"metrics: labels of shape {tuple(labels.shape)} do not match scores of "
                         f"shape {tuple(scores.shape)}; expected (N,) class indices or (N, C)")
    return labels.astype(np.int64, copy=False)


def topk_error(scores, labels, k):
    """Fraction of rows whose true class is not among the ``k`` highest scores.

    The rank of the true class is the number of classes scoring higher, plus those scoring the
    same with a smaller index (the tie rule of ``argmax``, so top-1 error = argmax is wrong).
    A row containing NaN counts as an error.
    """
    xp = backend.array_module(scores)
    if scores.ndim != 2:
        raise ValueError(f"topk_error: scores must be (N, C), got shape {tuple(scores.shape)}")
    n, c = scores.shape
    labels = _class_labels(labels, scores)
    if n == 0:
        return 0.0
    true = scores[xp.arange(n), labels][:, None]
    before = (scores > true) | ((scores == true) & (xp.arange(c)[None, :] < labels[:, None]))
    wrong = (before.sum(axis=1) >= k) | xp.isnan(scores).any(axis=1)
    return float(wrong.mean())


def top1(scores, labels):
    """Top-1 error: the highest score is not the true class."""
    return topk_error(scores, labels, 1)


def top5(scores, labels):
    """Top-5 error: the true class is not among the five highest scores."""
    return topk_error(scores, labels, 5)


def binary_error(scores, labels, threshold=0.5):
    """Element-wise error of independent yes/no outputs: 1 - Keras's ``binary_accuracy``.

    ``scores`` (N, C) are probabilities (``predict=sigmoid``); each is "yes" above
    ``threshold``. ``labels`` are class indices (N,) -- made one-hot -- or 0/1 targets (N, C).
    """
    xp = backend.array_module(scores)
    if labels.ndim == 1:
        labels = xp.arange(scores.shape[1])[None, :] == labels[:, None]
    if labels.shape != scores.shape:
        raise ValueError(f"binary_error: labels of shape {tuple(labels.shape)} do not match "
                         f"scores of shape {tuple(scores.shape)}")
    wrong = ((scores > threshold) != (labels > 0.5)) | xp.isnan(scores)
    return float(wrong.mean())


binary_error.name = "binary"


def one_hot(labels, num_classes, dtype=np.float32):
    """Class indices (N,) -> 0/1 rows (N, num_classes), on the labels' device."""
    xp = backend.array_module(labels)
    return (xp.arange(num_classes)[None, :] == labels[:, None]).astype(dtype)


def with_one_hot(loss_fn):
    """Wrap a loss that wants 0/1 targets (``ops.binary_cross_entropy_with_logits``) so it takes
    the class indices a loader yields: EuroNet's sigmoid outputs are trained this way."""
    def loss(outputs, labels):
        if labels.ndim == 1:
            labels = one_hot(labels, outputs.shape[1], outputs.dtype)
        return loss_fn(outputs, labels)
    loss.__name__ = f"{getattr(loss_fn, '__name__', 'loss')}_one_hot"
    return loss


def _metric_functions(metrics):
    """[(name, fn)] from a tuple of functions (named by ``fn.name`` or ``__name__``) or a dict."""
    if metrics is None:
        return []
    if isinstance(metrics, dict):
        return list(metrics.items())
    named = []
    for fn in metrics:
        if isinstance(fn, tuple):
            named.append(fn)
        else:
            named.append((getattr(fn, "name", None) or getattr(fn, "__name__", "metric"), fn))
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"fit: metric names must differ, got {names}")
    return named


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


def _model_dtype(model):
    params = model.parameters()
    return params[0].dtype if params else np.dtype(np.float32)


# -- evaluation ----------------------------------------------------------------------------------
def evaluate(model, loader, loss_fn=None, device="cpu", ten_crop=False, metrics=(top1, top5),
             predict=softmax, progress=False):
    """Loss and errors of ``model`` over ``loader``, in eval mode and without a graph.

    Returns ``{"loss": ..., "<metric>": ..., "images": n, "seconds": s}``; ``loss`` is None
    without ``loss_fn``. With ``ten_crop=True`` each batch of images has shape
    (N, 10, C, H, W): the ten crops of each image go through the model together, their
    ``predict`` outputs (softmax by default) are averaged and the errors are those of the
    average; the loss is the mean loss over all crops. The model's train/eval mode is restored.
    """
    device = backend.normalize_device(device)
    named_metrics = _metric_functions(metrics)
    dtype = _model_dtype(model)
    was_training = model.training
    model.eval()
    loss_sum, sums, seen = 0.0, {name: 0.0 for name, _ in named_metrics}, 0
    start = time.perf_counter()
    bar = tqdm(total=_safe_len(loader), disable=not (progress and sys.stderr.isatty()),
               desc="evaluate", unit="batch", leave=False)
    try:
        with no_grad():
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
                for name, fn in named_metrics:
                    sums[name] += fn(scores, y) * n
                seen += n
                bar.update()
    finally:
        bar.close()
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    seconds = time.perf_counter() - start
    result = {"loss": loss_sum / seen if loss_fn is not None else None}
    result.update({name: total / seen for name, total in sums.items()})
    result.update(images=seen, seconds=seconds)
    return result


def _safe_len(loader):
    try:
        return len(loader)
    except TypeError:
        return None


# -- random-number states ------------------------------------------------------------------------
def _find_generators(model, loader, extra):
    """Every NumPy Generator the run draws from, by a stable name: attributes of the model's
    modules (a Dropout with its own generator), of the train loader, and ``extra``."""
    found, seen = {}, set()

    def add(name, value):
        if isinstance(value, np.random.Generator) and id(value) not in seen:
            seen.add(id(value))
            found[name] = value

    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            add(f"model.{module_name}.{attr}" if module_name else f"model.{attr}", value)
    for attr, value in getattr(loader, "__dict__", {}).items():
        add(f"train_loader.{attr}", value)
    for i, g in enumerate(extra):
        if not isinstance(g, np.random.Generator):
            raise TypeError(f"fit: generators[{i}] is a {type(g).__name__}, not a numpy Generator")
        add(f"generators[{i}]", g)
    return found


def _capture_rng(generators):
    return {
        "minidl": minidl_random.get_state(),
        "numpy_global": np.random.get_state(),
        "python": python_random.getstate(),
        "generators": {name: g.bit_generator.state for name, g in generators.items()},
    }


def _restore_rng(state, generators):
    minidl_random.set_state(state["minidl"])
    np.random.set_state(state["numpy_global"])
    python_random.setstate(state["python"])
    saved = state["generators"]
    for name, g in generators.items():
        if name in saved:
            g.bit_generator.state = saved[name]
        else:
            warnings.warn(f"fit(resume=True): the checkpoint has no state for the generator {name}; "
                          "the resumed run will not repeat the uninterrupted one exactly")


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


# -- training ------------------------------------------------------------------------------------
def fit(model, loss_fn, optimizer, train_loader, epochs, val_loader=None, scheduler=None,
        device="cpu", out_dir=None, resume=False, max_steps=None, early_stopping_patience=None,
        metrics=(top1, top5), predict=softmax, progress=True, val_ten_crop=False, monitor=None,
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
    if int(epochs) != epochs or epochs < 0:
        raise ValueError(f"fit: epochs must be an integer >= 0, got {epochs!r}")
    if max_steps is not None and (int(max_steps) != max_steps or max_steps < 1):
        raise ValueError(f"fit: max_steps must be a positive integer or None, got {max_steps!r}")
    if early_stopping_patience is not None and (int(early_stopping_patience) != early_stopping_patience
                                                or early_stopping_patience < 1):
        raise ValueError(f"fit: early_stopping_patience must be a positive integer or None, "
                         f"got {early_stopping_patience!r}")
    try:
        batches_per_epoch = len(train_loader)
    except TypeError:
        raise TypeError(f"fit: train_loader ({type(train_loader).__name__}) must have a len(), "
                        "the number of batches per epoch") from None
    device = backend.normalize_device(device)
    model.to(device)
    dtype = _model_dtype(model)
    named_metrics = _metric_functions(metrics)
    metric_names = [name for name, _ in named_metrics]
    if monitor is None:
        if val_loader is not None:
            monitor = f"val_{metric_names[0]}" if metric_names else "val_loss"
        else:
            monitor = "train_loss"
    found_generators = _find_generators(model, train_loader, generators)

    paths = {}
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        paths = {name: os.path.join(out_dir, name)
                 for name in ("checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png")}

    # The run's state: everything the checkpoint holds besides model/optimiser/schedule/RNG.
    run = {"epoch": 0, "step": 0, "history": [], "partial": None,
           "best": None, "best_epoch": None, "bad_epochs": 0}

    if resume:
        if isinstance(resume, (str, os.PathLike)):
            resume_path = os.fspath(resume)
            if not os.path.exists(resume_path):
                raise FileNotFoundError(f"fit: resume={resume_path!r} but there is no such checkpoint")
        elif out_dir is None:
            raise ValueError("fit: resume=True needs out_dir (where checkpoint.npz is) or a checkpoint path")
        else:
            resume_path = paths["checkpoint.npz"]
        if os.path.exists(resume_path):
            saved = checkpoint.load(resume_path)
            if saved.get("kind") != "minidl.train.fit":
                raise checkpoint.CheckpointError(f"checkpoint {resume_path!r} was not written by fit() "
                                                 "and cannot be resumed")
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None:
                if saved["scheduler"] is None:
                    raise ValueError(f"fit: resuming with a scheduler, but {resume_path!r} was "
                                     "written by a run without one")
                scheduler.load_state_dict(saved["scheduler"])
            for key in run:
                run[key] = saved["run"][key]
            _restore_rng(saved["rng"], found_generators)
            loader_state = saved["loader"]
            if loader_state.get("state") is not None and hasattr(train_loader, "load_state_dict"):
                train_loader.load_state_dict(loader_state["state"])
            seed = getattr(train_loader, "seed", None)
            if loader_state.get("seed") is not None and seed != loader_state["seed"]:
                warnings.warn(f"fit(resume=True): the train loader's seed is {seed}, the checkpoint's "
                              f"{loader_state['seed']}: the batches will differ from the original run")
            if progress:
                print(f"resuming from {resume_path}: {run['epoch']} epoch(s) and {run['step']} "
                      "step(s) done")
        elif progress:
            print(f"no checkpoint at {resume_path} yet: starting from scratch")
    if paths:
        _write_metrics(paths["metrics.jsonl"], run["history"])

    stopped_early = False
    while run["epoch"] < epochs and not stopped_early:
        if max_steps is not None and run["step"] >= max_steps:
            break
        epoch = run["epoch"]
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        lr = optimizer.lr
        totals, complete = _train_epoch(model, loss_fn, optimizer, train_loader, run, epoch, epochs,
                                        device, dtype, named_metrics, predict, max_steps,
                                        batches_per_epoch, progress)
        rng_state = _capture_rng(found_generators)  # before evaluation, which could draw numbers
        seen = max(totals["seen"], 1)
        record = {"epoch": epoch + 1, "step": run["step"], "train_loss": totals["loss"] / seen}
        record.update({f"train_{name}": totals[name] / seen for name in metric_names})
        if val_loader is not None:
            record["val_loss"] = None
            record.update({f"val_{name}": None for name in metric_names})
        record.update(lr=lr, images_per_s=totals["seen"] / max(totals["seconds"], 1e-9))
        if complete:
            run["partial"] = None
            if val_loader is not None:
                val = evaluate(model, val_loader, loss_fn, device, val_ten_crop, named_metrics, predict)
                record["val_loss"] = val["loss"]
                record.update({f"val_{name}": val[name] for name in metric_names})
                record["val_seconds"] = val["seconds"]
            record["seconds"] = totals["seconds"] + record.get("val_seconds", 0.0)
            run["history"].append(record)
            if monitor not in record or record[monitor] is None:
                raise KeyError(f"fit: monitor={monitor!r} is not in the epoch record "
                               f"(keys: {sorted(record)})")
            value = float(record[monitor])
            if math.isfinite(value) and (run["best"] is None or value < run["best"]):
                run["best"], run["best_epoch"], run["bad_epochs"] = value, epoch + 1, 0
                if paths:
                    checkpoint.save(paths["best.npz"], kind="minidl.train.best", model=model.state_dict(),
                                    epoch=epoch + 1, monitor=monitor, value=value, record=record)
            else:
                run["bad_epochs"] += 1
            if scheduler is not None:
                if getattr(scheduler, "needs_metric", False):
                    scheduler.step(value)
                else:
                    scheduler.step()
            run["epoch"] = epoch + 1
            if early_stopping_patience is not None and run["bad_epochs"] >= early_stopping_patience:
                stopped_early = True
        else:
            record["complete"] = False
            record["seconds"] = totals["seconds"]
            run["partial"] = totals
        if paths:
            checkpoint.save(
                paths["checkpoint.npz"], kind="minidl.train.fit", model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=None if scheduler is None else scheduler.state_dict(),
                run=run, rng=rng_state, monitor=monitor,
                loader={"seed": getattr(train_loader, "seed", None), "epoch": epoch,
                        "state": train_loader.state_dict() if hasattr(train_loader, "state_dict") else None})
            _append_metrics(paths["metrics.jsonl"], record)
            plot_curves(run["history"], paths["curves.png"],
                        error_key=metric_names[0] if metric_names else None,
                        extra_error_key=metric_names[1] if len(metric_names) > 1 else None)
        if progress:
            print(_format_record(record, epochs, metric_names))
            if stopped_early:
                print(f"early stopping: {monitor} has not improved for {run['bad_epochs']} epochs "
                      f"(best {run['best']:.4f} at epoch {run['best_epoch']})")
        if not complete:
            break
    return {"history": run["history"], "best_epoch": run["best_epoch"], "best": run["best"],
            "monitor": monitor, "step": run["step"], "stopped_early": stopped_early}


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


def _train_epoch(model, loss_fn, optimizer, loader, run, epoch, epochs, device, dtype,
                 named_metrics, predict, max_steps, batches_per_epoch, progress):
    """One pass over ``loader`` (or the rest of one, after a mid-epoch stop); updates
    ``run["step"]``. Returns (sums over the epoch's images, whether the epoch finished)."""
    model.train()
    names = [name for name, _ in named_metrics]
    totals = run["partial"] or {"batches": 0, "seen": 0, "loss": 0.0, "seconds": 0.0,
                                **{name: 0.0 for name in names}}
    totals = dict(totals)
    skip = totals["batches"]
    first = 0
    if skip and _can_start_at_batch(loader):
        loader.set_epoch(epoch, batch=skip)  # the loader jumps there without decoding the rest
        first = skip
    bar = tqdm(total=batches_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{epochs}",
               unit="batch", leave=False, disable=not (progress and sys.stderr.isatty()))
    complete = True
    start = time.perf_counter()
    try:
        for index, batch in enumerate(loader, start=first):
            if index < skip:
                continue  # already trained on before the stop this run resumes from
            if max_steps is not None and run["step"] >= max_steps:
                complete = False
                break
            images, labels = _split_batch(batch, "fit")
            x = Tensor(_images_to_device(images, device, dtype))
            y = backend.to_device(_as_raw(labels), device)
            outputs = model(x)
            loss = loss_fn(outputs, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run["step"] += 1

            n = int(y.shape[0])
            loss_value = float(loss.item())
            with no_grad():
                scores = predict(outputs.data)
                for name, fn in named_metrics:
                    totals[name] += fn(scores, y) * n
            totals["loss"] += loss_value * n
            totals["seen"] += n
            totals["batches"] += 1
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
        raise ValueError(f"fit: the train loader yielded no batches in epoch {epoch + 1}")
    return totals, complete
