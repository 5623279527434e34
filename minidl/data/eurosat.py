"""EuroSAT: Sentinel-2 land-cover patches, 64x64 pixels, 10 classes, 27,000 images.

Two releases, both a folder per class with files named ``<Class>/<Class>_<k>``:

* multispectral (``EuroSAT_MS``, or ``ds/images/remote_sensing/otherDatasets/sentinel_2/tif`` in
  the original zip): 64x64x13 uint16 GeoTIFFs, read with ``tifffile``. The values are
  Sentinel-2 L1C digital numbers, top-of-atmosphere reflectance x 10000; this reader divides by
  10000 by default, giving reflectances of roughly 0..1. A file of another type (uint8,
  float32 reflectances...) would be scaled wrongly, so by default it is skipped, named; an
  explicit ``scale`` (e.g. ``scale=1.0`` for float reflectances) accepts any numeric type and
  multiplies it by that.
* RGB (``EuroSAT_RGB`` or ``2750``): 64x64 JPEGs, read as float32 in [0, 1].

Every file is checked as it is decoded, and skipped with its name and the reason
(``SkippedFileWarning``) when it is not ``size`` x ``size`` pixels with the release's bands,
has the wrong type, or holds NaN or infinite values -- unless ``nonfinite="mask"``, which
replaces those with the mean of the finite values of their band in that file (and warns).
``eurosat_splits`` decodes every file once before training, so its summary line is complete
and the bad files are out of both splits before the band statistics are taken.

Band order. The GeoTIFFs store the 13 bands as B01, B02, ..., B08, B09, B10, B11, B12, B8A --
the 865 nm narrow-NIR band B8A comes *last*, not after B08 where its wavelength puts it (see
phelber/EuroSAT issue #7 and torchgeo issue #2458, which corrected its own reader).
``band_order="file"`` (default) keeps the stored order; ``band_order="natural"`` reorders to
B01..B08, B8A, B09, B10, B11, B12. ``bands=("B04", "B03", "B02")`` picks any bands in any order.
``dataset.bands`` names the channels a sample has.

The study on the slides splits 4:1 into train and test; ``split_stratified`` does that per
class, seeded, and ``eurosat_splits`` builds both subsets with per-band normalisation whose mean
and std come from the training split only.
"""
import warnings
from pathlib import Path

import numpy as np

from .folder import FolderDataset, SkippedFileWarning, open_rgb
from .loader import DataLoader, Subset
from .transforms import (BadImage, Compose, Normalize, RandomHorizontalFlip, RandomVerticalFlip,
                         channel_mean_std, mask_nonfinite)

EUROSAT_CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "Residential", "River", "SeaLake")
FILE_BAND_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                   "B09", "B10", "B11", "B12", "B8A")
NATURAL_BAND_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                      "B8A", "B09", "B10", "B11", "B12")
RGB_BANDS = ("R", "G", "B")

# Where the class folders sit inside the archives as distributed.
_KNOWN_SUBFOLDERS = ("EuroSAT_MS", "EuroSATallBands", "ds/images/remote_sensing/otherDatasets/sentinel_2/tif",
                     "EuroSAT_RGB", "EuroSAT", "2750")


def _find_class_root(root):
    """``root`` itself if it holds class folders, else a known archive sub-folder that does."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"EuroSAT: dataset folder {root} does not exist (or is not a folder)")
    for candidate in (root,) + tuple(root / sub for sub in _KNOWN_SUBFOLDERS):
        if (candidate / EUROSAT_CLASSES[0]).is_dir() or (candidate / EUROSAT_CLASSES[-1]).is_dir():
            return candidate
    return root  # let the scan explain what is missing


def _detect_kind(root):
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for entry in folder.iterdir():
            suffix = entry.suffix.lower()
            if suffix in (".tif", ".tiff"):
                return "ms"
            if suffix in (".jpg", ".jpeg", ".png"):
                return "rgb"
    raise FileNotFoundError(f"EuroSAT: found neither .tif (multispectral) nor .jpg (RGB) files in the class "
                            f"folders of {root}")


class EuroSAT(FolderDataset):
    """EuroSAT from its class folders; samples are (C, 64, 64) float32 arrays and int labels.

    root: the extracted folder (its class folders, or a parent holding one of the archive
        layouts, e.g. ``EuroSAT_MS/``).
    kind: "ms" (13-band GeoTIFF), "rgb" (JPEG) or "auto" (from the files found).
    band_order: "file" (as stored, B8A last) or "natural" (B8A after B08); multispectral only.
    bands: names of the bands to keep, in the order wanted; overrides band_order.
    scale: None (default): multispectral files must be uint16 digital numbers, multiplied by
        1e-4 (-> reflectance); a number: files of any numeric type, multiplied by it.
    nonfinite: "refuse" (default: skip a file holding NaN or infinite values) or "mask".
    size: the width and height every file must have (64).
    transform: applied to the CHW float32 array with the sample's generator.
    """

    name = "EuroSAT"

    def __init__(self, root, transform=None, kind="auto", band_order="file", bands=None, scale=None,
                 check_files=False, nonfinite="refuse", size=64):
        root = _find_class_root(root)
        kind = _detect_kind(root) if kind == "auto" else kind
        if kind not in ("ms", "rgb"):
            raise ValueError(f"EuroSAT: kind must be 'ms', 'rgb' or 'auto', got {kind!r}")
        if band_order not in ("file", "natural"):
            raise ValueError(f"EuroSAT: band_order must be 'file' or 'natural', got {band_order!r}")
        self.kind = kind
        self.extensions = (".tif", ".tiff") if kind == "ms" else (".jpg", ".jpeg", ".png")
        stored = FILE_BAND_ORDER if kind == "ms" else RGB_BANDS
        if bands is None:
            bands = NATURAL_BAND_ORDER if (kind == "ms" and band_order == "natural") else stored
        unknown = [b for b in bands if b not in stored]
        if unknown:
            raise ValueError(f"EuroSAT: unknown band(s) {unknown} for the {kind} release; available: {list(stored)}")
        repeated = sorted({b for b in bands if list(bands).count(b) > 1})
        if repeated:
            raise ValueError(f"EuroSAT: band(s) {repeated} asked for more than once")
        if nonfinite not in ("refuse", "mask"):
            raise ValueError(f"EuroSAT: nonfinite must be 'refuse' or 'mask', got {nonfinite!r}")
        self.bands = tuple(bands)
        self.band_index = np.array([stored.index(b) for b in self.bands])
        self.scale = None if scale is None else float(scale)
        self.nonfinite, self.size = nonfinite, int(size)
        self.masked = []  # [(path, values replaced)] with nonfinite="mask"
        super().__init__(root, transform, check_files)

    def decode(self, path):
        """The file's bands as a (C, size, size) float32 array; ``BadImage`` (the file is then
        skipped, named) for the wrong size, band count or type, or non-finite values."""
        if self.kind == "rgb":
            hwc = np.asarray(open_rgb(path), dtype=np.float32)
            self._check_size(hwc.shape[:2])
            chw = hwc.transpose(2, 0, 1) / np.float32(255)
            return np.ascontiguousarray(chw[self.band_index])
        import tifffile  # imported here so that RGB-only and ImageNet users do not need it

        array = tifffile.imread(path)
        bands = len(FILE_BAND_ORDER)
        if array.ndim != 3 or bands not in (array.shape[0], array.shape[-1]):
            raise BadImage(f"expected a 13-band image ({self.size}x{self.size}x13), got shape {array.shape}",
                           "wrong shape")
        if array.shape[-1] != bands:  # stored band-first
            array = array.transpose(1, 2, 0)
        self._check_size(array.shape[:2])
        scale = self._scale_for(array.dtype)
        chw = array.transpose(2, 0, 1)[self.band_index].astype(np.float32)
        if chw.dtype.kind == "f" and array.dtype.kind == "f":
            chw = self._finite(path, chw)
        if scale != 1.0:
            chw *= np.float32(scale)
        return np.ascontiguousarray(chw)

    def _check_size(self, height_width):
        if tuple(height_width) != (self.size, self.size):
            height, width = height_width
            raise BadImage(f"{width}x{height} pixels, expected {self.size}x{self.size}", "wrong shape")

    def _scale_for(self, dtype):
        if self.scale is not None:
            if dtype.kind not in "uif":
                raise BadImage(f"has dtype {dtype}, not a number type", "wrong type")
            return self.scale
        if dtype != np.uint16:
            raise BadImage(f"has dtype {dtype}; EuroSAT MS files are uint16 digital numbers "
                           "(reflectance x 10000) -- give an explicit scale (--scale) to read "
                           "other data", "wrong type")
        return 1e-4

    def _finite(self, path, chw):
        if np.isfinite(chw).all():
            return chw
        if self.nonfinite == "refuse":
            count = int(chw.size - np.count_nonzero(np.isfinite(chw)))
            raise BadImage(f"holds {count} NaN or infinite value(s); pass nonfinite='mask' "
                           "(--nonfinite mask) to replace them with their band's mean", "non-finite values")
        chw, count = mask_nonfinite(chw)
        with self._lock:
            first = path not in {p for p, _ in self.masked}
            if first:
                self.masked.append((path, count))
        if first:  # once per file, not at every epoch
            warnings.warn(f"{self.name}: {path}: replaced {count} NaN or infinite value(s) with their "
                          "band's mean", SkippedFileWarning, stacklevel=4)
        return chw


def split_stratified(labels, train_fraction=0.8, seed=0):
    """Seeded per-class split into (train_indices, test_indices), sorted int64 arrays.

    ``labels``: a sequence of class indices, or a dataset with ``.targets``. Each class ``c``
    with ``n_c`` samples puts ``round(train_fraction * n_c)`` of them, chosen at random, in the
    training split (4:1 for the default 0.8), so both splits have the dataset's class balance.
    The same labels and seed always give the same split.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"split_stratified: train_fraction must be between 0 and 1, got {train_fraction}")
    labels = np.asarray(getattr(labels, "targets", labels))
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(np.floor(train_fraction * len(members) + 0.5))
        train.append(members[:n_train])
        test.append(members[n_train:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)


def eurosat_splits(root, train_fraction=0.8, seed=0, augment=False, band_order="natural", bands=None,
                   kind="auto", num_workers=None, stats_samples=None, scale=None, nonfinite="refuse"):
    """EuroSAT train and test subsets, normalised per band with the training split's statistics.

    Returns ``(train, test, (mean, std))``. Every file is decoded once first (with
    ``num_workers`` threads; None: the DataLoader's default): unusable ones are named, counted
    (``train.dataset.summary()``) and left out of both splits, so they never reach the
    statistics. ``augment`` adds random horizontal and vertical flips to the training subset
    (overhead images have no preferred orientation). ``stats_samples`` caps how many training
    images the mean/std are estimated from (a seeded random choice); None uses them all.
    ``scale`` and ``nonfinite``: see ``EuroSAT``.
    """
    dataset = EuroSAT(root, kind=kind, band_order=band_order, bands=bands, scale=scale, nonfinite=nonfinite)
    train_idx, test_idx = split_stratified(dataset.targets, train_fraction, seed)
    stats_idx = train_idx
    if stats_samples is not None and stats_samples < len(train_idx):
        stats_idx = np.sort(np.random.default_rng(seed).choice(train_idx, int(stats_samples), replace=False))
    # Decoding leaves the bad files out of the statistics (the loader skips them), and the
    # second pass reads the rest: every file is then checked once.
    try:
        mean, std = channel_mean_std(DataLoader(Subset(dataset, stats_idx), batch_size=256,
                                                num_workers=num_workers))
    except ValueError as error:
        raise ValueError(f"EuroSAT: cannot compute the band statistics ({error}); {dataset.summary()}") from None
    rest = np.setdiff1d(np.arange(len(dataset)), stats_idx)
    for _ in DataLoader(Subset(dataset, rest), batch_size=256, num_workers=num_workers):
        pass
    dataset.checked = True
    bad = {path for path, _ in dataset.skipped}
    usable = np.array([path not in bad for path, _ in dataset.samples], dtype=bool)
    train_idx, test_idx = train_idx[usable[train_idx]], test_idx[usable[test_idx]]
    normalize = Normalize(mean, std)
    train_transform = Compose([normalize, RandomHorizontalFlip(), RandomVerticalFlip()]) if augment else normalize
    return Subset(dataset, train_idx, train_transform), Subset(dataset, test_idx, normalize), (mean, std)
