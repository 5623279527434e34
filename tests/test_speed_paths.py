"""The fast paths added for speed give the same results as the plain ones: conv2d (im2col and
Winograd) keeping its forward columns for backward (and giving their memory back), and SGD's
fused CPU update (bit-identical to the NumPy form). No timings here: benchmarks/bench.py measures those."""
import gc

import numpy as np
import pytest

import minidl
from minidl.layers import Parameter
from minidl.ops import workspace
from minidl.ops.conv import conv2d
from minidl.optim import SGD
import minidl.optim as optim_module


ALGORITHMS = ["im2col", "winograd"]  # both keep what forward computed from the input


def conv_grads(kernels, x, w, b, algorithm, retain=False, stride=1, padding=1, groups=2):
    xt, wt, bt = (kernels.tensor(a, requires_grad=True) for a in (x, w, b))
    y = conv2d(xt, wt, bt, stride=stride, padding=padding, groups=groups, algorithm=algorithm)
    g = np.random.default_rng(5).standard_normal(y.shape).astype(x.dtype)
    y.backward(kernels.tensor(g), retain_graph=retain)
    out = [kernels.numpy(a) for a in (y, xt.grad, wt.grad, bt.grad)]
    if retain:  # a second backward adds the same gradients again
        y.backward(kernels.tensor(g))
        out += [kernels.numpy(a) for a in (xt.grad, wt.grad, bt.grad)]
    return out


def inputs(dtype=np.float64):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((3, 4, 7, 6)).astype(dtype),
            rng.standard_normal((6, 2, 3, 3)).astype(dtype),
            rng.standard_normal(6).astype(dtype))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_kept_columns_give_the_same_gradients(kernels, monkeypatch, algorithm):
    x, w, b = inputs()
    kept = conv_grads(kernels, x, w, b, algorithm)
    monkeypatch.setattr(workspace, "KEEP_BYTES", 0)  # recompute them in backward
    recomputed = conv_grads(kernels, x, w, b, algorithm)
    for name, a, c in zip(("y", "dx", "dw", "db"), kept, recomputed):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_kept_columns_survive_a_retained_graph(kernels, algorithm):
    x, w, b = inputs()
    y, dx, dw, db, dx2, dw2, db2 = conv_grads(kernels, x, w, b, algorithm, retain=True)
    for name, once, twice in (("dx", dx, dx2), ("dw", dw, dw2), ("db", db, db2)):
        np.testing.assert_allclose(twice, 2 * once, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_kept_columns_are_given_back(kernels, algorithm):
    gc.collect()
    before = workspace.kept_bytes()
    x, w, b = inputs()
    xt, wt = kernels.tensor(x, requires_grad=True), kernels.tensor(w, requires_grad=True)
    y = conv2d(xt, wt, None, padding=1, groups=2, algorithm=algorithm)
    assert workspace.kept_bytes() > before  # kept for backward
    y.backward(kernels.tensor(np.ones(y.shape)))
    gc.collect()
    assert workspace.kept_bytes() == before  # freed with the graph
    y = conv2d(xt, wt, None, padding=1, groups=2, algorithm=algorithm)
    del y  # a graph dropped without backward gives them back too
    gc.collect()
    assert workspace.kept_bytes() == before
    with minidl.no_grad():
        conv2d(xt, wt, None, padding=1, groups=2, algorithm=algorithm)
        assert workspace.kept_bytes() == before  # nothing kept without a graph


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0005, 0.0])
def test_fused_sgd_is_bit_identical_to_numpy(monkeypatch, dtype, weight_decay):
    rng = np.random.default_rng(1)
    shapes = [(300, 301), (7,), (4, 3, 2, 2)]  # one large enough for the parallel kernel
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]

    def run(fused):
        monkeypatch.setattr(optim_module, "_fusable",
                            optim_module._fusable if fused else lambda *a: False)
        params = [Parameter(a.copy()) for a in start]
        opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=weight_decay)
        for step, gs in enumerate(grads):
            opt.lr = [0.1, 0.1, 0.01][step]
            for p, g in zip(params, gs):
                p.grad = minidl.Tensor(g)
            opt.step()
        return [p.data for p in params], opt.velocities

    (w1, v1), (w2, v2) = run(True), run(False)
    for a, c in zip(w1 + v1, w2 + v2):
        assert a.dtype == dtype and np.array_equal(a, c)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("has_bias", [True, False])
def test_fused_relu_equals_conv_then_relu(kernels, has_bias, algorithm):
    x, w, b = inputs()
    b = b if has_bias else None
    results = []
    for fused in (True, False):
        xt, wt = kernels.tensor(x, requires_grad=True), kernels.tensor(w, requires_grad=True)
        bt = kernels.tensor(b, requires_grad=True) if has_bias else None
        if fused:
            y = conv2d(xt, wt, bt, padding=1, groups=2, relu=True, algorithm=algorithm)
        else:
            y = minidl.ops.relu(conv2d(xt, wt, bt, padding=1, groups=2, algorithm=algorithm))
        g = np.random.default_rng(3).standard_normal(y.shape)
        y.backward(kernels.tensor(g))
        results.append([kernels.numpy(a) for a in (y, xt.grad, wt.grad)]
                       + ([kernels.numpy(bt.grad)] if has_bias else []))
    assert (results[0][0] == 0).mean() > 0.2  # the ReLU did cut something
    for name, a, c in zip(("y", "dx", "dw", "db"), *results):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fused_relu_gradcheck(kernels, algorithm):
    x, w, b = inputs()
    tensors = [kernels.tensor(a, requires_grad=True) for a in (x, w, b)]
    assert minidl.gradcheck(
        lambda *t: conv2d(*t, padding=1, groups=2, relu=True, algorithm=algorithm), tensors)


def test_fused_relu_keeps_float32_and_rejects_non_bools():
    x, w, b = (minidl.Tensor(a.astype(np.float32)) for a in inputs())
    assert conv2d(x, w, b, padding=1, groups=2, relu=True).dtype == np.float32
    with pytest.raises(TypeError, match="conv2d: relu must be True or False"):
        conv2d(x, w, b, padding=1, groups=2, relu="yes")


def test_sequential_fuses_conv_relu_pairs_with_the_same_results(kernels):
    """Sequential runs Conv2d + ReLU as conv2d(relu=True): same outputs and gradients as the
    layers run one by one, and no separate ReLU op is recorded."""
    from minidl.layers import Conv2d, MaxPool2d, ReLU, Sequential

    minidl.manual_seed(3)
    model = kernels.module(Sequential(Conv2d(2, 4, 3, padding=1, dtype=np.float64), ReLU(),  # Winograd
                                      Conv2d(4, 3, 5, padding=2, dtype=np.float64), ReLU(),  # im2col
                                      MaxPool2d(2)))
    x = np.random.default_rng(4).standard_normal((2, 2, 6, 6))
    results = []
    for fused in (True, False):
        xt = kernels.tensor(x, requires_grad=True)
        model.zero_grad()
        with minidl.profile() as prof:
            if fused:
                y = model(xt)
            else:
                y = xt
                for layer in model:
                    y = layer(y)
            y.backward(kernels.tensor(np.ones(y.shape)))
        relu_ops = sum(1 for key in prof.seconds if key[0] == "ReLUFunction")
        assert relu_ops == (0 if fused else 4)  # forward and backward of each ReLU
        results.append([kernels.numpy(a) for a in (y, xt.grad, model[0].weight.grad,
                                                  model[2].weight.grad, model[2].bias.grad)])
    for name, a, c in zip(("y", "dx", "dw0", "dw2", "db2"), *results):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12, err_msg=name)


def test_a_captured_layer_is_not_fused():
    """Tapping a conv gives its pre-activation output (the pair then runs unfused)."""
    from minidl.layers import Conv2d, ReLU, Sequential
    from minidl.models import forward_with

    minidl.manual_seed(3)
    model = Sequential(Conv2d(2, 4, 3, padding=1), ReLU())
    x = minidl.Tensor(np.random.default_rng(4).standard_normal((2, 2, 6, 6)).astype(np.float32))
    out = forward_with(model, x, ["0", "1"])
    assert (out["0"].numpy() < 0).any()  # before the ReLU
    np.testing.assert_array_equal(out["1"].numpy(), np.maximum(out["0"].numpy(), 0))
    np.testing.assert_array_equal(out["output"].numpy(), model(x).numpy())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_an_empty_batch_gives_zero_parameter_gradients(kernels, algorithm):
    """No chunk runs for a batch of 0 images: the weight and bias gradients must still be 0."""
    _, w, b = inputs()
    xt = kernels.tensor(np.zeros((0, 4, 7, 6)), requires_grad=True)
    wt, bt = kernels.tensor(w, requires_grad=True), kernels.tensor(b, requires_grad=True)
    y = conv2d(xt, wt, bt, padding=1, groups=2, algorithm=algorithm)
    y.backward(kernels.tensor(np.zeros(y.shape)))
    assert kernels.numpy(xt.grad).shape == (0, 4, 7, 6)
    np.testing.assert_array_equal(kernels.numpy(wt.grad), np.zeros_like(w))
    np.testing.assert_array_equal(kernels.numpy(bt.grad), np.zeros_like(b))


def test_fusion_rule_subclasses_and_hooks():
    """A subclass of Conv2d or ReLU that keeps the base forward fuses; one that overrides
    forward does not (its own code must run); a forward hook on either module stops the
    fusion, and a hook that returns a value replaces the module's output."""
    from minidl.layers import Conv2d, ReLU, Sequential

    class NamedConv(Conv2d):
        pass

    class LeakyReLU(ReLU):
        def forward(self, x):
            return x * 0.5

    def relu_ops(model, x):
        with minidl.profile() as prof:
            y = model(x)
        return sum(1 for key in prof.seconds if key[0] == "ReLUFunction"), y

    minidl.manual_seed(0)
    x = minidl.Tensor(np.random.default_rng(1).standard_normal((1, 2, 5, 5)))
    fused = Sequential(NamedConv(2, 3, 3, padding=1, dtype=np.float64), ReLU())
    assert relu_ops(fused, x)[0] == 0
    own_forward = Sequential(Conv2d(2, 3, 3, padding=1, dtype=np.float64), LeakyReLU())
    _, y = relu_ops(own_forward, x)
    np.testing.assert_allclose(y.data, 0.5 * own_forward[0](x).data)
    calls = []
    handle = fused[0].register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    count, _ = relu_ops(fused, x)
    assert count == 1 and calls == [(1, 3, 5, 5)]  # unfused: the hook saw the conv's own output
    handle.remove()
    fused[1].register_forward_hook(lambda module, inputs, output: output * 0 - 1)
    np.testing.assert_array_equal(fused(x).data, -np.ones((1, 3, 5, 5)))
