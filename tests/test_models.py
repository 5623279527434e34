"""AlexNet and EuroNet: structure, parameter counts, initialisation, shapes, the summary table.

AlexNet forward passes run at batch 1 (a 227x227 image is ~0.7 GFLOP; the CPU is slow), and
the models are built once per module (building AlexNet draws 61 M random numbers twice).
"""
import numpy as np
import pytest

import minidl
from minidl import layers, ops
from minidl.models import alexnet, capture, euronet, forward_with, summary
from minidl.models.alexnet import NONZERO_BIAS

# The AlexNet table of docs/MODELS.md.
ALEXNET_PARAMS = {"conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936,
                  "conv5": 442_624, "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000}
ALEXNET_SHAPES = {"conv1": (96, 55, 55), "norm1": (96, 55, 55), "pool1": (96, 27, 27),
                  "conv2": (256, 27, 27), "norm2": (256, 27, 27), "pool2": (256, 13, 13),
                  "conv3": (384, 13, 13), "conv4": (384, 13, 13), "conv5": (256, 13, 13),
                  "pool5": (256, 6, 6), "flatten": (9216,), "fc6": (4096,), "fc7": (4096,),
                  "fc8": (1000,)}
ALEXNET_ORDER = ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2",
                 "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5", "flatten",
                 "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]

# The EuroNet table of docs/MODELS.md (conv6 is 113,008, not the slides' misprinted 113,080).
EURONET_ROWS = [("conv1", (28, 64, 64), 3_304), ("conv2", (28, 64, 64), 7_084),
                ("pool1", (28, 32, 32), 0), ("conv3", (56, 32, 32), 14_168),
                ("conv4", (56, 32, 32), 28_280), ("pool2", (56, 16, 16), 0),
                ("conv5", (112, 16, 16), 56_560), ("conv6", (112, 16, 16), 113_008),
                ("pool3", (112, 8, 8), 0), ("flatten", (7168,), 0),
                ("fc1", (784,), 5_620_496), ("fc2", (10,), 7_850)]


@pytest.fixture(scope="module")
def paper():
    minidl.manual_seed(0)
    return alexnet()


@pytest.fixture(scope="module")
def caffe():
    minidl.manual_seed(0)
    return alexnet(variant="caffe")


def _image(seed=0, shape=(1, 3, 227, 227)):
    return minidl.Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


# -- AlexNet: structure and initialisation (no forward pass) ---------------------------------
def test_alexnet_parameter_counts(paper, caffe):
    assert paper.num_parameters() == 60_965_224
    assert caffe.num_parameters() == 60_965_224
    for name, count in ALEXNET_PARAMS.items():
        assert paper[name].num_parameters() == count, name
    assert sum(ALEXNET_PARAMS.values()) == 60_965_224


def test_alexnet_layer_names_and_state_dict(paper):
    assert list(paper._modules) == ALEXNET_ORDER
    keys = list(paper.state_dict())
    assert keys == [f"{n}.{p}" for n in ALEXNET_PARAMS for p in ("weight", "bias")]


def test_alexnet_structure_follows_spec(paper):
    conv = {n: paper[n] for n in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    assert [c.out_channels for c in conv.values()] == [96, 256, 384, 384, 256]
    assert [c.kernel_size for c in conv.values()] == [(11, 11), (5, 5), (3, 3), (3, 3), (3, 3)]
    assert [c.stride for c in conv.values()] == [(4, 4)] + [(1, 1)] * 4
    assert [c.padding for c in conv.values()] == [(0, 0), (2, 2), (1, 1), (1, 1), (1, 1)]
    assert [c.groups for c in conv.values()] == [1, 2, 1, 2, 2]
    for name in ("norm1", "norm2"):
        lrn = paper[name]
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.convention) == (5, 1e-4, 0.75, 2.0, "paper")
    for name in ("pool1", "pool2", "pool5"):
        assert (paper[name].kernel_size, paper[name].stride) == (3, 2)
    assert paper["drop6"].p == paper["drop7"].p == 0.5
    assert (paper.fc6.in_features, paper.fc8.out_features) == (9216, 1000)
    # features / classifier are views on the same layers, not copies
    assert paper.features.conv1 is paper.conv1 and paper.classifier.fc8 is paper.fc8
    assert list(paper.features._modules)[-1] == "pool5"
    assert list(paper.classifier._modules)[0] == "flatten"
    assert paper.features.num_parameters() + paper.classifier.num_parameters() == 60_965_224


def test_alexnet_paper_initialisation(paper):
    for name in ALEXNET_PARAMS:
        w = paper[name].weight.numpy()
        b = paper[name].bias.numpy()
        assert w.dtype == np.float32 and b.dtype == np.float32
        # the smallest layer (conv1) has 34,848 weights: the std's standard error is ~0.4 %
        assert abs(w.std() - 0.01) < 0.0003, (name, w.std())
        assert abs(w.mean()) < 0.0003, (name, w.mean())
        expected = 1.0 if name in NONZERO_BIAS else 0.0
        np.testing.assert_array_equal(b, np.full_like(b, expected), err_msg=name)
    assert set(NONZERO_BIAS) == {"conv2", "conv4", "conv5", "fc6", "fc7"}


def test_alexnet_caffe_variant_differences(paper, caffe):
    assert caffe.variant == "caffe"
    for name in ("norm1", "norm2"):
        lrn = caffe[name]
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.convention) == (5, 1e-4, 0.75, 1.0, "caffe")
    for name in ALEXNET_PARAMS:
        std = 0.005 if name in ("fc6", "fc7") else 0.01
        w, b = caffe[name].weight.numpy(), caffe[name].bias.numpy()
        assert abs(w.std() - std) < 0.03 * std, (name, w.std())
        np.testing.assert_array_equal(b, np.full_like(b, 0.1 if name in NONZERO_BIAS else 0.0))
        assert caffe[name].weight.shape == paper[name].weight.shape


def test_alexnet_init_is_seeded_by_minidl_generator(paper):
    minidl.manual_seed(0)
    again = alexnet()
    np.testing.assert_array_equal(again.conv1.weight.numpy(), paper.conv1.weight.numpy())
    np.testing.assert_array_equal(again.fc8.weight.numpy(), paper.fc8.weight.numpy())
    # another seed, through an explicit generator, gives other weights
    again.reset_parameters(np.random.default_rng(1))
    assert not np.array_equal(again.conv1.weight.numpy(), paper.conv1.weight.numpy())
    assert abs(again.conv1.weight.numpy().std() - 0.01) < 0.0003


def test_alexnet_num_classes_and_float64():
    model = alexnet(num_classes=10, dtype=np.float64)
    assert model.fc8.weight.shape == (10, 4096)
    assert model.num_parameters() == 60_965_224 - 4_097_000 + 4096 * 10 + 10
    assert all(p.dtype == np.float64 for p in model.parameters())


def test_alexnet_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown variant 'vgg'.*'paper', 'caffe'"):
        alexnet(variant="vgg")


@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (3, 227, 227), (1, 1, 227, 227), (2, 227, 227, 3)])
def test_alexnet_rejects_wrong_input_before_the_conv(paper, shape):
    with pytest.raises(ValueError, match=r"alexnet: expected input of shape \(N, 3, 227, 227\)"):
        paper(minidl.Tensor(np.zeros(shape, np.float32)))


def test_alexnet_rejects_a_plain_array(paper):
    with pytest.raises(TypeError, match="alexnet: expected a minidl Tensor"):
        paper(np.zeros((1, 3, 227, 227), np.float32))


# -- EuroNet: structure and initialisation -----------------------------------------------------
def test_euronet_parameter_counts_and_layers():
    model = euronet()
    assert model.num_parameters() == 5_850_750
    for name, _, count in EURONET_ROWS:
        assert model[name].num_parameters() == count, name
    convs = [model[f"conv{i}"] for i in range(1, 7)]
    assert [c.out_channels for c in convs] == [28, 28, 56, 56, 112, 112]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.groups == 1 for c in convs)
    assert all(model[f"pool{i}"].kernel_size == 2 for i in (1, 2, 3))
    names = list(model._modules)
    assert names[-4:] == ["fc1", "relu_fc1", "dropout", "fc2"]  # dropout before the last dense
    assert model.dropout.p == 0.5
    assert euronet(in_channels=3).conv1.weight.shape == (28, 3, 3, 3)


def test_euronet_glorot_init_and_zero_biases():
    model = euronet()
    for name, fan_in, fan_out in [("conv1", 13 * 9, 28 * 9), ("conv6", 112 * 9, 112 * 9),
                                  ("fc1", 7168, 784), ("fc2", 784, 10)]:
        w = model[name].weight.numpy()
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(w).max() <= limit
        assert abs(w.std() - limit / np.sqrt(3)) < 0.05 * limit, name  # uniform(-l, l): std l/sqrt(3)
        assert not model[name].bias.numpy().any()


def test_euronet_rejects_wrong_input():
    model = euronet()
    with pytest.raises(ValueError, match=r"euronet: expected input of shape \(N, 13, 64, 64\)"):
        model(minidl.Tensor(np.zeros((1, 3, 64, 64), np.float32)))
    with pytest.raises(ValueError, match="multiple of 8"):
        euronet(image_size=60)


# -- taps and the summary table on a small model --------------------------------------------
def _small_model():
    return layers.Sequential(layers.Conv2d(2, 4, 3, padding=1), layers.ReLU(),
                             layers.MaxPool2d(2), layers.Flatten(), layers.Dropout(0.5),
                             layers.Linear(4 * 4 * 4, 3))


def test_capture_restores_forward_and_checks_names():
    model = _small_model()
    with pytest.raises(ValueError, match=r"no layer named 'conv'.*layers are: 0, 1, 2"):
        with capture(model, ["conv"]):
            pass
    with capture(model, ["1"]) as outputs:
        assert model[1].has_forward_hooks
    assert not model[1].has_forward_hooks and not outputs
    with pytest.raises(ValueError, match="'output' is always returned"):
        forward_with(model, None, ["output"])


def test_forward_with_returns_activations_in_the_graph():
    model = _small_model()
    x = minidl.Tensor(np.random.default_rng(1).standard_normal((2, 2, 8, 8)).astype(np.float32))
    model.eval()
    taps = forward_with(model, x, ["1", "2"])
    assert list(taps) == ["1", "2", "output"]
    assert taps["1"].shape == (2, 4, 8, 8) and taps["2"].shape == (2, 4, 4, 4)
    np.testing.assert_allclose(taps["output"].numpy(), model(x).numpy(), rtol=1e-6)
    assert taps["1"].creator is not None  # part of the graph: usable for gradients


def test_summary_of_a_small_model_restores_mode(capsys):
    model = _small_model()
    model.train()
    table = summary(model, (2, 8, 8))
    assert all(m.training for m in model.modules())
    assert [(r[0], r[1], r[2], r[3]) for r in table.rows] == [
        ("0", "Conv2d + ReLU", (4, 8, 8), 2 * 4 * 9 + 4), ("2", "MaxPool2d", (4, 4, 4), 0),
        ("3", "Flatten + Dropout", (64,), 0), ("5", "Linear", (3,), 64 * 3 + 3)]
    assert table.total_params == model.num_parameters() == 2 * 4 * 9 + 4 + 64 * 3 + 3
    printed = capsys.readouterr().out
    assert "Conv2d + ReLU" in printed and "(None, 4, 8, 8)" in printed
    assert f"Total params: {table.total_params:,}" in printed
    unfolded = summary(model, (2, 8, 8), fold_activations=False, print_table=False)
    assert [r[0] for r in unfolded.rows] == ["0", "1", "2", "3", "4", "5"]


# -- forward passes (batch 1 for AlexNet) --------------------------------------------------------
def test_alexnet_summary_shapes_and_counts(paper, capsys):
    table = summary(paper, (3, 227, 227))
    for name, shape in ALEXNET_SHAPES.items():
        assert table.row(name)[2] == shape, name
    for name, count in ALEXNET_PARAMS.items():
        assert table.row(name)[3] == count, name
    assert table.row("conv1")[1] == "Conv2d + ReLU"
    assert table.row("fc6")[1] == "Linear + ReLU + Dropout"
    assert table.total_params == 60_965_224
    assert "Total params: 60,965,224" in capsys.readouterr().out


def test_euronet_summary_matches_the_slides():
    table = summary(euronet(), (13, 64, 64), print_table=False)
    assert [(r[0], r[2], r[3]) for r in table.rows] == EURONET_ROWS
    assert table.row("fc2")[1] == "Linear"  # logits: the sigmoid lives in the loss
    assert table.total_params == 5_850_750


def _torch_alexnet(model):
    """The same network in PyTorch, with minidl's weights (paper LRN: torch's alpha = n * alpha)."""
    import torch
    from torch import nn

    lrn = model.norm1
    alpha = lrn.alpha * lrn.size if lrn.convention == "paper" else lrn.alpha
    torch_model = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.LocalResponseNorm(5, alpha, lrn.beta, lrn.k),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(),
        nn.LocalResponseNorm(5, alpha, lrn.beta, lrn.k), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, model.num_classes))
    ours = [m for m in model if isinstance(m, (layers.Conv2d, layers.Linear))]
    theirs = [m for m in torch_model if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            b.weight.copy_(torch.from_numpy(a.weight.numpy()))
            b.bias.copy_(torch.from_numpy(a.bias.numpy()))
    return torch_model.eval()


@pytest.mark.parametrize("variant", ["paper", "caffe"])
def test_alexnet_forward_matches_pytorch(paper, caffe, variant):
    torch = pytest.importorskip("torch")
    model = paper if variant == "paper" else caffe
    model.eval()
    x = _image(2)
    # Scale so the LRN's sum of squares matters (k + alpha * sum is far from k).
    x = minidl.Tensor(x.numpy() * 40.0)
    with minidl.no_grad():
        taps = model.forward_with(x, ["norm1", "relu5"])
    torch_model = _torch_alexnet(model)
    with torch.no_grad():
        xt = torch.from_numpy(x.numpy())
        expected_norm1 = torch_model[:3](xt).numpy()
        expected_relu5 = torch_model[:14](xt).numpy()
        expected = torch_model(xt).numpy()
    np.testing.assert_allclose(taps["norm1"].numpy(), expected_norm1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(taps["relu5"].numpy(), expected_relu5, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(taps["output"].numpy(), expected, rtol=1e-3, atol=1e-3)
    assert taps["output"].shape == (1, 1000) and taps["output"].dtype == np.float32
    model.train()


def test_alexnet_training_step_gradients(paper):
    paper.train()
    out = paper(_image(3))
    loss = ops.softmax_cross_entropy(out, np.array([7]))
    loss.backward()
    for name, p in paper.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == np.float32, name
        assert np.isfinite(p.grad.numpy()).all(), name
    assert np.abs(paper.fc8.weight.grad.numpy()).max() > 0
    paper.zero_grad()


def test_alexnet_dropout_only_in_training(paper):
    x = _image(4)
    paper.eval()
    with minidl.no_grad():
        a, b = paper(x).numpy(), paper(x).numpy()
    np.testing.assert_array_equal(a, b)
    paper.train()
    with minidl.no_grad():
        c = paper(x).numpy()
    assert not np.allclose(a, c)


def test_euronet_forward_backward_and_predict():
    model = euronet()
    rng = np.random.default_rng(5)
    x = minidl.Tensor(rng.standard_normal((2, 13, 64, 64)).astype(np.float32))
    logits = model(x)
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    targets = np.eye(10, dtype=np.float32)[[3, 8]]
    loss = ops.binary_cross_entropy_with_logits(logits, minidl.Tensor(targets))
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    model.eval()
    probs = model.predict_proba(x).numpy()
    assert probs.shape == (2, 10) and ((probs > 0) & (probs < 1)).all()
    np.testing.assert_array_equal(model.predict(x), probs.argmax(axis=1))


@pytest.mark.parametrize("name", ["alexnet", "euronet"])
def test_fast_paths_give_the_plain_paths_gradients(name, monkeypatch):
    """The whole network in float64 with Winograd and Conv2d+ReLU fusion (the defaults) and
    with neither (im2col, separate ReLUs): same loss and same gradient for every parameter."""
    import minidl.layers.sequential as sequential_file
    from minidl.ops import winograd

    def loss_and_grads():
        minidl.manual_seed(0)
        rng = np.random.default_rng(0)
        if name == "alexnet":
            model = alexnet(num_classes=4, dtype=np.float64)
            x = rng.standard_normal((2, 3, 227, 227))
        else:
            model = euronet(dtype=np.float64)
            x = rng.standard_normal((2, 13, 64, 64))
        model.eval()  # no dropout
        loss = ops.softmax_cross_entropy(model(minidl.Tensor(x)), np.array([0, 3]))
        loss.backward()
        return loss.item(), {n: p.grad.numpy() for n, p in model.named_parameters()}

    fast_loss, fast = loss_and_grads()
    monkeypatch.setattr(winograd, "supports", lambda *args: False)
    monkeypatch.setattr(sequential_file, "_fusable", lambda *args: False)
    plain_loss, plain = loss_and_grads()
    assert fast_loss == pytest.approx(plain_loss, rel=1e-12)
    for n in plain:
        scale = np.abs(plain[n]).max()
        np.testing.assert_allclose(fast[n], plain[n], rtol=0, atol=1e-10 * scale, err_msg=n)


# -- the torchvision layout and PyTorch state dicts -------------------------------------------
def test_torchvision_variant_structure():
    model = alexnet(variant="torchvision")
    assert model.num_parameters() == 61_100_840
    assert [model[n].out_channels for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [
        64, 192, 384, 256, 256]
    assert not any(isinstance(m, minidl.layers.LocalResponseNorm) for m in model.modules())
    names = list(model._modules)
    assert names.index("drop6") == names.index("fc6") - 1 and names.index("drop7") == names.index("fc7") - 1
    assert model.input_shape == (3, 224, 224)


def test_torchvision_state_dict_gives_pytorchs_logits(tmp_path, torch_torchvision_alexnet):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    theirs = torch_torchvision_alexnet(1000).eval()
    path = tmp_path / "alexnet.pth"
    torch.save(theirs.state_dict(), path)
    model = alexnet(variant="torchvision").eval()
    model.load_state_dict(str(path))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    with minidl.no_grad():
        logits = model(minidl.Tensor(x)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert (logits.argmax(axis=1) == expected.argmax(axis=1)).all()
    model.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})  # arrays too
    np.testing.assert_array_equal(model.conv1.weight.numpy(), theirs.features[0].weight.detach().numpy())


def test_euronet_with_batch_norm():
    model = euronet(batch_norm=True)
    assert model.num_parameters() == 5_850_750 - 392 + 2 * 392
    assert model.conv1.bias is None and isinstance(model.bn1, minidl.layers.BatchNorm2d)
    names = list(model._modules)
    assert names[:3] == ["conv1", "bn1", "relu1"]
    assert "bn6.running_var" in model.state_dict() and "bn6.running_var" not in dict(model.named_parameters())
    x = minidl.Tensor(np.random.default_rng(0).standard_normal((2, 13, 64, 64)).astype(np.float32))
    model(x).sum().backward()
    assert model.bn1.num_batches_tracked.item() == 1 and model.bn1.weight.grad is not None
    assert model.eval()(x).shape == (2, 10)
