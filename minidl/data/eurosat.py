"""EuroSAT: Sentinel-2 land-cover patches, 64x64 pixels, 10 classes, 27,000 images.

Two releases, both a folder per class with files named ``<Class>/<Class>_<k>``:

* multispectral (``EuroSAT_MS``, or ``ds/images/remote_sensing/otherDatasets/sentinel_2/tif`` in
  the original zip): 64x64x13 uint16 GeoTIFFs, read with ``tifffile``. The values are
  Sentinel-2 L1C digital numbers, top-of-atmosphere reflectance x 10000; this reader divides by
  10000 by default (``scale``), giving reflectances of roughly 0..1.
* RGB (``EuroSAT_RGB`` or ``2750``): 64x64 JPEGs, read as float32 in [0, 1].

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
from pathlib import Path

import numpy as np
from PIL import Image

from .folder import FolderDataset
from .loader import DataLoader, Subset
from .transforms import Compose, Normalize, RandomHorizontalFlip, RandomVerticalFlip, channel_mean_std

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
    scale: multiplies the multispectral digital numbers (default 1e-4 -> reflectance).
    transform: applied to the CHW float32 array with the sample's generator.
    """

    name = "EuroSAT"

    def __init__(self, root, transform=None, kind="auto", band_order="file", bands=None, scale=1e-4,
                 check_files=False):
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
        self.bands = tuple(bands)
        self.band_index = np.array([stored.index(b) for b in self.bands])
        self.scale = float(scale)
        super().__init__(root, transform, check_files)

    def decode(self, path):
        if self.kind == "rgb":
            with Image.open(path) as image:
                chw = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
            return np.ascontiguousarray(chw[self.band_index])
        import tifffile  # imported here so that RGB-only and ImageNet users do not need it

        array = tifffile.imread(path)
        if array.ndim != 3 or len(FILE_BAND_ORDER) not in (array.shape[0], array.shape[-1]):
            raise ValueError(f"expected a 13-band image (64x64x13), got shape {array.shape}")
        if array.shape[-1] != len(FILE_BAND_ORDER):  # stored band-first
            array = array.transpose(1, 2, 0)
        chw = array.transpose(2, 0, 1)[self.band_index].astype(np.float32)
        if self.scale != 1.0:
            chw *= np.float32(self.scale)
        return np.ascontiguousarray(chw)


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
                   kind="auto", num_workers=2, stats_samples=None):
    """EuroSAT train and test subsets, normalised per band with the training split's statistics.

    Returns ``(train, test, (mean, std))``. ``augment`` adds random horizontal and vertical
    flips to the training subset (overhead images have no preferred orientation).
    ``stats_samples`` caps how many training images the mean/std are estimated from (a seeded
    random choice); None uses them all.
    """
    dataset = EuroSAT(root, kind=kind, band_order=band_order, bands=bands)
    train_idx, test_idx = split_stratified(dataset.targets, train_fraction, seed)
    stats_idx = train_idx
    if stats_samples is not None and stats_samples < len(train_idx):
        stats_idx = np.sort(np.random.default_rng(seed).choice(train_idx, int(stats_samples), replace=False))
    loader = DataLoader(Subset(dataset, stats_idx), batch_size=256, num_workers=num_workers)
    mean, std = channel_mean_std(loader)
    normalize = Normalize(mean, std)
    train_transform = Compose([normalize, RandomHorizontalFlip(), RandomVerticalFlip()]) if augment else normalize
    return Subset(dataset, train_idx, train_transform), Subset(dataset, test_idx, normalize), (mean, std)
