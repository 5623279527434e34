"""Looking inside a model: intermediate activations by layer name, and the summary table.

Both rest on one small mechanism, ``capture``: for the duration of a ``with`` block it
registers a forward hook (``Module.register_forward_hook``) on each named sub-module that
records what the module returns. Any ``Module`` works -- a ``Sequential``, AlexNet, a
hand-made model -- because nothing is asked of the model beyond its ``named_modules()``.
"""
import contextlib
from collections import OrderedDict

import numpy as np

from .. import backend
from ..tensor import no_grad
from ..tensor import Tensor


def _leaf_names(model):
    """Names of the modules that hold no sub-modules: the layers that do the work (a module
    registered under two names is listed once, under the first)."""
    names, seen = [], set()
    for name, m in model.named_modules():
        if name and not m._modules and id(m) not in seen:
            seen.add(id(m))
            names.append(name)
    return names


def _resolve(model, names):
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or n == ""]
    if unknown:
        raise ValueError(f"{type(model).__name__}: no layer named {', '.join(map(repr, unknown))}; "
                         f"layers are: {', '.join(n for n in modules if n)}")
    return [(n, modules[n]) for n in names]


@contextlib.contextmanager
def capture(model, names, transform=None):
    """Record the output of each layer in ``names`` while the block runs.

    Yields an ``OrderedDict`` filled, in call order, with ``name -> output Tensor`` (a layer
    called twice keeps its last output). ``transform(name, output)``, if given, may return a
    replacement output that the rest of the model then sees -- Grad-CAM uses it to make the
    chosen activation a leaf of the graph, so that backward stops there and fills its ``.grad``.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"capture: layer names repeat in {names}")
    outputs = OrderedDict()
    handles = []

    def recorder(name):
        def hook(module, inputs, out):
            if transform is not None:
                out = transform(name, out)
            outputs.pop(name, None)
            outputs[name] = out
            return out
        return hook

    try:
        for name, module in _resolve(model, names):
            handles.append(module.register_forward_hook(recorder(name)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def forward_with(model, x, taps):
    """Run ``model(x)`` and return ``{tap: activation, ..., "output": model(x)}``.

    Each tap names a sub-module (``"conv1"``, ``"relu5"``, ``"features.3"``...); its value is
    that module's output Tensor, part of the same graph as the output when grad is enabled.
    """
    if isinstance(taps, str):
        taps = [taps]
    taps = list(taps)
    if "output" in taps:
        raise ValueError("forward_with: 'output' is always returned; it is not a layer name")
    with capture(model, taps) as outputs:
        out = model(x)
    missing = [t for t in taps if t not in outputs]
    if missing:
        raise RuntimeError(f"forward_with: layer(s) {missing} exist but were not called by "
                           f"{type(model).__name__}.forward")
    result = OrderedDict((t, outputs[t]) for t in taps)
    result["output"] = out
    return result


# Layers that change no shape and hold no weights: the summary folds them into the row of the
# layer before, as the slides do ("Conv2D + ReLU").
_FOLDED = ("ReLU", "Sigmoid", "Dropout")


class ModelSummary:
    """The summary table: ``rows`` of (name, op, output shape without batch, parameters)."""

    def __init__(self, model_name, input_shape, rows, total_params, trainable_params):
        self.model_name = model_name
        self.input_shape = tuple(input_shape)
        self.rows = rows
        self.total_params = total_params
        self.trainable_params = trainable_params

    def row(self, name):
        """The row of the layer called ``name`` (KeyError if absent)."""
        for r in self.rows:
            if r[0] == name:
                return r
        raise KeyError(f"no row named {name!r}; rows are {[r[0] for r in self.rows]}")

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def __str__(self):
        header = ("Layer", "Op", "Output shape", "Param #")
        body = [(name, op, "(None, " + ", ".join(map(str, shape)) + ")", f"{params:,}")
                for name, op, shape, params in self.rows]
        widths = [max(len(r[i]) for r in [header] + body) for i in range(4)]

        def line(cells):
            return "  ".join([cells[0].ljust(widths[0]), cells[1].ljust(widths[1]),
                              cells[2].ljust(widths[2]), cells[3].rjust(widths[3])])

        rule = "-" * len(line(header))
        text = [f"{self.model_name}, input (None, " + ", ".join(map(str, self.input_shape)) + ")",
                rule, line(header), "=" * len(rule)]
        text += [line(r) for r in body]
        text += ["=" * len(rule),
                 f"Total params: {self.total_params:,}",
                 f"Trainable params: {self.trainable_params:,}",
                 f"Non-trainable params: {self.total_params - self.trainable_params:,}"]
        return "\n".join(text)

    __repr__ = __str__


def summary(model, input_shape, fold_activations=True, print_table=True):
    """Print and return the layer table of ``model`` for one input of ``input_shape`` (C, H, W).

    Runs one forward pass on zeros, batch 1, under ``no_grad`` and in eval mode (the model's
    train/eval flags are restored afterwards), recording the output shape of every layer that
    has no sub-modules, in the order they are called. With ``fold_activations`` ReLU, Sigmoid
    and Dropout are folded into the row before (op ``"Conv2d + ReLU"``), like the slides' table.
    """
    input_shape = tuple(int(n) for n in input_shape)
    x = Tensor(backend.to_device(np.zeros((1,) + input_shape, dtype=model.dtype), model.device))
    modules = dict(model.named_modules())
    calls = []

    def record(name, out):
        calls.append((name, out.shape))
        return out

    with model.evaluating(), no_grad(), capture(model, _leaf_names(model), transform=record):
        model(x)

    rows = []
    for name, shape in calls:
        module = modules[name]
        op = type(module).__name__
        n_params = sum(p.size for p in module._parameters.values() if p is not None)
        if fold_activations and op in _FOLDED and rows and not n_params:
            prev = rows[-1]
            rows[-1] = (prev[0], f"{prev[1]} + {op}", tuple(shape[1:]), prev[3])
        else:
            rows.append((name, op, tuple(shape[1:]), n_params))

    total = model.num_parameters()
    trainable = sum(p.size for p in model.parameters() if p.requires_grad)
    result = ModelSummary(type(model).__name__, input_shape, rows, total, trainable)
    if print_table:
        print(result)
    return result
