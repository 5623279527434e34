"""Datasets stored as a folder per class: ``root/<class>/<file>`` (ImageNet, EuroSAT).

Classes are the sub-folders of ``root`` in sorted order, so ImageNet's wnids (n01440764, ...)
get the usual indices 0..999. Files inside a class folder are taken in natural order
(``x_2`` before ``x_10``). Hidden entries (names starting with ".") are ignored.

Files are decoded when a sample is requested, in the DataLoader's worker threads. A file that
cannot be decoded does not stop training: the first time it fails the dataset warns
(``SkippedFileWarning``, naming the file and the reason), records it in ``dataset.skipped``, and
raises ``SkippedSample``, which the DataLoader answers by leaving that sample out of its batch.
``dataset.report()`` summarises what was skipped. ``check_files=True`` decodes every file once
when the dataset is built and drops the bad ones up front (thorough, but it reads the whole
dataset: fine for thousands of files, slow for ImageNet's 1.28 million).
"""
import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .loader import SkippedSample, sample_rng
from .transforms import to_array

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


class SkippedFileWarning(UserWarning):
    """A file that could not be decoded and is left out."""


# What Pillow / tifffile raise on files that are not images, are truncated or corrupt.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class FolderDataset:
    """Shared machinery: scanning ``root/<class>/*``, labels, skipping undecodable files.

    Subclasses set ``extensions`` and implement ``decode(path) -> image``.
    """

    extensions = ()
    name = "FolderDataset"

    def __init__(self, root, transform=None, check_files=False):
        self.root = Path(root)
        self.transform = transform
        self.skipped = []  # [(path, reason)] for files that could not be decoded
        self._skipped_paths = set()
        self._lock = threading.Lock()
        self.classes, self.samples = self._scan(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        if check_files:
            self._check_all()

    # -- scanning -------------------------------------------------------------------------
    def _scan(self, root):
        if not root.is_dir():
            raise FileNotFoundError(f"{self.name}: dataset folder {root} does not exist (or is not a folder)")
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"{self.name}: no class folders in {root}; expected "
                                    f"{root}/<class>/<file> with files ending in {', '.join(self.extensions)}")
        samples = []
        for label, name in enumerate(classes):
            folder = root / name
            files = sorted((e.name for e in os.scandir(folder)
                            if e.is_file() and not e.name.startswith(".")
                            and e.name.lower().endswith(self.extensions)), key=_natural_key)
            if not files:
                raise FileNotFoundError(f"{self.name}: class folder {folder} contains no files ending in "
                                        f"{', '.join(self.extensions)} (case-insensitive)")
            samples.extend((str(folder / f), label) for f in files)
        return classes, samples

    def _check_all(self):
        kept = []
        for path, label in self.samples:
            try:
                self.decode(path)
            except DECODE_ERRORS as error:
                self._skip(path, error)
                continue
            kept.append((path, label))
        self.samples = kept

    def _skip(self, path, error):
        """Record and warn, once per file. Returns False if it had already been recorded."""
        with self._lock:
            if path in self._skipped_paths:
                return False
            self._skipped_paths.add(path)
            reason = f"{type(error).__name__}: {error}"
            self.skipped.append((path, reason))
        warnings.warn(f"{self.name}: skipping {path}: cannot decode it ({reason})", SkippedFileWarning, stacklevel=3)
        return True

    # -- access ---------------------------------------------------------------------------
    @property
    def targets(self):
        """The label of every sample, in order (for stratified splits and class counts)."""
        return np.fromiter((label for _, label in self.samples), dtype=np.int64, count=len(self.samples))

    def __len__(self):
        return len(self.samples)

    def decode(self, path):
        """The image or band array stored at ``path``: each subclass reads its own format."""
        raise NotImplementedError(f"{type(self).__name__} must implement decode(path)")

    def get(self, index, rng):
        """Sample ``index`` as (CHW float32 array, label), transformed with generator ``rng``.

        Raises ``SkippedSample`` if the file cannot be decoded (after warning once)."""
        path, label = self.samples[index]
        try:
            image = self.decode(path)
        except DECODE_ERRORS as error:
            self._skip(path, error)
            raise SkippedSample(path) from error
        if self.transform is not None:
            image = self.transform(image, rng)
        if isinstance(image, Image.Image):
            image = to_array(image)
        return image, label

    def __getitem__(self, index):
        """``get(index, rng)`` with a fixed generator per index (epoch 0 of seed 0)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        index %= len(self)
        return self.get(index, sample_rng(0, 0, index))

    def class_counts(self):
        return np.bincount(self.targets, minlength=len(self.classes))

    def report(self):
        """A short text: how many files and classes, and every file skipped so far, with why."""
        lines = [f"{self.name} {self.root}: {len(self)} files in {len(self.classes)} classes; "
                 f"{len(self.skipped)} undecodable file(s) skipped"]
        lines += [f"  skipped {path} ({reason})" for path, reason in self.skipped]
        return "\n".join(lines)

    def __repr__(self):
        return f"{self.name}(root={str(self.root)!r}, {len(self)} files, {len(self.classes)} classes)"


class ImageFolder(FolderDataset):
    """ImageNet-style folders: ``root/<class>/*.JPEG|jpg|jpeg|png`` (extension case ignored).

    Attributes: ``classes`` (sorted folder names), ``class_to_idx``, ``samples`` [(path,
    label)], ``targets``, ``skipped``. Images are decoded with Pillow and converted to RGB
    (grayscale and CMYK JPEGs, which ImageNet has, become 3-channel). With ``transform=None`` a
    sample is a (3, H, W) float32 array in [0, 1]; a transform receives the Pillow image and
    the sample's generator (see ``minidl.data.transforms``), and a Pillow image it returns is
    converted with ``to_array``.
    """

    extensions = IMAGE_EXTENSIONS
    name = "ImageFolder"

    def __init__(self, root, transform=None, check_files=False, extensions=IMAGE_EXTENSIONS):
        self.extensions = tuple(e.lower() for e in extensions)
        super().__init__(root, transform, check_files)

    def decode(self, path):
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() also forces the full decode inside the `with`
