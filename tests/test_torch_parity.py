"""PyTorch's own sample inputs (the op database of ``torch.testing._internal``) run through
minidl's ops, in float64: the forward result and the gradient of every input that requires
one, against PyTorch's. Each sample ends as matched, wrong, crashed (an exception that is not
a minidl refusal) or refused (a TypeError/ValueError naming the op: an option minidl does not
have). Skipped without torch (and its test-support package ``expecttest``).

``python -m pytest tests/test_torch_parity.py -s`` prints the counts per op.
"""
from collections import Counter

import numpy as np
import pytest

import minidl
from minidl import ops

OPS = {
    # op_db name: (minidl op, the names its refusals start with)
    "nn.functional.conv2d": "conv2d",
    "nn.functional.max_pool2d": "max_pool2d",
    "nn.functional.local_response_norm": "local_response_norm",
    "nn.functional.relu": "relu",
    "sigmoid": "sigmoid",
    "nn.functional.linear": "linear",
    "softmax": "softmax",
    "log_softmax": "log_softmax",
    "nn.functional.cross_entropy": "cross_entropy",
    "nn.functional.binary_cross_entropy_with_logits": "binary_cross_entropy_with_logits",
    "nn.functional.dropout": "dropout",
}


def _minidl_call(name, x, args, kwargs):
    """minidl's op on PyTorch's sample (tensors already minidl Tensors), with PyTorch's defaults
    written out where minidl's differ (LRN: k=1 and alpha divided by the size)."""
    if name == "conv2d":
        return ops.conv2d(x, *args, **kwargs)
    if name == "max_pool2d":
        return ops.max_pool2d(x, **kwargs)
    if name == "local_response_norm":
        options = dict(dict(alpha=1e-4, beta=0.75, k=1.0), **kwargs)
        return ops.local_response_norm(x, *args, convention="caffe", **options)
    if name in ("relu", "sigmoid"):
        return getattr(ops, name)(x)
    if name in ("linear", "softmax", "log_softmax", "cross_entropy",
                "binary_cross_entropy_with_logits"):
        return getattr(ops, name)(x, *args, **kwargs)
    if name == "dropout":
        return ops.dropout(x, **kwargs)
    raise KeyError(name)


def _deterministic(name, sample):
    """Dropout's samples with random masks (0 < p < 1 while training) cannot be compared."""
    if name != "dropout":
        return True
    p, training = sample.kwargs.get("p", 0.5), sample.kwargs.get("training", True)
    return p in (0.0, 1.0) or not training


def _as_minidl(torch, value):
    if isinstance(value, torch.Tensor):
        array = value.detach().numpy().copy()
        if array.dtype.kind == "f":
            return minidl.Tensor(array, requires_grad=value.requires_grad)
        return array
    if isinstance(value, (list, tuple)):
        return type(value)(_as_minidl(torch, v) for v in value)
    if isinstance(value, dict):
        return {k: _as_minidl(torch, v) for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return {torch.float64: np.float64, torch.float32: np.float32}[value]
    return value


def _leaves(value):
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _close(a, b):
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-7, atol=1e-10, equal_nan=True)


def _run_sample(torch, op_info, name, sample):
    """'matched', 'wrong', 'crashed' or 'refused'; None when PyTorch itself rejects the sample."""
    inputs = [sample.input, *sample.args, *sample.kwargs.values()]
    leaves = [t for t in _leaves(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    try:
        expected = op_info.op(sample.input, *sample.args, **sample.kwargs)
    except Exception:
        return None
    first = expected[0] if isinstance(expected, tuple) else expected
    grad_output = torch.tensor(np.random.default_rng(0).standard_normal(tuple(first.shape)))
    expected_grads = []
    if leaves and first.requires_grad:
        expected_grads = torch.autograd.grad(first, leaves, grad_output, allow_unused=True)
    x = _as_minidl(torch, sample.input)
    args, kwargs = _as_minidl(torch, list(sample.args)), _as_minidl(torch, dict(sample.kwargs))
    mine_leaves = [t for t in _leaves([x, *args, *kwargs.values()])
                   if isinstance(t, minidl.Tensor) and t.requires_grad]
    try:
        out = _minidl_call(name, x, args, kwargs)
        mine_first = out[0] if isinstance(out, tuple) else out
        if mine_leaves and mine_first.requires_grad:
            mine_first.backward(grad_output.numpy())
    except (TypeError, ValueError) as error:
        return "refused" if str(error).startswith(f"{name}:") else "crashed"
    except Exception:
        return "crashed"
    outputs = zip(out, expected) if isinstance(expected, tuple) else [(out, expected)]
    if not all(_close(mine.numpy(), theirs.detach().numpy()) for mine, theirs in outputs):
        return "wrong"
    for mine, theirs in zip(mine_leaves, expected_grads):
        theirs = np.zeros(mine.shape) if theirs is None else theirs.numpy()
        got = np.zeros(mine.shape) if mine.grad is None else mine.grad.numpy()
        if not _close(got, theirs):
            return "wrong"
    return "matched"


def run_op_db():
    """{minidl op name: Counter of outcomes} over the float64 samples of every op in OPS."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("expecttest")  # torch.testing._internal needs it
    from torch.testing._internal.common_methods_invocations import op_db

    counts = {name: Counter() for name in OPS.values()}
    for op_info in op_db:
        name = OPS.get(op_info.name)
        if name is None:
            continue
        for sample in op_info.sample_inputs("cpu", torch.float64, requires_grad=True):
            if _deterministic(name, sample):
                outcome = _run_sample(torch, op_info, name, sample)
                if outcome is not None:
                    counts[name][outcome] += 1
    return counts


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # PyTorch's own
def test_pytorch_sample_inputs():
    counts = run_op_db()
    total = sum(counts.values(), Counter())
    for name, c in counts.items():
        print(f"{name:34s} " + "  ".join(f"{k} {c[k]}" for k in ("matched", "wrong", "crashed", "refused")))
    print(f"{'all':34s} " + "  ".join(f"{k} {total[k]}" for k in ("matched", "wrong", "crashed", "refused")))
    assert total["wrong"] == 0, {n: c["wrong"] for n, c in counts.items() if c["wrong"]}
    assert total["crashed"] == 0, {n: c["crashed"] for n, c in counts.items() if c["crashed"]}
    assert total["matched"] >= 0.9 * sum(total.values()), total
    assert all(c for c in counts.values()), "an op has no samples: op_db's names changed?"
