"""Image transforms for training and testing: the AlexNet paper's preprocessing and augmentation.

Every transform is a callable ``t(image, rng) -> image``. ``rng`` is a ``np.random.Generator``;
transforms that draw random numbers draw them only from it, so a sample is reproducible from
the generator the data loader hands it (derived from seed, epoch and sample index, see
``minidl.data.loader.sample_rng``). Deterministic transforms ignore ``rng``.

An image is either a Pillow image (what ``ImageFolder`` decodes) or a NumPy array in CHW layout
(channels first). The geometric transforms (resize, crops, flips) accept both, so the cheap
ones can run on the Pillow image before it is turned into floats; ``ToArray`` converts a Pillow
image to CHW float32 in [0, 1]; the pixel transforms (``PCALighting``, ``Normalize``) need arrays.

The paper's pipeline (docs/MODELS.md) is ``alexnet_train_transform()``:
shorter side to 256, centre 256x256, random 227x227 crop, random horizontal flip, fancy-PCA
colour noise, per-channel normalisation; and ``alexnet_eval_transform(ten_crop=True)`` for the
10-crop test.
"""
import numpy as np
from PIL import Image

# ImageNet's RGB covariance, the numbers used by fb.resnet.torch and Caffe-derived code for the
# fancy-PCA augmentation. They describe pixel values in [0, 1]: IMAGENET_EIGVAL are eigenvalues
# of the 3x3 covariance of (R, G, B) in [0, 1] units, and column j of IMAGENET_EIGVEC is the
# eigenvector of IMAGENET_EIGVAL[j] (the first column is the "brightness" direction, all three
# channels moving together).
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]])
# Per-channel mean and standard deviation of ImageNet pixels in [0, 1] (the usual constants).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])

# ResizeShorter refuses to make an image larger than this: 256 x 65,536 pixels, an aspect
# ratio of 256:1 at AlexNet's size. A 60 kB 20000x1 PNG would otherwise become 5,120,000x256.
MAX_RESIZED_PIXELS = 1 << 24


class BadImage(ValueError):
    """An image that decoded but cannot be used (too large, wrong shape or type, non-finite
    pixels). A dataset skips the file, naming it; ``kind`` is the reason in its counts."""

    kind = "unusable"

    def __init__(self, message, kind=None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class ImageTooLarge(BadImage):
    kind = "too large"


def eight_bit(image):
    """A Pillow image with 8 bits per channel: 16-bit and 32-bit grayscale ("I;16", "I") are
    scaled from 0..65535 to 0..255 -- ``convert("L")`` would clip them at 255, turning a
    16-bit picture almost entirely white. Other images are returned as they are."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L")
    return image


def mask_nonfinite(image):
    """Replace each NaN or infinite value of a CHW float array with the mean of the finite
    values of its channel (0 where a channel has none). Returns (array, number replaced)."""
    finite = np.isfinite(image)
    count = int(image.size - np.count_nonzero(finite))
    if count == 0:
        return image, 0
    image = image.copy()
    for channel, ok in zip(image, finite):
        channel[~ok] = channel[ok].mean() if ok.any() else 0.0
    return image, count


def _is_pil(image):
    return isinstance(image, Image.Image)


def _size_of(image):
    """(height, width) of a Pillow image or a CHW array."""
    if _is_pil(image):
        return image.height, image.width
    if image.ndim != 3:
        raise ValueError(f"transforms: expected an image in CHW layout (3-D array), got shape "
                         f"{tuple(image.shape)}")
    return image.shape[1], image.shape[2]


def _crop(image, top, left, size):
    if _is_pil(image):
        return image.crop((left, top, left + size, top + size))
    return image[:, top:top + size, left:left + size]


def _check_crop(name, image, size):
    height, width = _size_of(image)
    if height < size or width < size:
        raise ValueError(f"{name}: cannot take a {size}x{size} crop from a {height}x{width} image")
    return height, width


def _need_rng(name, rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name}: is random and needs a numpy Generator as its rng argument, got "
                        f"{type(rng).__name__} (the DataLoader passes one per sample)")


def _hflip(image):
    if _is_pil(image):
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image[:, :, ::-1]


def to_array(image):
    """Pillow image -> CHW float32 array with values in [0, 1] (8-bit images are divided by 255).

    Arrays are returned as float32 unchanged otherwise (their layout must already be CHW).
    """
    if _is_pil(image):
        image = eight_bit(image)
        if image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("RGB")
        hwc = np.asarray(image, dtype=np.float32)
        if hwc.ndim == 2:
            hwc = hwc[:, :, None]
        return np.ascontiguousarray(hwc.transpose(2, 0, 1)) / np.float32(255.0)
    return np.asarray(image, dtype=np.float32)


class Compose:
    """Apply transforms in order, each with the same generator (so draws happen in sequence)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, rng=None):
        for transform in self.transforms:
            image = transform(image, rng)
        return image

    def __repr__(self):
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class ToArray:
    """Pillow image -> CHW float32 in [0, 1]; see ``to_array``."""

    def __call__(self, image, rng=None):
        return to_array(image)

    def __repr__(self):
        return "ToArray()"


class ResizeShorter:
    """Scale the image so that its shorter side is ``size``, keeping the aspect ratio.

    The longer side becomes ``round(longer * size / shorter)``. Pillow's bilinear filter widens
    its support when shrinking, so downscaling is antialiased. CHW arrays are resized channel
    by channel (any number of channels, any float or integer dtype; the result is float32).
    A result above ``max_pixels`` (a thin strip enlarged) raises ``ImageTooLarge`` before any
    memory is taken; a dataset skips that file, naming it.
    """

    def __init__(self, size, resample=Image.Resampling.BILINEAR, max_pixels=MAX_RESIZED_PIXELS):
        self.size = int(size)
        self.resample = resample
        self.max_pixels = int(max_pixels)

    def output_size(self, height, width):
        if height <= width:
            return self.size, max(1, round(width * self.size / height))
        return max(1, round(height * self.size / width)), self.size

    def __call__(self, image, rng=None):
        height, width = _size_of(image)
        new_h, new_w = self.output_size(height, width)
        if (new_h, new_w) == (height, width):
            return image
        if new_h * new_w > self.max_pixels:
            raise ImageTooLarge(f"{width}x{height} pixels would become {new_w}x{new_h} with the shorter "
                                f"side at {self.size}: {new_w * new_h:,} pixels, above the limit of "
                                f"{self.max_pixels:,}")
        if _is_pil(image):
            return image.resize((new_w, new_h), self.resample)
        channels = [np.asarray(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32))
                               .resize((new_w, new_h), self.resample)) for c in image]
        return np.stack(channels).astype(np.float32, copy=False)

    def __repr__(self):
        return f"ResizeShorter({self.size})"


class CenterCrop:
    """The central ``size`` x ``size`` window; offsets ``(H - size) // 2``, ``(W - size) // 2``."""

    def __init__(self, size):
        self.size = int(size)

    def __call__(self, image, rng=None):
        height, width = _check_crop("CenterCrop", image, self.size)
        return _crop(image, (height - self.size) // 2, (width - self.size) // 2, self.size)

    def __repr__(self):
        return f"CenterCrop({self.size})"


class RandomCrop:
    """A ``size`` x ``size`` window at a uniformly random offset.

    Every valid offset can occur: top in 0..H-size and left in 0..W-size, both inclusive
    (0..29 for a 227 crop of a 256 image, 900 positions).
    """

    def __init__(self, size):
        self.size = int(size)

    def __call__(self, image, rng):
        _need_rng("RandomCrop", rng)
        height, width = _check_crop("RandomCrop", image, self.size)
        top = int(rng.integers(0, height - self.size + 1))
        left = int(rng.integers(0, width - self.size + 1))
        return _crop(image, top, left, self.size)

    def __repr__(self):
        return f"RandomCrop({self.size})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p`` (one draw per call, made even when p is 0 or 1)."""

    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, image, rng):
        _need_rng("RandomHorizontalFlip", rng)
        return _hflip(image) if rng.random() < self.p else image

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomVerticalFlip:
    """Mirror top-bottom with probability ``p`` (natural for overhead imagery such as EuroSAT)."""

    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, image, rng):
        _need_rng("RandomVerticalFlip", rng)
        if rng.random() < self.p:
            return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if _is_pil(image) else image[:, ::-1, :]
        return image

    def __repr__(self):
        return f"RandomVerticalFlip(p={self.p})"


class PCALighting:
    """The paper's "fancy PCA" colour augmentation.

    For each image, draw ``a_i ~ N(0, std)`` (std 0.1 in the paper) and add to every pixel

        offset = [p_1 ... p_C] @ [a_1 * l_1, ..., a_C * l_C]   i.e.  eigvec @ (a * eigval)

    where column ``p_i`` of ``eigvec`` is an eigenvector of the channel covariance and ``l_i``
    its eigenvalue. The offset therefore has covariance ``eigvec @ diag((std * eigval)^2) @
    eigvec.T``: strong along the dominant (brightness) direction, weak across colours.

    Scale convention: the eigenvalues enter linearly, so they must describe the pixel scale the
    transform sees. The defaults (``IMAGENET_EIGVAL`` / ``IMAGENET_EIGVEC``) are covariance
    eigenvalues for RGB pixels in [0, 1]: apply this transform to ``ToArray`` output, before
    ``Normalize``. (Code working on [0, 255] pixels multiplies the eigenvalues by 255, which is
    where the Caffe-era numbers 55.46, 4.794, 1.148 come from.) For another dataset, or another
    number of channels, compute both from its own training pixels with ``pca_from_images``, on
    the same scale. No clipping is done: the paper does not mention any.
    """

    def __init__(self, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC, std=0.1):
        self.eigval = np.asarray(eigval, dtype=np.float64)
        self.eigvec = np.asarray(eigvec, dtype=np.float64)
        channels = self.eigval.shape[0]
        if self.eigval.ndim != 1 or self.eigvec.shape != (channels, channels):
            raise ValueError(f"PCALighting: expected eigval of shape (C,) and eigvec of shape (C, C), got "
                             f"{self.eigval.shape} and {self.eigvec.shape}")
        self.std = float(std)

    def offset(self, rng):
        """One draw of the per-channel colour offset (float64, shape (C,))."""
        alpha = rng.normal(0.0, self.std, size=self.eigval.shape[0])
        return self.eigvec @ (alpha * self.eigval)

    def __call__(self, image, rng):
        _need_rng("PCALighting", rng)
        if _is_pil(image):
            raise TypeError("PCALighting: expects a CHW float array; put ToArray() before it")
        if image.shape[0] != self.eigval.shape[0]:
            raise ValueError(f"PCALighting: image has {image.shape[0]} channels but the eigenvectors "
                             f"describe {self.eigval.shape[0]}")
        offset = self.offset(rng).astype(image.dtype if image.dtype.kind == "f" else np.float32)
        return image + offset[:, None, None]

    def __repr__(self):
        return f"PCALighting(eigval={np.round(self.eigval, 4).tolist()}, std={self.std})"


class Normalize:
    """``(x - mean[c]) / std[c]`` per channel; the result keeps the image's float dtype."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"Normalize: mean has {self.mean.size} channels but std has {self.std.size}")
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: every std must be positive, got {self.std.tolist()}")

    def __call__(self, image, rng=None):
        if _is_pil(image):
            raise TypeError("Normalize: expects a CHW float array; put ToArray() before it")
        if image.shape[-3] != self.mean.size:
            raise ValueError(f"Normalize: image has {image.shape[-3]} channels but mean/std have "
                             f"{self.mean.size}")
        dtype = image.dtype if image.dtype.kind == "f" else np.dtype(np.float32)
        mean = self.mean.astype(dtype)[:, None, None]
        scale = (1.0 / self.std).astype(dtype)[:, None, None]
        return (image.astype(dtype, copy=False) - mean) * scale

    def __repr__(self):
        return f"Normalize(mean={np.round(self.mean, 4).tolist()}, std={np.round(self.std, 4).tolist()})"


def ten_crop(image, size):
    """The paper's test-time crops: the four corners and the centre, then the same five mirrored.

    Returns an array of shape (10, C, size, size), in the order top-left, top-right,
    bottom-left, bottom-right, centre, and then their horizontal mirrors in the same order
    (``crops[5 + i] == crops[i][:, :, ::-1]``). A Pillow image is converted with ``to_array``.
    Average the network's softmax outputs over the 10 crops.
    """
    if _is_pil(image):
        image = to_array(image)
    size = int(size)
    height, width = _check_crop("ten_crop", image, size)
    bottom, right = height - size, width - size
    offsets = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    crops = np.stack([_crop(image, top, left, size) for top, left in offsets])
    return np.concatenate([crops, crops[:, :, :, ::-1]])


class TenCrop:
    """Transform form of ``ten_crop``: a sample becomes (10, C, size, size), a batch (N, 10, C, size, size)."""

    def __init__(self, size):
        self.size = int(size)

    def __call__(self, image, rng=None):
        return ten_crop(image, self.size)

    def __repr__(self):
        return f"TenCrop({self.size})"


def alexnet_train_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop=227, pca=True,
                            eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC):
    """Paper training pipeline: shorter side 256, centre 256, random ``crop`` + flip, fancy PCA, normalise."""
    steps = [ResizeShorter(256), CenterCrop(256), RandomCrop(crop), RandomHorizontalFlip(), ToArray()]
    if pca:
        steps.append(PCALighting(eigval, eigvec))
    steps.append(Normalize(mean, std))
    return Compose(steps)


def alexnet_eval_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop=227, ten_crops=False):
    """Paper test pipeline: shorter side 256, centre 256, normalise, then the centre ``crop`` or 10 crops."""
    return Compose([ResizeShorter(256), CenterCrop(256), ToArray(), Normalize(mean, std),
                    TenCrop(crop) if ten_crops else CenterCrop(crop)])


# ---------------------------------------------------------------------------------------------
# Statistics of a dataset's pixels: per-channel mean/std (for Normalize) and the channel
# covariance's eigen-decomposition (for PCALighting).

def _iter_images(images):
    """Yield CHW arrays from: an (N, C, H, W) array, one CHW array, a dataset or an iterable of
    images, of (image, label) pairs, or of (images, labels) batches from a DataLoader."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            yield from images
            return
        if images.ndim == 3:
            yield images
            return
        raise ValueError(f"expected images of shape (N, C, H, W) or (C, H, W), got {images.shape}")
    if hasattr(images, "__len__") and hasattr(images, "__getitem__") and not isinstance(images, (list, tuple)):
        iterable = (images[i] for i in range(len(images)))  # a dataset
    else:
        iterable = images
    for item in iterable:
        if isinstance(item, tuple):
            item = item[0]
        if _is_pil(item):
            item = to_array(item)
        yield from _iter_images(np.asarray(item))


def _pixel_moments(images, max_pixels_per_image=None, seed=0):
    """Count, mean (C,) and covariance (C, C) of all pixels, accumulated image by image in
    float64 with Chan's pairwise update (stable for large, offset data such as uint16 counts)."""
    rng = np.random.default_rng(seed)
    count, mean, scatter = 0, None, None
    for position, image in enumerate(_iter_images(images)):
        pixels = np.asarray(image, dtype=np.float64).reshape(image.shape[0], -1)
        if max_pixels_per_image is not None and pixels.shape[1] > max_pixels_per_image:
            pixels = pixels[:, rng.choice(pixels.shape[1], int(max_pixels_per_image), replace=False)]
        n = pixels.shape[1]
        if n == 0:
            continue
        m = pixels.mean(axis=1)
        if not np.isfinite(m).all():  # one NaN would make every mean and std NaN
            raise ValueError(f"image {position} (counting from 0) has non-finite values (NaN or "
                             "infinite); refuse or mask them before computing statistics")
        centred = pixels - m[:, None]
        s = centred @ centred.T
        if mean is None:
            count, mean, scatter = n, m, s
            continue
        if m.shape != mean.shape:
            raise ValueError(f"images have different channel counts: {mean.shape[0]} and {m.shape[0]}")
        delta = m - mean
        total = count + n
        scatter = scatter + s + np.outer(delta, delta) * (count * n / total)
        mean = mean + delta * (n / total)
        count = total
    if mean is None:
        raise ValueError("no pixels: the image collection is empty")
    return count, mean, scatter / count


def channel_mean_std(images, max_pixels_per_image=None, seed=0):
    """Per-channel mean and standard deviation (float64 arrays of shape (C,)) over all pixels.

    Use the training split only (EuroSAT: "per-band normalisation computed from the training
    split"), then ``Normalize(mean, std)``. ``images`` is anything ``pca_from_images`` accepts.
    """
    _, mean, cov = _pixel_moments(images, max_pixels_per_image, seed)
    return mean, np.sqrt(np.diag(cov))


def pca_from_images(images, max_pixels_per_image=None, seed=0):
    """Eigenvalues and eigenvectors of the channel covariance of a dataset's pixels.

    ``images``: an (N, C, H, W) array, a dataset yielding (image, label), an iterable of CHW
    arrays, or a DataLoader's (images, labels) batches -- any number of channels (13 for
    EuroSAT). ``max_pixels_per_image`` subsamples pixels (seeded) to save time on big images.

    Returns ``(eigval, eigvec)``: eigenvalues in decreasing order (float64, shape (C,)) and the
    matching unit eigenvectors as the *columns* of ``eigvec`` (shape (C, C)), so that
    ``cov == eigvec @ diag(eigval) @ eigvec.T`` -- the form ``PCALighting`` expects. The
    covariance is the population one (divided by the number of pixels) and is in the units of
    the pixel values given: pass pixels on the scale the augmentation will see.
    """
    _, _, cov = _pixel_moments(images, max_pixels_per_image, seed)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return np.clip(eigval[order], 0.0, None), eigvec[:, order]
