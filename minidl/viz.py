"""Pictures of what a network learned and where it looks (Pillow only).

* ``filter_grid``: the first layer's filters as small RGB images (AlexNet's 96 conv1 filters);
* ``feature_maps`` / ``feature_map_grid``: what conv1, conv2, conv3 produce for one image;
* ``grad_cam`` / ``overlay_heatmap``: the class activation map of Selvaraju et al. (2017):
  with A the activation of a chosen layer (C maps of h x w) and y the class's score (the
  logit, before softmax or sigmoid),

      w_c = mean over (i, j) of dy/dA[c, i, j]         (one weight per channel)
      heat = ReLU(sum_c w_c A[c])                      (h x w), upsampled bilinearly

  to the input's size and divided by its maximum, so it lies in [0, 1]. The gradient comes
  from minidl's own autograd.

Every function that runs the model switches it to eval mode (dropout off) and restores each
module's train/eval flag afterwards. Images come back as ``PIL.Image``; ``save_*`` write PNGs.
"""
import contextlib
import math
import os
from collections import OrderedDict

import numpy as np
from PIL import Image

from . import backend
from .checkpoint import write_atomically
from .models.summary import capture, forward_with
from .tensor import Tensor, is_grad_enabled, no_grad


# -- small helpers -------------------------------------------------------------------------------
def _numpy(x):
    return backend.to_numpy(x.data if isinstance(x, Tensor) else x)


def _to_uint8(a):
    """Stretch ``a`` linearly so its minimum is 0 and its maximum 255 (all zeros if constant)."""
    a = np.asarray(a, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _grid(tiles, ncols, pad, background=0):
    """Tiles (n, h, w) or (n, h, w, 3), uint8, laid out row by row with ``pad`` pixels around each."""
    n, h, w = tiles.shape[:3]
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    shape = (nrows * h + (nrows + 1) * pad, ncols * w + (ncols + 1) * pad) + tiles.shape[3:]
    canvas = np.full(shape, background, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top:top + h, left:left + w] = tiles[i]
    return canvas


def _upscale(tiles, scale):
    """Nearest-neighbour upscaling of (n, h, w[, 3]) tiles by an integer factor."""
    if scale == 1:
        return tiles
    return np.repeat(np.repeat(tiles, scale, axis=1), scale, axis=2)


@contextlib.contextmanager
def _frozen(params):
    """``params`` ask for no gradient while the block runs (so backward leaves their ``.grad``
    alone), and each gets its own flag back afterwards."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad = False
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad = flag


def _model_input(model, image, op):
    """One image, (C, H, W) or (1, C, H, W), as a batch-of-one Tensor of the model's dtype and device."""
    array = _numpy(image)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] != 1:
        raise ValueError(f"{op}: expected one image of shape (C, H, W) or (1, C, H, W), "
                         f"got shape {array.shape}")
    return Tensor(backend.to_device(np.ascontiguousarray(array, dtype=model.dtype), model.device))


# -- filters -------------------------------------------------------------------------------------
def filter_grid(conv_weight, ncols=16, scale=4, pad=1):
    """The filters of a convolution as an image grid.

    ``conv_weight`` is (out, in, kh, kw) -- a Tensor, a Parameter or an array. Each filter is
    stretched on its own to [0, 255]; with 3 input channels it is shown in RGB (AlexNet's conv1:
    96 filters, 6 rows of 16 by default, 48 per GPU as in the paper's figure 3), otherwise as
    the grey mean of its input channels. Each filter is upscaled ``scale`` times (nearest
    neighbour) and ``pad`` grey-background pixels separate them, so the image is
    ``ncols * kw * scale + (ncols + 1) * pad`` wide.
    """
    w = _numpy(conv_weight)
    if w.ndim != 4:
        raise ValueError(f"filter_grid: expected a convolution weight (out, in, kh, kw), got shape {w.shape}")
    if w.shape[1] == 3:
        tiles = np.stack([_to_uint8(f) for f in w.transpose(0, 2, 3, 1)])  # (n, kh, kw, 3)
        mode = "RGB"
    else:
        tiles = np.stack([_to_uint8(f.mean(axis=0)) for f in w])
        mode = "L"
    grid = _grid(_upscale(tiles, scale), ncols, pad, background=128)
    return Image.fromarray(grid, mode)


# -- feature maps --------------------------------------------------------------------------------
def feature_maps(model, image, layers=None):
    """``{layer: (C, h, w) NumPy array}``: the named layers' outputs for one image.

    ``layers`` defaults to ``model.feature_map_layers`` (for AlexNet ``relu1``, ``relu2``,
    ``relu3``: conv1..conv3 after their ReLU). Runs in eval mode without a graph.
    """
    layers = layers if layers is not None else getattr(model, "feature_map_layers", None)
    if not layers:
        raise ValueError("feature_maps: name the layers to show (layers=[...]); "
                         f"{type(model).__name__} has no feature_map_layers")
    x = _model_input(model, image, "feature_maps")
    with model.evaluating(), no_grad():
        taps = forward_with(model, x, layers)
    return OrderedDict((name, _numpy(taps[name])[0]) for name in layers)


def feature_map_grid(activations, ncols=None, scale=None, pad=1):
    """One layer's maps, (C, h, w) or (1, C, h, w), as a grey image grid.

    Each map is stretched on its own to [0, 255] (an all-constant map, such as a channel the
    ReLU zeroed everywhere, is black). ``ncols`` defaults to ceil(sqrt(C)); ``scale`` (nearest
    neighbour) defaults to the smallest integer making a tile at least 32 pixels on its longer
    side. The image is ``ncols * w * scale + (ncols + 1) * pad`` wide.
    """
    a = _numpy(activations)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"feature_map_grid: expected maps of shape (C, h, w) or (1, C, h, w), got {a.shape}")
    c, h, w = a.shape
    ncols = ncols or math.ceil(math.sqrt(c))
    scale = scale or max(1, math.ceil(32 / max(h, w)))
    tiles = np.stack([_to_uint8(m) for m in a])
    return Image.fromarray(_grid(_upscale(tiles, scale), ncols, pad, background=255), "L")


# -- Grad-CAM ------------------------------------------------------------------------------------
def bilinear_resize(a, height, width):
    """Resize a 2-D array bilinearly, sampling at pixel centres (as PIL and ``align_corners=False``)."""
    a = np.asarray(a, dtype=np.float64)

    def taps(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    r0, r1, fr = taps(a.shape[0], height)
    c0, c1, fc = taps(a.shape[1], width)
    rows = a[r0] * (1 - fr)[:, None] + a[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc) + rows[:, c1] * fc


def grad_cam(model, image, target_class=None, layer=None):
    """Grad-CAM heat map (H, W) in [0, 1] for one input image (C, H, W) or (1, C, H, W).

    ``target_class`` defaults to the model's top class; ``layer`` names the module whose output
    is explained (default ``model.grad_cam_layer``, AlexNet's ``relu5``). The image must already
    be what the model takes (normalised, 227x227 for AlexNet). The model's parameters get no
    ``.grad`` from this: the chosen activation is made a leaf of the graph, so backward stops
    there, and the parameters are frozen while it runs.
    """
    layer = layer or getattr(model, "grad_cam_layer", None)
    if not layer:
        raise ValueError(f"grad_cam: name the layer to explain (layer=...); "
                         f"{type(model).__name__} has no grad_cam_layer")
    if not is_grad_enabled():
        raise RuntimeError("grad_cam: needs gradients, so it cannot run inside minidl.no_grad()")
    x = _model_input(model, image, "grad_cam")
    held = {}

    def as_leaf(name, out):
        held["activation"] = Tensor(out.data, requires_grad=True)
        return held["activation"]

    with model.evaluating(), _frozen(model.parameters()):
        with capture(model, [layer], transform=as_leaf):
            scores = model(x)
        if "activation" not in held:
            raise RuntimeError(f"grad_cam: layer {layer!r} was not called by the model's forward")
        if scores.ndim != 2:
            raise ValueError(f"grad_cam: expected the model to return class scores (1, classes), "
                             f"got shape {scores.shape}")
        cls = int(np.argmax(scores.numpy()[0])) if target_class is None else int(target_class)
        if not 0 <= cls < scores.shape[1]:
            raise ValueError(f"grad_cam: target_class {target_class} is outside "
                             f"[0, {scores.shape[1] - 1}]")
        scores[0, cls].backward()
    act = held["activation"]
    if act.ndim != 4:
        raise ValueError(f"grad_cam: layer {layer!r} gives shape {act.shape}; Grad-CAM needs "
                         "spatial maps (1, C, h, w), so choose a convolutional layer")
    a = _numpy(act)[0].astype(np.float64)
    g = _numpy(act.grad)[0].astype(np.float64) if act.grad is not None else np.zeros_like(a)
    weights = g.mean(axis=(1, 2))
    cam = np.maximum(np.tensordot(weights, a, axes=1), 0.0)
    heat = bilinear_resize(cam, x.shape[2], x.shape[3])
    peak = heat.max()
    return (heat / peak if peak > 0 else np.zeros_like(heat)).astype(np.float32)


def colormap(values, name="jet"):
    """Values in [0, 1] (any shape) -> uint8 RGB with the 'jet' colour map (blue, cyan, yellow, red)."""
    if name != "jet":
        raise ValueError(f"colormap: only 'jet' is available, got {name!r}")
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red peaks at 3/4, green at 1/2, blue at 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def to_display_image(image, bands=None):
    """A PIL RGB image from a PIL image or an array (H, W), (H, W, 3), (C, H, W) or (1, C, H, W).

    Float arrays are stretched to [0, 255]; uint8 ones are taken as they are. ``bands`` picks
    three channels of a multispectral (C, H, W) image, e.g. (3, 2, 1) for EuroSAT's B04, B03, B02.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    a = _numpy(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if bands is not None:
        a = a[list(bands)]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)  # channels first -> last
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
        raise ValueError(f"to_display_image: cannot show shape {a.shape} as an image; "
                         "give (H, W), (H, W, 3), (3, H, W) or pick bands=(r, g, b)")
    if a.dtype != np.uint8:
        a = _to_uint8(a)
    return Image.fromarray(a).convert("RGB")


def overlay_heatmap(image, heat, alpha=0.5, bands=None):
    """The image with the 'jet'-coloured heat map blended over it (``alpha`` = heat's weight).

    ``heat`` (h, w) in [0, 1] is resized bilinearly to the image if their sizes differ.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay_heatmap: alpha must lie in [0, 1], got {alpha}")
    base = np.asarray(to_display_image(image, bands), dtype=np.float64)
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 2:
        raise ValueError(f"overlay_heatmap: heat must be 2-D (H, W), got shape {heat.shape}")
    if heat.shape != base.shape[:2]:
        heat = bilinear_resize(heat, *base.shape[:2])
    blended = (1 - alpha) * base + alpha * colormap(heat)
    return Image.fromarray(np.round(blended).astype(np.uint8), "RGB")


# -- saving --------------------------------------------------------------------------------------
def save_image(image, path):
    """Write a PIL image (or anything ``to_display_image`` takes) as a PNG; returns the path.
    Written to a temporary file and renamed over ``path``: a picture of an earlier run is
    replaced whole or kept, never left half-written."""
    if not isinstance(image, Image.Image):
        image = to_display_image(image)
    write_atomically(path, lambda f: image.save(f, format="PNG"))
    return path


def save_filter_grid(conv_weight, path, **options):
    """``filter_grid(conv_weight, **options)`` written to ``path``."""
    return save_image(filter_grid(conv_weight, **options), path)


def save_feature_maps(model, image, directory, layers=None, prefix="feature_maps", names=None,
                      **options):
    """One PNG per layer, ``<directory>/<prefix>_<name>.png``; returns the paths by layer.

    ``names`` gives the file name part of each layer in ``layers`` (default: the layer names,
    e.g. ["conv1", "conv2"] for the layers "relu1", "relu2").
    """
    paths = OrderedDict()
    maps_by_layer = feature_maps(model, image, layers)
    names = list(maps_by_layer) if names is None else list(names)
    if len(names) != len(maps_by_layer):
        raise ValueError(f"save_feature_maps: {len(names)} names for {len(maps_by_layer)} layers")
    for name, (layer, maps) in zip(names, maps_by_layer.items()):
        paths[layer] = save_image(feature_map_grid(maps, **options),
                                  os.path.join(directory, f"{prefix}_{name}.png"))
    return paths


def save_grad_cam(model, image, path, target_class=None, layer=None, display=None, alpha=0.5,
                  bands=None):
    """Grad-CAM of ``image`` overlaid on ``display`` (default: the input itself) written to ``path``.

    Returns the heat map. ``display`` is the picture a person should see -- the un-normalised
    crop, say -- since the model's input is usually mean-subtracted.
    """
    heat = grad_cam(model, image, target_class=target_class, layer=layer)
    shown = image if display is None else display
    save_image(overlay_heatmap(shown, heat, alpha=alpha, bands=bands), path)
    return heat
