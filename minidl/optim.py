"""Optimisers -- SGD as AlexNet trained it, Adam and AdamW as PyTorch computes them -- and the
learning-rate schedules (ReduceLROnPlateau, StepLR, CosineAnnealingLR, LinearLR for a warm-up,
SequentialLR to chain them).

The update of the AlexNet paper (docs/MODELS.md), for every weight w with gradient g = dL/dw of
the batch:

    v <- momentum * v - weight_decay * lr * w - lr * g
    w <- w + v

``weight_decay`` is the L2 penalty: it is the gradient of (weight_decay / 2) * ||w||^2, so it
pulls every weight towards zero in proportion to its size. The optional ``l1`` term adds
``l1 * sign(w)`` to the gradient (the gradient of l1 * ||w||_1): it pulls every weight towards
zero by the same amount and so drives small weights to exactly zero. Both are remedies for
over-fitting.

Adam (Kingma & Ba) and AdamW (Loshchilov & Hutter), for each parameter w with gradient g at its
t-th step, as ``torch.optim.Adam``/``AdamW`` (their single-tensor CPU code, operation for
operation, fused multiply-adds where PyTorch's kernels use them)::

    g <- g + weight_decay * w            (Adam)       w <- w * (1 - lr * weight_decay)  (AdamW)
    m <- m + (1 - beta1) * (g - m)                    (a lerp: one fused multiply-add)
    v <- v * beta2;  v <- v + (1 - beta2) * g * g     (the product fused with the add)
    v_hat = max(v_hat, v) with amsgrad, else v
    w <- w + (-lr / (1 - beta1^t)) * m / (sqrt(v_hat) / sqrt(1 - beta2^t) + eps)

One Numba loop on the CPU, one CUDA kernel (``optim.cu``) on the GPU, one element per iteration
or thread, for SGD and for Adam: each reads and writes a parameter's arrays once per step. The
SGD kernel computes the Numba loop's operations in its order, each product rounded on its own,
so both devices give the same bits. Adam's state (m, v, v_hat, t per parameter) is in
``state_dict()``, so a checkpoint resumes exactly.

The schedules are closed forms of the epoch count (the one number they keep), so resuming
from a checkpoint gives the same rates.
"""
import math

import numpy as np
from numba.core.extending import intrinsic

from . import backend, cpu, cuda
from .tensor import no_grad

_kernels = cuda.KernelFile(__file__)


@cpu.kernel
def _sgd_update(first, stop, w, v, g, momentum, decay, lr, with_decay):
    # v[i] <- momentum * v[i] - decay * w[i] - lr * g[i];  w[i] <- w[i] + v[i], element by
    # element, in one pass over memory (the NumPy form below makes four passes and two
    # temporaries: 61M AlexNet weights, ~2 GB of traffic). The scalars arrive in w's dtype
    # and the operations are those of the NumPy form, in its order, each rounded to w's
    # dtype, so the two give the same bits. Iteration i owns element i.
    for i in range(first, stop):
        vi = v[i] * momentum
        if with_decay:
            vi = vi - decay * w[i]
        vi = vi - lr * g[i]
        v[i] = vi
        w[i] = w[i] + vi


def _sgd_cpu(w, v, g, momentum, decay, lr, with_decay):
    _sgd_update(w.size, w.reshape(-1), v.reshape(-1), g.reshape(-1), momentum, decay, lr,
                with_decay)


def _sgd_cuda(w, v, g, momentum, decay, lr, with_decay):
    _kernels("sgd_update", w.dtype)(w.size, w, v, g, momentum, decay, lr, with_decay)


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
                w, g = p.data, p.grad.data
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
                if _fusable(w, v, g):
                    real = w.dtype.type
                    update = backend.pick(w, cpu=_sgd_cpu, cuda=_sgd_cuda)
                    update(w, v, g, real(self.momentum), real(decay), real(lr), bool(decay))
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
    """Can the one-pass update (Numba or CUDA) run: floats of one dtype, all C-contiguous (so
    the flat views write through to the parameter), the parameter writeable (CuPy arrays
    always are)?"""
    return (w.dtype in (np.float32, np.float64) and v.dtype == w.dtype and g.dtype == w.dtype
            and w.flags.c_contiguous and v.flags.c_contiguous and g.flags.c_contiguous
            and getattr(w.flags, "writeable", True))


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with one rounding (LLVM's fma): what PyTorch's vectorised CPU kernels compute
    for lerp, addcmul and add with alpha."""
    if not a == b == c:
        return None  # one type for all three: the kernels pass scalars in the array's dtype

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return a(a, b, c), codegen


@cpu.kernel
def _adam_update(first, stop, w, g, m, v, v_max, decay_factor, weight_decay, one_minus_beta1,
                 lerp_complement, beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps,
                 amsgrad):
    # The update of the module docstring for element i, in PyTorch's order of operations
    # (decay_factor = 1 - lr * weight_decay for AdamW, else 1 and weight_decay applies to g).
    # Iteration i owns element i.
    for i in range(first, stop):
        gi = g[i]
        if decay_factor != 1:
            w[i] = w[i] * decay_factor
        if weight_decay != 0:
            gi = _fma(weight_decay, w[i], gi)
        if one_minus_beta1 < 0.5:  # PyTorch's lerp: two forms, each exact at its end
            m[i] = _fma(one_minus_beta1, gi - m[i], m[i])
        else:
            m[i] = _fma(-(gi - m[i]), lerp_complement, gi)
        vi = v[i] * beta2
        vi = _fma(one_minus_beta2 * gi, gi, vi)
        v[i] = vi
        if amsgrad:
            if vi > v_max[i]:
                v_max[i] = vi
            vi = v_max[i]
        denominator = np.sqrt(vi) / bias_correction2_sqrt + eps
        w[i] = w[i] + neg_step_size * m[i] / denominator


def _adam_cpu(w, g, m, v, v_max, *scalars):
    _adam_update(w.size, w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
                 v_max.reshape(-1), *scalars)


def _adam_cuda(w, g, m, v, v_max, *scalars):
    _kernels("adam_update", w.dtype)(w.size, w, g, m, v, v_max, *scalars[:-1], bool(scalars[-1]))


class Adam:
    """Adam, as ``torch.optim.Adam`` (with ``decoupled_weight_decay=True``: AdamW): the same
    arguments, the same arithmetic (module docstring), per-parameter state that checkpoints
    hold. ``params`` as for SGD; a parameter without a gradient is skipped and its step count
    does not advance (as in PyTorch). Runs in place in each parameter's dtype and device."""

    name = "Adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, decoupled_weight_decay=False):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{self.name}: got an empty list of parameters")
        for i, p in enumerate(self.params):
            if not hasattr(p, "data") or not hasattr(p, "grad"):
                raise TypeError(f"{self.name}: parameter {i} is a {type(p).__name__}, not a "
                                "Tensor/Parameter")
        self.lr = lr
        beta1, beta2 = betas
        for name, beta in (("betas[0]", beta1), ("betas[1]", beta2)):
            if not 0.0 <= _positive_number(self.name, name, beta) < 1.0:
                raise ValueError(f"{self.name}: {name} must be in [0, 1), got {beta!r}")
        self.betas = (float(beta1), float(beta2))
        self.eps = _positive_number(self.name, "eps", eps)
        self.weight_decay = _positive_number(self.name, "weight_decay", weight_decay)
        self.amsgrad, self.decoupled_weight_decay = bool(amsgrad), bool(decoupled_weight_decay)
        self.state = [None] * len(self.params)  # {"step", "exp_avg", "exp_avg_sq"[, "max_exp_avg_sq"]}

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _positive_number(self.name, "lr", value)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _state_of(self, i, w):
        xp = backend.array_module(w)
        state = self.state[i]
        if state is None or backend.array_module(state["exp_avg"]) is not xp:
            names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if self.amsgrad else [])
            state = {"step": 0 if state is None else state["step"],
                     **{n: xp.zeros_like(w) if state is None else xp.asarray(backend.to_numpy(state[n]))
                        for n in names}}
            self.state[i] = state
        return state

    def step(self):
        """One update of every parameter that has a gradient."""
        beta1, beta2 = self.betas
        lr, decay = self.lr, self.weight_decay
        with no_grad():
            for i, p in enumerate(self.params):
                if p.grad is None:
                    continue
                w, g = p.data, p.grad.data
                if g.shape != w.shape or backend.array_module(g) is not backend.array_module(w):
                    raise RuntimeError(f"{self.name}: parameter {i} of shape {w.shape} on "
                                       f"{backend.device_of(w)} has a gradient of shape "
                                       f"{g.shape} on {backend.device_of(g)}")
                xp = backend.array_module(w)
                g = xp.ascontiguousarray(g, dtype=w.dtype)
                state = self._state_of(i, w)
                state["step"] += 1
                t = state["step"]
                real = w.dtype.type
                decoupled = self.decoupled_weight_decay
                scalars = (real(1 - lr * decay if decoupled else 1.0), real(0.0 if decoupled else decay),
                           real(1 - beta1), real(1 - (1 - beta1)), real(beta2), real(1 - beta2),
                           real(-(lr / (1 - beta1 ** t))), real((1 - beta2 ** t) ** 0.5),
                           real(self.eps), self.amsgrad)
                update = backend.pick(w, cpu=_adam_cpu, cuda=_adam_cuda)
                v_max = state.get("max_exp_avg_sq", state["exp_avg_sq"])
                update(w, g, state["exp_avg"], state["exp_avg_sq"], v_max, *scalars)

    def state_dict(self):
        """Hyper-parameters and per-parameter state (NumPy arrays: device-free)."""
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad,
                "decoupled_weight_decay": self.decoupled_weight_decay,
                "state": [None if st is None else {k: _saved(k, v) for k, v in st.items()}
                          for st in self.state]}

    def load_state_dict(self, state):
        saved = state["state"]
        if len(saved) != len(self.params):
            raise ValueError(f"{self.name}.load_state_dict: the state has {len(saved)} entries "
                             f"for {len(self.params)} parameters")
        for i, (st, p) in enumerate(zip(saved, self.params)):
            if st is not None and tuple(np.shape(st["exp_avg"])) != tuple(p.shape):
                raise ValueError(f"{self.name}.load_state_dict: state {i} has shape "
                                 f"{np.shape(st['exp_avg'])}, its parameter {tuple(p.shape)}")
        self.lr, self.eps = state["lr"], float(state["eps"])
        self.betas = tuple(map(float, state["betas"]))
        self.weight_decay, self.amsgrad = float(state["weight_decay"]), bool(state["amsgrad"])
        self.decoupled_weight_decay = bool(state["decoupled_weight_decay"])
        self.state = []
        for st, p in zip(saved, self.params):
            if st is None:
                self.state.append(None)
                continue
            xp = backend.array_module(p.data)
            self.state.append({k: int(v) if k == "step" else
                               xp.asarray(np.asarray(v), dtype=p.dtype).copy() for k, v in st.items()})

    def __repr__(self):
        return (f"{self.name}(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay}" + (", amsgrad=True" if self.amsgrad else "") + ")")


def _saved(name, value):
    """A state entry as a checkpoint holds it: the step as an int, arrays as NumPy copies."""
    return value if name == "step" else backend.to_numpy(value).copy()


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW``: Adam with the weight decay applied to the weights
    (w <- w * (1 - lr * weight_decay)) instead of added to the gradient; weight_decay 0.01."""

    name = "AdamW"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True)


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


class _ClosedFormSchedule:
    """A schedule whose rate is a function of the epoch count alone: ``step()`` counts an epoch
    and sets ``optimizer.lr = lr_at(epoch)``; the state is the count."""

    needs_metric = False

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.epoch = 0

    def lr_at(self, epoch):
        """The rate after ``epoch`` epochs; each schedule defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define lr_at(epoch)")

    def step(self, metric=None):
        """End of an epoch; returns True if the learning rate changed."""
        self.epoch += 1
        before = self.optimizer.lr
        self.optimizer.lr = self.lr_at(self.epoch)
        return self.optimizer.lr != before

    def state_dict(self):
        return {"base_lr": self.base_lr, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.base_lr, self.epoch = float(state["base_lr"]), int(state["epoch"])


class CosineAnnealingLR(_ClosedFormSchedule):
    """The rate falls from the optimiser's along half a cosine to ``eta_min`` over ``T_max``
    epochs, as ``torch.optim.lr_scheduler.CosineAnnealingLR``:
    ``eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2`` (PyTorch computes
    the same curve recursively, equal up to rounding; past T_max it rises again, as there)."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        if int(T_max) != T_max or T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be an integer >= 1, got {T_max!r}")
        super().__init__(optimizer)
        self.T_max, self.eta_min = int(T_max), _positive_number("CosineAnnealingLR", "eta_min", eta_min)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2

    def __repr__(self):
        return f"CosineAnnealingLR(T_max={self.T_max}, eta_min={self.eta_min})"


class LinearLR(_ClosedFormSchedule):
    """A linear warm-up (or decay), as ``torch.optim.lr_scheduler.LinearLR``: the rate is
    ``base_lr * factor`` with the factor going linearly from ``start_factor`` to
    ``end_factor`` over ``total_iters`` epochs, then staying there. Making it sets the
    optimiser's rate to ``base_lr * start_factor``."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1] and end_factor in [0, 1], "
                             f"got {start_factor!r} and {end_factor!r}")
        if int(total_iters) != total_iters or total_iters < 1:
            raise ValueError(f"LinearLR: total_iters must be an integer >= 1, got {total_iters!r}")
        super().__init__(optimizer)
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = int(total_iters)
        optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch):
        done = min(epoch, self.total_iters) / self.total_iters
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * done)

    def __repr__(self):
        return (f"LinearLR(start_factor={self.start_factor}, end_factor={self.end_factor}, "
                f"total_iters={self.total_iters})")


class SequentialLR(_ClosedFormSchedule):
    """Schedules one after the other, as ``torch.optim.lr_scheduler.SequentialLR``: schedule k
    runs from epoch ``milestones[k - 1]`` on, counting its epochs from 0 there. A warm-up
    followed by cosine annealing::

        warmup = LinearLR(optimizer, start_factor=0.1, total_iters=5)
        cosine = CosineAnnealingLR(optimizer, T_max=85)
        schedule = SequentialLR(optimizer, [warmup, cosine], milestones=[5])

    The schedules must be closed forms (LinearLR, CosineAnnealingLR) made on this optimiser.
    """

    def __init__(self, optimizer, schedulers, milestones):
        schedulers, milestones = list(schedulers), [int(m) for m in milestones]
        if len(milestones) != len(schedulers) - 1 or milestones != sorted(milestones):
            raise ValueError(f"SequentialLR: needs one milestone between each two schedules, in "
                             f"order; got {len(schedulers)} schedules and milestones {milestones}")
        if not all(isinstance(s, _ClosedFormSchedule) and s.optimizer is optimizer for s in schedulers):
            raise ValueError("SequentialLR: every schedule must be a LinearLR, CosineAnnealingLR "
                             "or SequentialLR of this optimiser")
        self.schedulers, self.milestones = schedulers, milestones
        first_lr = schedulers[0].base_lr
        super().__init__(optimizer)
        for schedule in schedulers:  # all start from the optimiser's own rate, as in PyTorch
            schedule.base_lr = first_lr
        optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch):
        k = sum(epoch >= m for m in self.milestones)
        start = self.milestones[k - 1] if k else 0
        return self.schedulers[k].lr_at(epoch - start)

    def state_dict(self):
        return {"epoch": self.epoch, "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])
        for schedule, saved in zip(self.schedulers, state["schedulers"]):
            schedule.load_state_dict(saved)
