"""Stochastic gradient descent as AlexNet trained it, and the two learning-rate schedules.

The update of the AlexNet paper (docs/MODELS.md), for every weight w with gradient g = dL/dw of
the batch:

    v <- momentum * v - weight_decay * lr * w - lr * g
    w <- w + v

``weight_decay`` is the L2 penalty: it is the gradient of (weight_decay / 2) * ||w||^2, so it
pulls every weight towards zero in proportion to its size. The optional ``l1`` term adds
``l1 * sign(w)`` to the gradient (the gradient of l1 * ||w||_1): it pulls every weight towards
zero by the same amount and so drives small weights to exactly zero. Both are remedies for
over-fitting.
"""
import numpy as np
from numba import njit, prange

from . import backend
from .tensor import no_grad

# Below this many elements a parameter is updated on one thread (waking the others costs more
# than the work: the biases).
_PARALLEL_FROM = 1 << 16


def _sgd_update(w, v, g, momentum, decay, lr, with_decay):
    # v[i] <- momentum * v[i] - decay * w[i] - lr * g[i];  w[i] <- w[i] + v[i], element by
    # element, in one pass over memory (the NumPy form below makes four passes and two
    # temporaries: 61M AlexNet weights, ~2 GB of traffic). The scalars arrive in w's dtype
    # and the operations are those of the NumPy form, in its order, each rounded to w's
    # dtype, so the two give the same bits. Iteration i owns element i.
    for i in prange(w.size):
        vi = v[i] * momentum
        if with_decay:
            vi = vi - decay * w[i]
        vi = vi - lr * g[i]
        v[i] = vi
        w[i] = w[i] + vi


_sgd_update_serial = njit(cache=True)(_sgd_update)
_sgd_update_parallel = njit(parallel=True, cache=True)(_sgd_update)


def _positive_number(owner, name, value, allow_zero=True):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}") from None
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")
    return value


class SGD:
    """SGD with momentum and weight decay, with the learning rate *inside* the velocity.

    ``params``: the parameters to update (``model.parameters()``). A parameter without a
    gradient after ``backward`` is left alone, decay included (as in PyTorch).

    How this differs from ``torch.optim.SGD``: PyTorch keeps a velocity without the learning
    rate, ``b <- momentum * b + (g + weight_decay * w)``, and steps ``w <- w - lr * b``. While
    ``lr`` is constant the two are the same optimiser (``v = -lr * b``). When ``lr`` changes
    they part: PyTorch multiplies its whole accumulated velocity by the new ``lr`` at the next
    step, so the momentum of the past steps shrinks at once by the factor of the change; here
    ``v`` already holds the past steps at the ``lr`` they were taken with, only the new terms
    use the new ``lr``, and the old momentum fades out over the next steps at rate
    ``momentum``. After a drop by 10 this optimiser therefore takes a few larger steps than
    PyTorch's would.

    The update runs in place on each ``p.data`` (NumPy or CuPy), with the velocity kept on the
    parameter's device and in its dtype, under ``no_grad``.
    """

    def __init__(self, params, lr=0.01, momentum=0.9, weight_decay=0.0005, l1=0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD: got an empty list of parameters")
        for i, p in enumerate(self.params):
            if not hasattr(p, "data") or not hasattr(p, "grad"):
                raise TypeError(f"SGD: parameter {i} is a {type(p).__name__}, not a Tensor/Parameter")
        self.lr = lr
        self.momentum = _positive_number("SGD", "momentum", momentum)
        self.weight_decay = _positive_number("SGD", "weight_decay", weight_decay)
        self.l1 = _positive_number("SGD", "l1", l1)
        self.velocities = [None] * len(self.params)  # made at the first step, like the grads
        self.steps = 0

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _positive_number("SGD", "lr", value)

    def zero_grad(self):
        """Forget the gradients (``backward`` adds to an existing ``grad``)."""
        for p in self.params:
            p.grad = None

    def step(self):
        """One update of every parameter that has a gradient."""
        lr = self.lr
        decay = self.weight_decay * lr  # the rule's product, in its order (module doc)
        with no_grad():
            for i, p in enumerate(self.params):
                if p.grad is None:
                    continue
                w = p.data
                g = p.grad.data if hasattr(p.grad, "data") else p.grad
                xp = backend.array_module(w)
                if backend.array_module(g) is not xp or g.shape != w.shape:
                    raise RuntimeError(f"SGD: parameter {i} of shape {w.shape} on "
                                       f"{backend.device_of(w)} has a gradient of shape {g.shape} "
                                       f"on {backend.device_of(g)}")
                v = self.velocities[i]
                if v is None or backend.array_module(v) is not xp:
                    # First step, or the model was moved to another device since.
                    v = xp.zeros_like(w) if v is None else xp.asarray(backend.to_numpy(v))
                    self.velocities[i] = v
                if self.l1:
                    g = g + self.l1 * xp.sign(w)
                if xp is np and _fusable(w, v, g):
                    real = w.dtype.type
                    update = _sgd_update_parallel if w.size >= _PARALLEL_FROM else _sgd_update_serial
                    update(w.reshape(-1), v.reshape(-1), g.reshape(-1), real(self.momentum),
                           real(decay), real(lr), bool(decay))
                    continue
                # v <- momentum * v - weight_decay * lr * w - lr * g, in place and in w's dtype
                v *= self.momentum
                if decay:
                    v -= decay * w
                v -= lr * g
                w += v
        self.steps += 1

    # -- saving -----------------------------------------------------------------------------------
    def state_dict(self):
        """Hyper-parameters and velocities (as NumPy arrays, so a checkpoint is device-free)."""
        return {
            "lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
            "l1": self.l1, "steps": self.steps,
            "velocities": [None if v is None else backend.to_numpy(v).copy() for v in self.velocities],
        }

    def load_state_dict(self, state):
        velocities = state["velocities"]
        if len(velocities) != len(self.params):
            raise ValueError(f"SGD.load_state_dict: the state has {len(velocities)} velocities "
                             f"for {len(self.params)} parameters")
        for i, (v, p) in enumerate(zip(velocities, self.params)):
            if v is not None and tuple(np.shape(v)) != tuple(p.shape):
                raise ValueError(f"SGD.load_state_dict: velocity {i} has shape {np.shape(v)}, "
                                 f"its parameter {tuple(p.shape)}")
        self.lr = state["lr"]
        self.momentum = float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])
        self.l1 = float(state.get("l1", 0.0))
        self.steps = int(state.get("steps", 0))
        self.velocities = []
        for v, p in zip(velocities, self.params):
            if v is None:
                self.velocities.append(None)
            else:
                xp = backend.array_module(p.data)
                self.velocities.append(xp.asarray(np.asarray(v), dtype=p.dtype).copy())

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}"
                + (f", l1={self.l1}" if self.l1 else "") + ")")


def _fusable(w, v, g):
    """Can the one-pass Numba update run: floats of one dtype, all C-contiguous (so the flat
    views write through to the parameter)?"""
    return (w.dtype in (np.float32, np.float64) and v.dtype == w.dtype and g.dtype == w.dtype
            and w.flags.c_contiguous and v.flags.c_contiguous and g.flags.c_contiguous
            and w.flags.writeable)


class ReduceLROnPlateau:
    """Multiply the learning rate by ``factor`` when a monitored number stops improving.

    Call ``step(metric)`` once per epoch with the validation error (``mode="min"``) or
    accuracy (``mode="max"``). After ``patience`` epochs in a row without an improvement
    larger than ``threshold`` the rate is multiplied by ``factor`` (0.1: divided by 10) and the
    count starts again; after ``max_reductions`` reductions (three in the AlexNet paper) the
    rate stays where it is. Note the count: with ``patience=2`` the rate drops at the second
    epoch without improvement (PyTorch's class of the same name waits for the third).
    """

    needs_metric = True

    def __init__(self, optimizer, factor=0.1, patience=3, max_reductions=3, mode="min",
                 threshold=0.0, min_lr=0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if not 0.0 < float(factor) < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        if int(patience) != patience or patience < 1:
            raise ValueError(f"ReduceLROnPlateau: patience must be an integer >= 1, got {patience!r}")
        if max_reductions is not None and (int(max_reductions) != max_reductions or max_reductions < 0):
            raise ValueError(f"ReduceLROnPlateau: max_reductions must be an integer >= 0 or None, "
                             f"got {max_reductions!r}")
        self.optimizer = optimizer
        self.factor, self.patience, self.mode = float(factor), int(patience), mode
        self.max_reductions = None if max_reductions is None else int(max_reductions)
        self.threshold = _positive_number("ReduceLROnPlateau", "threshold", threshold)
        self.min_lr = _positive_number("ReduceLROnPlateau", "min_lr", min_lr)
        self.best = None
        self.bad_epochs = 0
        self.reductions = 0

    def _improved(self, metric):
        if self.best is None:
            return True
        if self.mode == "min":
            return metric < self.best - self.threshold
        return metric > self.best + self.threshold

    @property
    def exhausted(self):
        """True once the rate has been reduced ``max_reductions`` times."""
        return self.max_reductions is not None and self.reductions >= self.max_reductions

    def step(self, metric):
        """Record this epoch's ``metric``; returns True if the learning rate was reduced."""
        metric = float(metric)
        if np.isfinite(metric) and self._improved(metric):  # NaN (a diverged run) never improves
            self.best, self.bad_epochs = metric, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs < self.patience or self.exhausted:
            return False
        self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
        self.reductions += 1
        self.bad_epochs = 0
        return True

    def state_dict(self):
        return {"best": self.best, "bad_epochs": self.bad_epochs, "reductions": self.reductions,
                "factor": self.factor, "patience": self.patience, "mode": self.mode,
                "max_reductions": self.max_reductions, "threshold": self.threshold,
                "min_lr": self.min_lr}

    def load_state_dict(self, state):
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_epochs, self.reductions = int(state["bad_epochs"]), int(state["reductions"])
        self.factor, self.patience, self.mode = float(state["factor"]), int(state["patience"]), state["mode"]
        self.max_reductions = None if state["max_reductions"] is None else int(state["max_reductions"])
        self.threshold, self.min_lr = float(state["threshold"]), float(state["min_lr"])

    def __repr__(self):
        return (f"ReduceLROnPlateau(factor={self.factor}, patience={self.patience}, "
                f"max_reductions={self.max_reductions}, mode={self.mode!r})")


class StepLR:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    Call ``step()`` once at the end of each epoch; the rate for epoch ``e`` (counted from 0) is
    ``base_lr * gamma ** (e // step_size)``, where ``base_lr`` is the optimiser's rate when the
    schedule was made.
    """

    needs_metric = False

    def __init__(self, optimizer, step_size, gamma=0.1):
        if int(step_size) != step_size or step_size < 1:
            raise ValueError(f"StepLR: step_size must be an integer >= 1, got {step_size!r}")
        self.optimizer = optimizer
        self.step_size = int(step_size)
        self.gamma = _positive_number("StepLR", "gamma", gamma)
        self.base_lr = optimizer.lr
        self.epoch = 0

    def step(self, metric=None):
        """End of an epoch; returns True if the learning rate changed."""
        self.epoch += 1
        if self.epoch % self.step_size:
            return False
        self.optimizer.lr = self.base_lr * self.gamma ** (self.epoch // self.step_size)
        return True

    def state_dict(self):
        return {"step_size": self.step_size, "gamma": self.gamma, "base_lr": self.base_lr,
                "epoch": self.epoch}

    def load_state_dict(self, state):
        self.step_size, self.gamma = int(state["step_size"]), float(state["gamma"])
        self.base_lr, self.epoch = float(state["base_lr"]), int(state["epoch"])

    def __repr__(self):
        return f"StepLR(step_size={self.step_size}, gamma={self.gamma})"
