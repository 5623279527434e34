"""Datasets stored as a folder per class: ``root/<class>/<file>`` (ImageNet, EuroSAT).

Classes are the sub-folders of ``root`` in sorted order, so ImageNet's wnids (n01440764, ...)
get the usual indices 0..999. Files inside a class folder are taken in natural order
(``x_2`` before ``x_10``). Hidden entries (names starting with ".") are ignored.

Files are decoded when a sample is requested, in the DataLoader's worker threads. A file that
cannot be decoded -- or decodes to something unusable: a thin strip that resizing would blow up
(``transforms.ImageTooLarge``), the wrong shape or type, non-finite pixels (``BadImage``) --
does not stop training: the first time it fails the dataset warns (``SkippedFileWarning``,
naming the file and the reason), records it in ``dataset.skipped``, and raises
``SkippedSample``, which the DataLoader answers by leaving that sample out of its batch.
``dataset.summary()`` is one line of counts (files used, skipped by reason, classes left with
no usable file); ``dataset.report()`` adds every skipped file. ``check_files=True`` decodes
every file once when the dataset is built and drops the bad ones up front (thorough, but it
reads the whole dataset: fine for thousands of files, slow for ImageNet's 1.28 million).
"""
import collections
import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .loader import SkippedSample, sample_rng
from .transforms import BadImage, eight_bit, to_array

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
        self.skip_counts = collections.Counter()  # reason ("cannot decode", "too large"...) -> files
        self._skipped_paths = set()
        self._skipped_per_class = collections.Counter()
        self._lock = threading.Lock()
        self.classes, self.samples = self._scan(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.files_per_class = np.bincount(self.targets, minlength=len(self.classes))
        self.checked = False  # has every file been decoded once (check_files, check_all)?
        if check_files:
            self.check_all()

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

    def check_all(self):
        """Decode (and transform) every file now; the unusable ones are recorded, named, and
        left out of ``samples``."""
        kept = []
        for index, (path, label) in enumerate(self.samples):
            try:
                self._load(path, label, sample_rng(0, 0, index))
            except SkippedSample:
                continue
            kept.append((path, label))
        self.samples = kept
        self.checked = True

    def _skip(self, path, error, label=None):
        """Record and warn, once per file. Returns False if it had already been recorded."""
        if isinstance(error, BadImage):
            kind, reason, text = error.kind, str(error), str(error)
        else:
            kind, reason = "cannot decode", f"{type(error).__name__}: {error}"
            text = f"cannot decode it ({reason})"
        with self._lock:
            if path in self._skipped_paths:
                return False
            self._skipped_paths.add(path)
            self.skipped.append((path, reason))
            self.skip_counts[kind] += 1
            if label is not None:
                self._skipped_per_class[label] += 1
        warnings.warn(f"{self.name}: skipping {path}: {text}", SkippedFileWarning, stacklevel=3)
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

        Raises ``SkippedSample`` if the file cannot be decoded or used (after warning once)."""
        path, label = self.samples[index]
        return self._load(path, label, rng), label

    def read(self, path, label=None):
        """``decode(path)``, a failure recorded and warned about once (naming the file) and
        raised as ``SkippedSample``: for code that reads files itself, such as pictures."""
        try:
            return self.decode(path)
        except (BadImage,) + DECODE_ERRORS as error:
            self._skip(path, error, label)
            raise SkippedSample(path) from error

    def _load(self, path, label, rng):
        image = self.read(path, label)
        if self.transform is not None:
            try:
                image = self.transform(image, rng)
            except BadImage as error:  # only this: a transform's other errors are wrong settings
                self._skip(path, error, label)
                raise SkippedSample(path) from error
        if isinstance(image, Image.Image):
            image = to_array(image)
        return image

    def __getitem__(self, index):
        """``get(index, rng)`` with a fixed generator per index (epoch 0 of seed 0)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        index %= len(self)
        return self.get(index, sample_rng(0, 0, index))

    def class_counts(self):
        return np.bincount(self.targets, minlength=len(self.classes))

    def empty_classes(self):
        """The classes all of whose files were skipped so far."""
        return [name for label, name in enumerate(self.classes)
                if self._skipped_per_class[label] >= self.files_per_class[label]]

    def summary(self):
        """One line: files found, used and skipped by reason, classes left with no usable file,
        and whether every file has been checked yet."""
        found = int(self.files_per_class.sum())
        skipped = len(self.skipped)
        reasons = ", ".join(f"{count} {kind}" for kind, count in sorted(self.skip_counts.items()))
        text = (f"{self.name} {self.root}: {found} files in {len(self.classes)} classes, "
                f"{found - skipped} used, {skipped} skipped" + (f" ({reasons})" if reasons else ""))
        masked = getattr(self, "masked", ())
        if masked:
            text += f"; {len(masked)} file(s) with NaN or infinite values masked"
        empty = self.empty_classes()
        text += f"; classes left with no usable file: {', '.join(empty)}" if empty else "; no class left empty"
        if not self.checked:
            text += " (files are checked as they are read: these are the counts so far)"
        return text

    def report(self):
        """``summary()`` and every file skipped so far, with why."""
        lines = [self.summary()]
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
        return open_rgb(path)


def open_rgb(path):
    """The image at ``path`` as 8-bit RGB: 16-bit grayscale scaled (``eight_bit``), palette,
    CMYK, grayscale and alpha images converted. ``convert`` also forces the full decode inside
    the ``with``, so a truncated file fails here."""
    with Image.open(path) as image:
        return eight_bit(image).convert("RGB")

