"""Pictures: filter grid, feature-map grids, Grad-CAM (against a known answer and PyTorch), PNGs."""
import contextlib
from collections import OrderedDict

import numpy as np
import pytest
from PIL import Image

import minidl
from minidl import backend, layers, viz
from minidl.models import alexnet, summary
from minidl.testing.cuda_on_cpu import cuda_kernels_on_cpu


@pytest.fixture(scope="module")
def model():
    minidl.manual_seed(0)
    return alexnet()


def _image(seed=0, shape=(3, 227, 227)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- filters and feature-map grids ---------------------------------------------------------------
def test_filter_grid_of_96_rgb_filters():
    w = np.random.default_rng(0).standard_normal((96, 3, 11, 11)).astype(np.float32)
    img = viz.filter_grid(w)  # 16 columns x 6 rows, each filter 44x44, 1 pixel apart
    assert img.mode == "RGB" and img.size == (16 * 44 + 17, 6 * 44 + 7)
    a = np.asarray(img)
    tile = a[1:45, 1:45]  # the first filter: stretched on its own to [0, 255]
    assert tile.min() == 0 and tile.max() == 255
    # nearest-neighbour upscaling: each weight is a 4x4 block
    assert (tile[:4, :4] == tile[0, 0]).all()
    img = viz.filter_grid(w[:10], ncols=5, scale=2, pad=0)
    assert img.size == (5 * 22, 2 * 22)


def test_filter_grid_pixel_values_and_grey_for_other_channel_counts():
    w = np.zeros((2, 3, 2, 2), np.float32)
    w[0, 0, 0, 0] = 1.0  # red top-left pixel, everything else the minimum
    img = np.asarray(viz.filter_grid(minidl.Tensor(w), scale=1, pad=0))
    assert img.shape == (2, 4, 3)
    np.testing.assert_array_equal(img[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(img[:, 2:], 0)  # a constant filter is black
    grey = viz.filter_grid(np.ones((4, 13, 3, 3), np.float32))
    assert grey.mode == "L"
    with pytest.raises(ValueError, match=r"filter_grid: expected a convolution weight \(out, in, kh, kw\)"):
        viz.filter_grid(np.ones((4, 3, 3)))


def test_alexnet_conv1_filter_grid(model):
    img = viz.filter_grid(model.conv1.weight)
    assert img.size == (721, 271)


@pytest.mark.parametrize("shape, size", [((96, 55, 55), (561, 561)),          # 10 x 10, scale 1
                                         ((1, 256, 27, 27), (881, 881)),      # 16 x 16, scale 2
                                         ((384, 13, 13), (801, 801))])        # 20 x 20, scale 3
def test_feature_map_grid_sizes(shape, size):
    a = np.random.default_rng(0).random(shape).astype(np.float32)
    img = viz.feature_map_grid(a)
    assert img.mode == "L" and img.size == size


def test_feature_map_grid_normalises_each_map():
    a = np.zeros((2, 3, 3), np.float32)
    a[0] = np.arange(9).reshape(3, 3)
    a[1] = 7.0  # constant: black
    img = np.asarray(viz.feature_map_grid(a, ncols=2, scale=1, pad=0))
    np.testing.assert_array_equal(img[:, :3], np.round(np.arange(9).reshape(3, 3) * 255 / 8))
    np.testing.assert_array_equal(img[:, 3:], 0)
    with pytest.raises(ValueError, match="feature_map_grid: expected maps of shape"):
        viz.feature_map_grid(np.zeros((2, 2, 3, 3)))


def test_alexnet_feature_maps_of_conv1_to_conv3(model, tmp_path):
    model.train()
    paths = viz.save_feature_maps(model, _image(1), tmp_path)
    assert all(m.training for m in model.modules())  # mode restored
    assert list(paths) == ["relu1", "relu2", "relu3"]
    sizes = {name: Image.open(p).size for name, p in paths.items()}
    assert sizes == {"relu1": (561, 561), "relu2": (881, 881), "relu3": (801, 801)}
    maps = viz.feature_maps(model, _image(1)[None], layers=["conv1", "pool5"])
    assert maps["conv1"].shape == (96, 55, 55) and maps["pool5"].shape == (256, 6, 6)


# -- Grad-CAM ------------------------------------------------------------------------------------
def _two_colour_model():
    """Class 0 sums the pooled channel 0, class 1 the pooled channel 1: the answer is known."""
    model = layers.Sequential(OrderedDict([("act", layers.ReLU()), ("pool", layers.MaxPool2d(2)),
                                           ("flatten", layers.Flatten()),
                                           ("fc", layers.Linear(2 * 4 * 4, 2))]))
    w = np.zeros((2, 32), np.float32)
    w[0, :16], w[1, 16:] = 1.0, 1.0
    model.fc.weight.data, model.fc.bias.data = w, np.zeros(2, np.float32)
    return model


def _two_blobs():
    rng = np.random.default_rng(3)
    x = np.zeros((2, 8, 8), np.float32)
    x[0, :4, :4] = rng.random((4, 4)) + 0.5   # channel 0 ("red") top-left
    x[1, 4:, 4:] = rng.random((4, 4)) + 0.5   # channel 1 ("green") bottom-right
    x[0, 4:, 4:] = -1.0                       # negative: removed by the ReLU, never highlighted
    return x


def test_grad_cam_known_answer_at_full_resolution():
    model, x = _two_colour_model(), _two_blobs()
    for cls in (0, 1):
        heat = viz.grad_cam(model, x, target_class=cls, layer="act")
        # dy/dA is 1 at each pooling window's maximum of channel cls: mean 16/64; channel weight
        # times ReLU(x[cls]), normalised, is x[cls]'s positive part over its maximum.
        expected = np.maximum(x[cls], 0) / np.maximum(x[cls], 0).max()
        assert heat.shape == (8, 8) and heat.dtype == np.float32
        np.testing.assert_allclose(heat, expected, rtol=1e-6)


def test_grad_cam_highlights_the_right_quadrant_after_upsampling():
    model, x = _two_colour_model(), _two_blobs()
    top_left = viz.grad_cam(model, x, target_class=0, layer="pool")  # 4x4 maps upsampled to 8x8
    bottom_right = viz.grad_cam(model, x, target_class=1, layer="pool")
    assert top_left.shape == (8, 8) and top_left.max() == 1.0 and top_left.min() == 0.0
    assert np.unravel_index(top_left.argmax(), (8, 8)) < (4, 4)
    assert (top_left[6:, :] == 0).all() and (top_left[:, 6:] == 0).all()
    assert (bottom_right[:2, :] == 0).all() and (bottom_right[:, :2] == 0).all()
    assert top_left[:4, :4].mean() > 0.5 and bottom_right[4:, 4:].mean() > 0.5
    # the default class is the top one: here class 0 has the larger sum
    scores = model(minidl.Tensor(x[None])).numpy()[0]
    default = viz.grad_cam(model, x, layer="pool")
    np.testing.assert_array_equal(default, top_left if scores[0] > scores[1] else bottom_right)


def test_grad_cam_leaves_the_model_as_it_was():
    model, x = _two_colour_model(), _two_blobs()
    model.train()
    viz.grad_cam(model, x, target_class=0, layer="act")
    assert all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_grad_cam_errors():
    model, x = _two_colour_model(), _two_blobs()
    with pytest.raises(ValueError, match=r"no layer named 'conv5'.*layers are: act, pool, flatten, fc"):
        viz.grad_cam(model, x, 0, layer="conv5")
    with pytest.raises(ValueError, match="grad_cam: layer 'fc' gives shape"):
        viz.grad_cam(model, x, 0, layer="fc")
    with pytest.raises(ValueError, match=r"target_class 2 is outside \[0, 1\]"):
        viz.grad_cam(model, x, 2, layer="act")
    with pytest.raises(ValueError, match="grad_cam: name the layer"):
        viz.grad_cam(model, x, 0)
    with pytest.raises(ValueError, match=r"grad_cam: expected one image"):
        viz.grad_cam(model, np.zeros((2, 2, 8, 8), np.float32), 0, layer="act")
    with minidl.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
        viz.grad_cam(model, x, 0, layer="act")


def test_grad_cam_matches_pytorch_on_a_small_conv_net():
    torch = pytest.importorskip("torch")
    from torch import nn
    import torch.nn.functional as F

    minidl.manual_seed(7)
    ours = layers.Sequential(OrderedDict([
        ("conv1", layers.Conv2d(3, 8, 3, padding=1)), ("relu1", layers.ReLU()),
        ("pool1", layers.MaxPool2d(2)),
        ("conv2", layers.Conv2d(8, 6, 3, padding=1, groups=2)), ("relu2", layers.ReLU()),
        ("flatten", layers.Flatten()), ("fc", layers.Linear(6 * 8 * 8, 5))]))
    theirs = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(8, 6, 3, padding=1, groups=2), nn.ReLU(),
                           nn.Flatten(), nn.Linear(6 * 8 * 8, 5))
    with torch.no_grad():
        for a, b in zip([ours.conv1, ours.conv2, ours.fc], [theirs[0], theirs[3], theirs[6]]):
            b.weight.copy_(torch.from_numpy(a.weight.numpy()))
            b.bias.copy_(torch.from_numpy(a.bias.numpy()))
    x = _image(4, (3, 16, 16))
    for cls in range(5):
        heat = viz.grad_cam(ours, x, target_class=cls, layer="relu2")
        act = theirs[:5](torch.from_numpy(x[None]))
        act.retain_grad()
        theirs[5:](act)[0, cls].backward()
        cam = F.relu((act.grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
        expected = (cam / cam.max() if cam.max() > 0 else cam).detach().numpy()
        np.testing.assert_allclose(heat, expected, atol=1e-5)


def test_alexnet_grad_cam_shape_and_range(model, tmp_path):
    model.train()
    x = _image(5)
    heat = viz.save_grad_cam(model, x, tmp_path / "cam.png", target_class=281)
    assert heat.shape == (227, 227) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == 1.0
    assert Image.open(tmp_path / "cam.png").size == (227, 227)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


# -- resizing, colours, overlays, files ----------------------------------------------------------
def test_bilinear_resize_samples_at_pixel_centres():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    up = viz.bilinear_resize(a, 4, 4)
    np.testing.assert_allclose(up[0], [0, 0.25, 0.75, 1])  # edges clamp, centres interpolate
    np.testing.assert_allclose(up[:, 0], [0, 0.5, 1.5, 2])
    np.testing.assert_allclose(viz.bilinear_resize(np.full((3, 5), 2.5), 7, 4), 2.5)
    torch = pytest.importorskip("torch")
    b = np.random.default_rng(0).random((5, 6))
    expected = torch.nn.functional.interpolate(torch.from_numpy(b)[None, None], size=(13, 9),
                                               mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(viz.bilinear_resize(b, 13, 9), expected, atol=1e-12)


def test_colormap_and_overlay():
    np.testing.assert_array_equal(viz.colormap(0.0), [0, 0, 128])     # dark blue
    np.testing.assert_array_equal(viz.colormap(1.0), [128, 0, 0])     # dark red
    np.testing.assert_array_equal(viz.colormap(0.5), [128, 255, 128])
    assert viz.colormap(np.zeros((4, 5))).shape == (4, 5, 3)
    img = np.full((6, 8, 3), 200, np.uint8)
    heat = np.ones((3, 4))  # resized to the image
    over = viz.overlay_heatmap(img, heat, alpha=1.0)
    assert over.size == (8, 6)
    np.testing.assert_array_equal(np.asarray(over)[0, 0], [128, 0, 0])
    np.testing.assert_array_equal(np.asarray(viz.overlay_heatmap(img, heat, alpha=0.0)), img)
    with pytest.raises(ValueError, match="alpha must lie in"):
        viz.overlay_heatmap(img, heat, alpha=2)


def test_to_display_image_layouts():
    chw = np.random.default_rng(0).random((3, 5, 7)).astype(np.float32)
    assert viz.to_display_image(chw).size == (7, 5)
    assert viz.to_display_image(chw.transpose(1, 2, 0)).size == (7, 5)
    bands = np.random.default_rng(0).random((13, 6, 6))
    assert viz.to_display_image(bands, bands=(3, 2, 1)).mode == "RGB"
    with pytest.raises(ValueError, match="pick bands"):
        viz.to_display_image(bands)


def test_save_helpers_write_pngs(tmp_path):
    path = viz.save_filter_grid(np.ones((4, 3, 5, 5), np.float32), tmp_path / "sub" / "f.png",
                                ncols=2, scale=1, pad=0)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (10, 10)
    path = viz.save_image(np.zeros((4, 4)), tmp_path / "z.png")
    with Image.open(path) as img:
        assert img.size == (4, 4)


def _small_conv_net():
    minidl.manual_seed(11)
    return layers.Sequential(OrderedDict([
        ("conv1", layers.Conv2d(3, 4, 3, padding=1)), ("relu1", layers.ReLU()),
        ("norm1", layers.LocalResponseNorm(5)), ("pool1", layers.MaxPool2d(2)),
        ("flatten", layers.Flatten()), ("drop", layers.Dropout(0.5)),
        ("fc", layers.Linear(4 * 4 * 4, 3))]))


@pytest.mark.parametrize("mode", ["cuda_on_cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_grad_cam_and_feature_maps_on_the_cuda_kernels(mode):
    """The same pictures when every op runs its CUDA C kernels (on the CPU shim, or a GPU)."""
    if mode == "cuda" and not backend.cuda_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    model, x = _small_conv_net(), _image(6, (3, 8, 8))
    reference = [viz.grad_cam(model, x, cls, layer="relu1") for cls in range(3)]
    maps = viz.feature_maps(model, x, ["relu1", "pool1"])
    if mode == "cuda":
        model.to("cuda")
        context, image = contextlib.nullcontext(), backend.to_device(x, "cuda")
    else:
        context, image = cuda_kernels_on_cpu(), x
    with context:
        for cls in range(3):
            np.testing.assert_allclose(viz.grad_cam(model, image, cls, layer="relu1"),
                                       reference[cls], atol=1e-5)
        for name, m in viz.feature_maps(model, image, ["relu1", "pool1"]).items():
            np.testing.assert_allclose(m, maps[name], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_alexnet_on_the_gpu_matches_the_cpu(model):
    if not backend.cuda_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    x = _image(8)
    model.eval()
    with minidl.no_grad():
        expected = model(minidl.Tensor(x[None])).numpy()
    heat_cpu = viz.grad_cam(model, x, 5)
    gpu = alexnet()
    gpu.load_state_dict(model.state_dict())
    gpu.to("cuda").eval()
    with minidl.no_grad():
        out = gpu(minidl.Tensor(x[None]).to("cuda"))
    assert out.device == "cuda"
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(viz.grad_cam(gpu, x, 5), heat_cpu, atol=1e-3)
    assert summary(gpu, (3, 227, 227), print_table=False).row("pool5")[2] == (256, 6, 6)
    model.train()


def test_save_image_replaces_a_picture_whole_or_keeps_it(tmp_path, monkeypatch):
    """A write that fails half-way (a full disk, a kill) leaves the earlier picture as it was
    and no temporary behind."""
    from minidl import checkpoint

    path = tmp_path / "pictures" / "filters.png"
    viz.save_image(np.zeros((4, 4)), path)
    before = path.read_bytes()

    def half_written(self, f, format=None):
        f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_written)
    with pytest.raises(checkpoint.SaveError, match="No space left on device"):
        viz.save_image(np.ones((4, 4)), path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["filters.png"]
