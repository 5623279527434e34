"""SGD (the paper's rule, checked against plain Python), its L2/L1 terms, its state, and the
learning-rate schedules."""
import math
import os
import tempfile

import numpy as np
import pytest

import minidl
import minidl.optim
from minidl import backend, checkpoint
from minidl.layers import Parameter
from minidl.optim import SGD, ReduceLROnPlateau, StepLR


def python_sgd(w, grads_of, lrs, momentum, weight_decay, l1=0.0):
    """The paper's update (docs/MODELS.md) in plain Python floats: one list per parameter element.

    ``grads_of(w)`` gives the gradient at ``w``; ``lrs`` the learning rate of each step.
    The expression is written exactly as the rule is, left to right.
    """
    w, v, history = list(w), [0.0] * len(w), []
    for lr in lrs:
        g = grads_of(w)
        for i in range(len(w)):
            gi = g[i] + (l1 * (1.0 if w[i] > 0 else -1.0 if w[i] < 0 else 0.0) if l1 else 0.0)
            v[i] = momentum * v[i] - weight_decay * lr * w[i] - lr * gi
            w[i] = w[i] + v[i]
        history.append(list(w))
    return history


def quadratic_grad(w):
    # d/dw of sum(0.5 * (w - t)^2 * s) with a different curvature per element
    targets, scales = [1.0, -2.0, 0.5, 0.0], [1.0, 0.3, 2.0, 0.7]
    return [s * (x - t) for x, t, s in zip(w, targets, scales)]


def run_minidl_sgd(w0, lrs, dtype=np.float64, **options):
    p = Parameter(np.array(w0, dtype=dtype))
    opt = SGD([p], lr=lrs[0], **options)
    history = []
    for lr in lrs:
        opt.lr = lr
        g = np.array(quadratic_grad(p.data.astype(np.float64).tolist()), dtype=dtype)
        p.grad = minidl.Tensor(g)
        opt.step()
        history.append(p.data.copy())
    return p, opt, history


W0 = [0.3, -1.2, 2.0, 0.0]
LRS = [0.1, 0.1, 0.1, 0.01, 0.01, 0.001]  # two drops by 10, as ReduceLROnPlateau makes them


def test_sgd_matches_python_over_steps_with_lr_drops():
    expected = python_sgd(W0, quadratic_grad, LRS, momentum=0.9, weight_decay=0.0005)
    _, _, got = run_minidl_sgd(W0, LRS)
    for step, (e, g) in enumerate(zip(expected, got)):
        # Same operations in the same order on float64: equal to the last bit.
        assert g.tolist() == e, f"step {step}: {g.tolist()} != {e}"


def test_sgd_default_hyper_parameters_are_the_papers():
    opt = SGD([Parameter(np.zeros(2, np.float32))])
    assert (opt.lr, opt.momentum, opt.weight_decay, opt.l1) == (0.01, 0.9, 0.0005, 0.0)


def test_weight_decay_alone_shrinks_weights_geometrically_with_momentum():
    # Zero data gradient: only the L2 term -weight_decay * lr * w moves the weights.
    lr, wd = 0.5, 0.1
    expected = python_sgd([2.0, -4.0], lambda w: [0.0, 0.0], [lr] * 5, momentum=0.9, weight_decay=wd)
    p = Parameter(np.array([2.0, -4.0]))
    opt = SGD([p], lr=lr, momentum=0.9, weight_decay=wd)
    for e in expected:
        p.grad = minidl.Tensor(np.zeros(2))
        opt.step()
        assert p.data.tolist() == e
    assert abs(p.data[0]) < 2.0 and abs(p.data[1]) < 4.0
    # Without momentum one step is exactly w * (1 - wd * lr).
    q = Parameter(np.array([2.0, -4.0]))
    opt = SGD([q], lr=lr, momentum=0.0, weight_decay=wd)
    q.grad = minidl.Tensor(np.zeros(2))
    opt.step()
    assert q.data.tolist() == [2.0 - wd * lr * 2.0, -4.0 + wd * lr * 4.0]


def test_l1_adds_sign_of_the_weight_to_the_gradient():
    expected = python_sgd(W0, quadratic_grad, LRS, momentum=0.9, weight_decay=0.0005, l1=0.05)
    _, _, got = run_minidl_sgd(W0, LRS, l1=0.05)
    for e, g in zip(expected, got):
        assert g.tolist() == e
    # The zero weight: sign(0) = 0, so L1 does not push it on the first step.
    p = Parameter(np.array([0.0, 1.0, -1.0]))
    opt = SGD([p], lr=0.1, momentum=0.0, weight_decay=0.0, l1=0.5)
    p.grad = minidl.Tensor(np.zeros(3))
    opt.step()
    assert p.data.tolist() == [0.0, 1.0 - 0.05, -1.0 + 0.05]


def test_lr_inside_velocity_differs_from_pytorch_only_after_an_lr_change():
    torch = pytest.importorskip("torch")
    w = torch.tensor(W0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=LRS[0], momentum=0.9, weight_decay=0.0005)
    _, _, ours = run_minidl_sgd(W0, LRS)
    for step, lr in enumerate(LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = torch.tensor(quadratic_grad(w.detach().tolist()), dtype=torch.float64)
        opt.step()
        if step < 3:  # constant lr: the same optimiser
            np.testing.assert_allclose(ours[step], w.detach().numpy(), rtol=1e-12, atol=1e-14)
    # After the drops the accumulated momentum is treated differently.
    assert np.abs(ours[-1] - w.detach().numpy()).max() > 1e-4


def test_float32_in_place_and_velocity_on_the_parameter():
    p = Parameter(np.ones((3, 2), np.float32))
    data_before = p.data
    opt = SGD([p], lr=0.1)
    p.grad = minidl.Tensor(np.full((3, 2), 0.5, np.float32))
    opt.step()
    assert p.data is data_before and p.data.dtype == np.float32
    assert opt.velocities[0].dtype == np.float32
    expected = np.float32(1.0) + (np.float32(0.0) - np.float32(0.0005 * 0.1) * np.float32(1.0)
                                  - np.float32(0.1) * np.float32(0.5))
    np.testing.assert_allclose(p.data, expected, rtol=1e-6)


def test_step_does_not_touch_the_gradient_array():
    p = Parameter(np.array([1.0, -1.0]))
    g = np.array([0.5, 0.5])
    p.grad = minidl.Tensor(g)
    SGD([p], lr=0.1, l1=0.1).step()
    assert g.tolist() == [0.5, 0.5]


def test_parameters_without_gradient_are_left_alone_and_zero_grad_clears():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    opt = SGD([a, b], lr=0.1)
    a.grad = minidl.Tensor(np.ones(2))
    opt.step()
    assert b.data.tolist() == [1.0, 1.0] and opt.velocities[1] is None
    assert a.data[0] < 1.0
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_sgd_with_autograd_gradients_decreases_a_loss():
    rng = np.random.default_rng(0)
    x = minidl.Tensor(rng.normal(size=(32, 4)))
    t = minidl.Tensor(x.data @ np.array([[1.0], [-2.0], [0.5], [3.0]]))
    w = Parameter(np.zeros((4, 1)))
    opt = SGD([w], lr=0.05, momentum=0.9, weight_decay=0.0)
    losses = []
    for _ in range(150):
        loss = ((x @ w - t) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-3 * losses[0]


def test_state_dict_round_trip_continues_identically(tmp_path):
    p, opt, _ = run_minidl_sgd(W0, LRS[:3], l1=0.01)
    checkpoint.save(tmp_path / "opt.npz", optimizer=opt.state_dict(), w=p.data)
    state = checkpoint.load(tmp_path / "opt.npz")
    assert isinstance(state["optimizer"]["velocities"][0], np.ndarray)

    q = Parameter(state["w"].copy())
    other = SGD([q], lr=123.0, momentum=0.0, weight_decay=0.0)
    other.load_state_dict(state["optimizer"])
    assert (other.lr, other.momentum, other.weight_decay, other.l1, other.steps) == (
        opt.lr, opt.momentum, opt.weight_decay, opt.l1, 3)
    for _ in range(3):
        for param, o in ((p, opt), (q, other)):
            param.grad = minidl.Tensor(np.array(quadratic_grad(param.data.tolist())))
            o.step()
    assert p.data.tolist() == q.data.tolist()


def test_bad_arguments_are_named():
    p = Parameter(np.ones(2))
    with pytest.raises(ValueError, match="SGD: lr must be a finite number >= 0"):
        SGD([p], lr=-0.1)
    with pytest.raises(TypeError, match="SGD: momentum must be a number"):
        SGD([p], momentum="fast")
    with pytest.raises(ValueError, match="SGD: got an empty list"):
        SGD([])
    with pytest.raises(TypeError, match="SGD: parameter 0 is a ndarray"):
        SGD([np.ones(2)])
    opt = SGD([p])
    with pytest.raises(ValueError, match="SGD: lr"):
        opt.lr = float("nan")
    with pytest.raises(ValueError, match="SGD.load_state_dict: the state has 2 velocities for 1"):
        opt.load_state_dict({**opt.state_dict(), "velocities": [None, None]})
    with pytest.raises(ValueError, match=r"SGD.load_state_dict: velocity 0 has shape \(3,\)"):
        opt.load_state_dict({**opt.state_dict(), "velocities": [np.zeros(3)]})
    p.grad = minidl.Tensor(np.ones(3))
    with pytest.raises(RuntimeError, match=r"SGD: parameter 0 of shape \(2,\)"):
        opt.step()


# -- schedules -----------------------------------------------------------------------------------
def lr_trace(scheduler, optimizer, metrics):
    trace = []
    for m in metrics:
        scheduler.step(m)
        trace.append(optimizer.lr)
    return trace


def test_plateau_divides_by_ten_after_patience_bad_epochs_at_most_three_times():
    opt = SGD([Parameter(np.ones(1))], lr=0.01)
    sched = ReduceLROnPlateau(opt, patience=2)
    errors = [0.9, 0.8, 0.8, 0.85,   # two epochs without improvement -> 1e-3
              0.7, 0.75, 0.7,        # 0.7 is not better than 0.7 -> 1e-4
              0.71, 0.72,            # -> 1e-5 (third reduction)
              0.9, 0.9, 0.9, 0.9]    # no more reductions
    trace = lr_trace(sched, opt, errors)
    expected = [0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5]
    assert trace == pytest.approx(expected, rel=1e-12)
    assert sched.reductions == 3 and sched.exhausted


def test_plateau_mode_max_threshold_min_lr_and_nan():
    opt = SGD([Parameter(np.ones(1))], lr=1.0)
    sched = ReduceLROnPlateau(opt, factor=0.5, patience=1, max_reductions=None, mode="max",
                              threshold=0.01, min_lr=0.3)
    trace = lr_trace(sched, opt, [0.5, 0.505, 0.6, float("nan"), 0.7, 0.1, 0.1])
    # 0.505 is within the threshold (bad); nan is bad; reductions floor at min_lr.
    assert trace == [1.0, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3]


def test_plateau_state_dict_round_trip():
    opt = SGD([Parameter(np.ones(1))], lr=0.01)
    sched = ReduceLROnPlateau(opt, patience=2)
    lr_trace(sched, opt, [0.5, 0.6, 0.6, 0.7])
    other_opt = SGD([Parameter(np.ones(1))], lr=0.01)
    other = ReduceLROnPlateau(other_opt, patience=7)
    other.load_state_dict(checkpoint_round_trip(sched.state_dict()))
    other_opt.lr = opt.lr
    assert lr_trace(other, other_opt, [0.6, 0.6, 0.4]) == lr_trace(sched, opt, [0.6, 0.6, 0.4])


def checkpoint_round_trip(state):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "s.npz")
        checkpoint.save(path, state=state)
        return checkpoint.load(path)["state"]


def test_plateau_bad_arguments():
    opt = SGD([Parameter(np.ones(1))])
    with pytest.raises(ValueError, match="ReduceLROnPlateau: mode must be 'min' or 'max'"):
        ReduceLROnPlateau(opt, mode="lowest")
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau: factor must be in \(0, 1\)"):
        ReduceLROnPlateau(opt, factor=10)
    with pytest.raises(ValueError, match="ReduceLROnPlateau: patience must be an integer >= 1"):
        ReduceLROnPlateau(opt, patience=0)


def test_step_lr():
    opt = SGD([Parameter(np.ones(1))], lr=0.1)
    sched = StepLR(opt, step_size=3, gamma=0.1)
    trace = []
    for _ in range(8):
        trace.append(opt.lr)
        sched.step()
    assert trace == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001], rel=1e-12)
    other_opt = SGD([Parameter(np.ones(1))], lr=0.5)
    other = StepLR(other_opt, step_size=1)
    other.load_state_dict(checkpoint_round_trip(sched.state_dict()))
    other_opt.lr = opt.lr
    sched.step(), other.step()
    assert other_opt.lr == opt.lr == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="StepLR: step_size must be an integer >= 1"):
        StepLR(opt, step_size=0)


@pytest.mark.gpu
def test_sgd_on_the_gpu_matches_the_cpu():
    if not backend.cuda_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    _, _, cpu = run_minidl_sgd(W0, LRS, dtype=np.float32, l1=0.01)
    p = Parameter(np.array(W0, np.float32)).to("cuda")
    p = Parameter(p.data)
    opt = SGD([p], lr=LRS[0], l1=0.01)
    for step, lr in enumerate(LRS):
        opt.lr = lr
        g = np.array(quadratic_grad(backend.to_numpy(p.data).astype(np.float64).tolist()), np.float32)
        p.grad = minidl.Tensor(backend.to_device(g, "cuda"))
        opt.step()
        assert p.device == "cuda" and backend.device_of(opt.velocities[0]) == "cuda"
        np.testing.assert_allclose(backend.to_numpy(p.data), cpu[step], rtol=1e-6, atol=1e-7)
    state = opt.state_dict()
    assert isinstance(state["velocities"][0], np.ndarray)
    assert math.isfinite(float(state["velocities"][0][0]))


# -- Adam and AdamW ------------------------------------------------------------------------------

ADAM_CASES = [("Adam", {}), ("Adam", dict(weight_decay=0.1, amsgrad=True)),
              ("AdamW", dict(lr=0.01)), ("Adam", dict(betas=(0.3, 0.9), eps=1e-6))]
ADAM_IDS = ["adam", "decay-amsgrad", "adamw", "small-beta1"]


def adam_problem(steps=60):
    rng = np.random.default_rng(0)
    start = [rng.standard_normal((40, 30)), rng.standard_normal(7)]
    grads = [[rng.standard_normal(a.shape) for a in start] for _ in range(steps)]
    return start, grads


def run_minidl(name, options, start, grads, state=None):
    params = [Parameter(a.copy()) for a in start]
    optimizer = getattr(minidl.optim, name)(params, **options)
    if state is not None:
        params_state, optimizer_state = state
        for p, a in zip(params, params_state):
            p.data = a.copy()
        optimizer.load_state_dict(optimizer_state)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = minidl.Tensor(g)
        optimizer.step()
    return [p.numpy() for p in params], optimizer


@pytest.mark.parametrize("name, options", ADAM_CASES, ids=ADAM_IDS)
def test_adam_is_pytorchs_update_bit_for_bit(kernels, name, options, monkeypatch):
    # PyTorch's CPU sqrt comes from MKL here and is not always correctly rounded (it differs
    # from IEEE sqrt in the last bit for about 1% of values); with a correctly rounded sqrt
    # everything else -- the fused multiply-adds, the order of operations -- must agree to the
    # bit, step after step.
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.Tensor, "sqrt", lambda t: torch.from_numpy(np.sqrt(t.detach().numpy())))
    start, grads = adam_problem()
    params = [kernels.tensor(a.copy(), requires_grad=True) for a in start]
    optimizer = getattr(minidl.optim, name)(params, **options)
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in start]
    torch_optimizer = getattr(torch.optim, name)(theirs, **options)
    for step_grads in grads:
        for p, t, g in zip(params, theirs, step_grads):
            p.grad, t.grad = kernels.tensor(g), torch.tensor(g)
        optimizer.step()
        torch_optimizer.step()
    for p, t in zip(params, theirs):
        np.testing.assert_array_equal(kernels.numpy(p), t.detach().numpy())


@pytest.mark.parametrize("name, options", ADAM_CASES[:3], ids=ADAM_IDS[:3])
def test_adam_matches_pytorch_with_its_own_sqrt(name, options):
    torch = pytest.importorskip("torch")
    start, grads = adam_problem()
    mine, _ = run_minidl(name, options, start, grads)
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in start]
    torch_optimizer = getattr(torch.optim, name)(theirs, **options)
    for step_grads in grads:
        for t, g in zip(theirs, step_grads):
            t.grad = torch.tensor(g)
        torch_optimizer.step()
    for a, t in zip(mine, theirs):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-13, atol=1e-15)


def test_adam_resumes_exactly_from_a_checkpoint(tmp_path):
    start, grads = adam_problem(20)
    straight, _ = run_minidl("AdamW", dict(amsgrad=True), start, grads)
    halfway, optimizer = run_minidl("AdamW", dict(amsgrad=True), start, grads[:10])
    path = tmp_path / "adam.npz"
    checkpoint.save(path, params=halfway, optimizer=optimizer.state_dict())
    saved = checkpoint.load(path)
    resumed, _ = run_minidl("AdamW", dict(amsgrad=True), start, grads[10:],
                            state=(saved["params"], saved["optimizer"]))
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)


def test_adam_float32_skips_parameters_without_gradient_and_bad_arguments():
    w, frozen = Parameter(np.ones(3, np.float32)), Parameter(np.ones(2, np.float32))
    optimizer = minidl.optim.Adam([w, frozen], lr=0.1)
    w.grad = minidl.Tensor(np.ones(3, np.float32))
    optimizer.step()
    assert w.dtype == np.float32 and np.allclose(w.numpy(), 0.9, rtol=1e-6)
    assert (frozen.numpy() == 1).all() and optimizer.state[1] is None
    with pytest.raises(ValueError, match=r"Adam: betas\[1\] must be in \[0, 1\), got 1.0"):
        minidl.optim.Adam([w], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="AdamW: lr must be a finite number >= 0"):
        minidl.optim.AdamW([w], lr=-1)


@pytest.mark.skipif(not __import__("minidl.testing.nvrtc", fromlist=["x"]).available(),
                    reason="NVRTC not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optim_cu_compiles_under_nvrtc(dtype):
    from minidl.testing import nvrtc
    ptx = nvrtc.compile_file(os.path.join(os.path.dirname(minidl.__file__), "optim.cu"), dtype)
    assert ".entry adam_update(" in ptx


# -- cosine annealing, linear warm-up, the two in sequence ---------------------------------------

def test_schedules_match_pytorch_and_resume():
    torch = pytest.importorskip("torch")
    from minidl.optim import CosineAnnealingLR, LinearLR, SequentialLR

    def mine():
        optimizer = minidl.optim.AdamW([Parameter(np.zeros(1))], lr=0.1)
        warmup = LinearLR(optimizer, start_factor=0.1, total_iters=3)
        cosine = CosineAnnealingLR(optimizer, T_max=6, eta_min=0.001)
        return optimizer, SequentialLR(optimizer, [warmup, cosine], milestones=[3])

    p = torch.zeros(1, requires_grad=True)
    torch_optimizer = torch.optim.AdamW([p], lr=0.1)
    torch_schedule = torch.optim.lr_scheduler.SequentialLR(
        torch_optimizer, [torch.optim.lr_scheduler.LinearLR(torch_optimizer, 0.1, total_iters=3),
                          torch.optim.lr_scheduler.CosineAnnealingLR(torch_optimizer, 6, 0.001)],
        milestones=[3])
    optimizer, schedule = mine()
    rates, expected = [optimizer.lr], [torch_optimizer.param_groups[0]["lr"]]
    for epoch in range(12):
        if epoch == 5:  # resume from the state halfway
            state = schedule.state_dict()
            optimizer, schedule = mine()
            schedule.load_state_dict(state)
        torch_optimizer.step()
        torch_schedule.step()
        schedule.step()
        rates.append(optimizer.lr)
        expected.append(torch_optimizer.param_groups[0]["lr"])
    np.testing.assert_allclose(rates, expected, rtol=1e-12)


def test_fit_with_adamw_warmup_cosine_and_batch_norm_resumes_exactly(tmp_path):
    from minidl import layers, ops
    from minidl.data import ArrayDataset, DataLoader
    from minidl.optim import AdamW, CosineAnnealingLR, LinearLR, SequentialLR
    from minidl.train import fit

    rng = np.random.default_rng(0)
    images = rng.standard_normal((40, 2, 6, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 40)

    def run(epochs, out, resume=False):
        minidl.manual_seed(0)
        model = layers.Sequential(layers.Conv2d(2, 4, 3), layers.BatchNorm2d(4), layers.ReLU(),
                                  layers.Flatten(), layers.Dropout(0.2), layers.Linear(64, 3))
        optimizer = AdamW(model.parameters(), lr=0.01)
        schedule = SequentialLR(optimizer, [LinearLR(optimizer, 0.2, total_iters=2),
                                            CosineAnnealingLR(optimizer, T_max=3)], milestones=[2])
        loader = DataLoader(ArrayDataset(images, labels, num_classes=3), 8, shuffle=True, seed=1)
        fit(model, ops.cross_entropy, optimizer, loader, epochs, scheduler=schedule, out_dir=out,
            resume=resume, progress=False)
        return model.state_dict(), optimizer.lr

    straight, lr = run(4, tmp_path / "straight")
    run(2, tmp_path / "split")
    resumed, resumed_lr = run(4, tmp_path / "split", resume=True)
    assert resumed_lr == lr and list(resumed) == list(straight)
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)
    assert straight["1.num_batches_tracked"] == 4 * 5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_is_one_fused_update_with_the_same_bits_on_every_kernel_path(kernels, dtype):
    """SGD's update is one kernel per parameter (Numba, or optim.cu on the GPU and the shim)
    computing the rule's operations in order, each product rounded on its own: the same bits
    as the plain NumPy form, on every path, through lr changes, decay and l1."""
    rng = np.random.default_rng(21)
    w0 = rng.standard_normal((7, 5)).astype(dtype)
    grads = [rng.standard_normal((7, 5)).astype(dtype) for _ in range(4)]
    p = Parameter(kernels.array(w0))
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=5e-4, l1=1e-3)
    w, v = w0.copy(), np.zeros_like(w0)
    for step, g in enumerate(grads):
        opt.lr = [0.1, 0.1, 0.01, 0.01][step]
        p.grad = kernels.tensor(g)
        opt.step()
        g = g + opt.l1 * np.sign(w)
        v *= opt.momentum
        v -= opt.weight_decay * opt.lr * w
        v -= opt.lr * g
        w += v
        np.testing.assert_array_equal(kernels.numpy(p), w)
        np.testing.assert_array_equal(backend.to_numpy(opt.velocities[0]), v)
