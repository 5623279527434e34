"""``gradcheck``: compare autograd's gradients with central finite differences in float64.

For a function ``fn(*tensors) -> Tensor`` the check forms the scalar
``L = sum(fn(*inputs) * W)`` with a fixed random weight ``W`` (so every output element
matters, with a different weight) and compares, for each input that requires grad,

* small inputs (at most ``max_elements`` elements): every element of dL/dx against
  (L(x + eps e_i) - L(x - eps e_i)) / (2 eps);
* large inputs: the directional derivative <dL/dx, d> against (L(x + eps d) - L(x - eps d)) / (2 eps)
  along ``num_directions`` random unit directions d.

A failure raises ``GradcheckError`` naming the input, the worst element (or direction), the two
values and the tolerance.
"""
import numpy as np

from . import backend
from .tensor import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    pass


def _scalar(fn, inputs, weight):
    with no_grad():
        out = fn(*inputs)
    return float(backend.to_numpy((out.data * weight).sum()))


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, max_elements=512, num_directions=8,
              seed=0, raise_exception=True):
    """Check ``fn``'s analytic gradients against finite differences; True if they agree.

    ``inputs`` is a sequence of Tensors; those with ``requires_grad`` are checked and must be
    float64 (finite differences in float32 are too coarse to check anything).
    """
    inputs = list(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True, so there is nothing to check")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype}; gradients are checked in "
                            "float64 (use .astype(np.float64) on the data)")
    rng = np.random.default_rng(seed)
    out = fn(*inputs)
    xp = backend.array_module(out.data)
    weight = xp.asarray(rng.standard_normal(out.shape))
    for i in checked:
        inputs[i].grad = None
    (out * Tensor(weight)).sum().backward()

    for i in checked:
        x = inputs[i]
        analytic = backend.to_numpy(x.grad.data) if x.grad is not None else np.zeros(x.shape)
        x.data = backend.array_module(x.data).ascontiguousarray(x.data)
        original = x.data.copy()
        flat = x.data.reshape(-1)  # a view: writing it perturbs x in place
        if x.size <= max_elements:
            numeric = np.empty(x.size)
            for j in range(x.size):
                saved = flat[j].item()
                flat[j] = saved + eps
                plus = _scalar(fn, inputs, weight)
                flat[j] = saved - eps
                minus = _scalar(fn, inputs, weight)
                flat[j] = saved
                numeric[j] = (plus - minus) / (2 * eps)
            analytic_flat = analytic.reshape(-1)
            error = np.abs(numeric - analytic_flat)
            bound = atol + rtol * np.abs(numeric)
            worst = int(np.argmax(error - bound))
            ok = error[worst] <= bound[worst]
            where = f"element {np.unravel_index(worst, x.shape)}"
            a_value, n_value = analytic_flat[worst], numeric[worst]
        else:
            ok, where, a_value, n_value = True, "", 0.0, 0.0
            worst_excess = -np.inf
            for k in range(num_directions):
                direction = rng.standard_normal(x.shape)
                direction /= np.linalg.norm(direction)
                d = xp.asarray(direction)
                x.data = original + eps * d
                plus = _scalar(fn, inputs, weight)
                x.data = original - eps * d
                minus = _scalar(fn, inputs, weight)
                x.data = original
                numeric_d = (plus - minus) / (2 * eps)
                analytic_d = float((analytic * direction).sum())
                excess = abs(numeric_d - analytic_d) - (atol + rtol * abs(numeric_d))
                if excess > worst_excess:
                    worst_excess = excess
                    where, a_value, n_value = f"random direction {k}", analytic_d, numeric_d
            ok = worst_excess <= 0
        x.data = original
        if not ok:
            message = (f"gradcheck failed for input {i} (shape {x.shape}) at {where}: "
                       f"autograd gives {a_value:.8g}, finite differences {n_value:.8g} "
                       f"(atol={atol}, rtol={rtol})")
            if raise_exception:
                raise GradcheckError(message)
            return False
    return True
