"""Small generated stand-ins for ImageNet and EuroSAT, for demos and tests without downloads.

Both are written once into a folder and reused afterwards: the folder gets a
``.minidl-demo.json`` marker with the generator's parameters. A call with the same parameters
announces and reuses the folder. Generation writes into a temporary sibling folder
(``.<name>.partial-<pid>``) and renames it at the end, so an interrupted run leaves no
half-written dataset behind; a temporary folder left by a killed run is deleted, and named, by
the next generation.

What is never lost or changed under someone:

* A non-empty folder *without* the marker is never touched (FileExistsError).
* Different parameters regenerate the folder only if it holds nothing but the files the
  generator wrote; a file someone added (notes, results) makes it refuse, naming the file,
  and then nothing is deleted. Regeneration deletes those files one by one, never the folder
  wholesale.
* A process that uses a demo folder holds a shared lock on it (``flock`` on
  ``.<name>.lock`` beside it) until it exits; regenerating needs the lock alone, so a run
  training on the folder never sees its files change -- the other process is refused and told
  to use another folder. Two processes asking for the same new folder take turns: the second
  waits, then reuses what the first wrote.

* ``make_demo_imagenet``: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` (the
  usual re-organised ILSVRC layout), 256x256 RGB. The class is the *shape* of the pattern --
  a disc, horizontal stripes, vertical stripes, a checkerboard, ... -- drawn with random
  foreground and background colours, position, scale, rotation jitter, shading and noise, so
  the mean colour of an image says nothing about its class, but a small CNN learns the classes
  in a few epochs. Horizontal flips (the paper's augmentation) keep every class a class.
* ``make_demo_eurosat``: ``root/<Class>/<Class>_<k>.tif`` (k from 1), 64x64x13 uint16 in the
  real EuroSAT MS layout, band order as in the real files (B8A last). Each pixel mixes a few
  material spectra (vegetation, grass, soil, water, asphalt, roofs; top-of-atmosphere
  reflectance x 10000) with class-specific spatial layouts (crop fields in strips, orchards in
  rows, a road or a river across the patch, building blocks, ...), per-image gain and noise.
"""
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .eurosat import EUROSAT_CLASSES, FILE_BAND_ORDER, NATURAL_BAND_ORDER

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the rest still holds
    fcntl = None

MARKER = ".minidl-demo.json"
_held = {}  # lock file path -> open file descriptor, kept (shared) until the process exits


def default_root(name):
    """Where a demo dataset goes when no folder is given: ``$MINIDL_DATA/<name>``, else
    ``$XDG_CACHE_HOME/minidl/<name>`` (``~/.cache/minidl/<name>``)."""
    if os.environ.get("MINIDL_DATA"):
        return Path(os.environ["MINIDL_DATA"]) / name
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "minidl" / name


def _announce(message, verbose):
    if verbose:
        print(f"minidl.data: {message}", file=sys.stderr, flush=True)


class DemoFolderBusy(RuntimeError):
    """Another process is using the demo folder that would have to be regenerated."""


def _lock(root, exclusive, wait):
    """Hold ``.<name>.lock`` beside ``root``: shared (using the data) or exclusive (writing it).
    The descriptor stays open for the life of the process, so the shared hold lasts as long as
    the process may read the files. Returns False where an exclusive hold is refused."""
    if fcntl is None:
        return True
    path = str(root.parent / f".{root.name}.lock")
    fd = _held.get(path)
    if fd is None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = _held[path] = os.open(path, flags, 0o644)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a refused upgrade may have dropped the shared hold
        return False
    except OSError:  # a file system without flock
        return True
    return True


def _files_under(root):
    """Every file and link below ``root`` (relative paths, as strings), folders left out."""
    found = set()
    for folder, folders, files in os.walk(root):
        for name in files + [d for d in folders if os.path.islink(os.path.join(folder, d))]:
            found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


def _remove_generated(root, expected):
    """Delete the generator's files listed in ``expected`` and the folders they leave empty;
    refuse (deleting nothing) if ``root`` holds anything else."""
    foreign = sorted(_files_under(root) - set(expected) - {MARKER})
    if foreign:
        raise FileExistsError(f"{root} holds a demo dataset made with other parameters, and also "
                              f"{len(foreign)} file(s) the generator did not write ("
                              f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                              "nothing was deleted: move them, or pass another folder")
    for name in sorted(expected) + [MARKER]:
        try:
            os.unlink(root / name)
        except FileNotFoundError:
            pass
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        os.rmdir(folder)  # empty now; a file that appeared meanwhile makes this fail, loudly


def _remove_stale_partials(root, verbose):
    """Delete temporary folders of generations that were killed (called holding the lock
    alone, so none of them is being written)."""
    pattern = re.compile(r"^\." + re.escape(root.name) + r"\.partial-\d+$")
    for entry in root.parent.iterdir():
        if pattern.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            _announce(f"deleted {entry}, left by a demo generation that was killed", verbose)


def _read_marker(root):
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_once(root, params, write, expected_files, verbose):
    """Run ``write(tmp_folder)`` unless ``root`` already holds this exact demo dataset; see the
    module docstring for what is never deleted or changed. ``expected_files(params)`` lists the
    files (relative paths) a generation with ``params`` writes."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    if not _lock(root, exclusive=False, wait=True):  # waits while another process writes it
        raise DemoFolderBusy(f"cannot lock {root}")
    if (root / MARKER).is_file() and _read_marker(root) == params:
        _announce(f"using the cached demo {params['dataset']} dataset in {root}", verbose)
        return root, False
    if not _lock(root, exclusive=True, wait=False):
        raise DemoFolderBusy(f"{root} is in use by another process, and it holds a demo dataset made "
                             f"with other parameters ({_read_marker(root)}); pass another folder "
                             "(--demo-dir) or wait for that process to end")
    try:
        existing = _read_marker(root) if (root / MARKER).is_file() else None
        if existing == params:  # written by another process while we waited
            _announce(f"using the cached demo {params['dataset']} dataset in {root}", verbose)
            return root, False
        if existing is None and root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise FileExistsError(f"{root} exists and is not a minidl demo dataset (no {MARKER}); "
                                  "pass an empty or new folder")
        _remove_stale_partials(root, verbose)
        _announce(f"writing a demo {params['dataset']} dataset to {root} (once; later calls reuse it)", verbose)
        tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
        tmp.mkdir()
        try:
            write(tmp)
            (tmp / MARKER).write_text(json.dumps(params, indent=1))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if existing is not None:
            _announce(f"{root} held a demo dataset made with other parameters; replacing its files", verbose)
            try:
                _remove_generated(root, expected_files(existing))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        elif root.exists():
            root.rmdir()  # empty
        os.replace(tmp, root)
    finally:
        _lock(root, exclusive=False, wait=True)  # back to the shared hold of a user of the data
    return root, True


# ---------------------------------------------------------------------------------------------
# ImageNet-style demo: patterns whose shape is the class.

def _rotated(xx, yy, angle):
    c, s = np.cos(angle), np.sin(angle)
    return xx * c + yy * s, -xx * s + yy * c


def _soft(signed_distance, size):
    """Coverage from a signed distance (in image widths, positive inside): ~1.5 px soft edge."""
    return np.clip(0.5 + signed_distance * size / 1.5, 0.0, 1.0)


def _stripes(rng, xx, yy, size, across):
    # across: the angle along which intensity varies (pi/2: horizontal stripes), +-15 degrees.
    angle = across + rng.uniform(-1, 1) * np.pi / 12
    t, _ = _rotated(xx, yy, angle)
    period = rng.uniform(0.07, 0.16)
    wave = np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    return _soft(wave * period / (2 * np.pi), size)


def _disc(rng, xx, yy, size):
    cx, cy = rng.uniform(0.35, 0.65, size=2)
    radius = rng.uniform(0.16, 0.3)
    return _soft(radius - np.hypot(xx - cx, yy - cy), size)


def _square(rng, xx, yy, size):
    cx, cy = rng.uniform(0.35, 0.65, size=2)
    u, v = _rotated(xx - cx, yy - cy, rng.uniform(0, np.pi / 2))
    half = rng.uniform(0.14, 0.26)
    return _soft(half - np.maximum(np.abs(u), np.abs(v)), size)


def _checkerboard(rng, xx, yy, size):
    u, v = _rotated(xx, yy, rng.uniform(0, np.pi / 2))
    cell = rng.uniform(0.07, 0.15)
    return ((np.floor(u / cell + rng.uniform()) + np.floor(v / cell + rng.uniform())) % 2).astype(np.float64)


def _rings(rng, xx, yy, size):
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    period = rng.uniform(0.07, 0.14)
    wave = np.sin(2 * np.pi * np.hypot(xx - cx, yy - cy) / period + rng.uniform(0, 2 * np.pi))
    return _soft(wave * period / (2 * np.pi), size)


def _dots(rng, xx, yy, size):
    u, v = _rotated(xx, yy, rng.uniform(0, np.pi / 2))
    spacing = rng.uniform(0.08, 0.14)
    radius = spacing * rng.uniform(0.22, 0.35)
    du = (u / spacing + rng.uniform()) % 1.0 - 0.5
    dv = (v / spacing + rng.uniform()) % 1.0 - 0.5
    return _soft(radius - np.hypot(du, dv) * spacing, size)


def _cross(rng, xx, yy, size):
    cx, cy = rng.uniform(0.35, 0.65, size=2)
    u, v = _rotated(xx - cx, yy - cy, rng.uniform(-1, 1) * np.pi / 12)
    arm, width = rng.uniform(0.2, 0.32), rng.uniform(0.05, 0.09)
    bar1 = np.minimum(arm - np.abs(u), width - np.abs(v))
    bar2 = np.minimum(arm - np.abs(v), width - np.abs(u))
    return _soft(np.maximum(bar1, bar2), size)


DEMO_IMAGENET_CLASSES = {
    "disc": _disc,
    "horizontal_stripes": lambda rng, xx, yy, size: _stripes(rng, xx, yy, size, np.pi / 2),
    "vertical_stripes": lambda rng, xx, yy, size: _stripes(rng, xx, yy, size, 0.0),
    "checkerboard": _checkerboard,
    "square": _square,
    "rings": _rings,
    "dots": _dots,
    "cross": _cross,
}


def _random_colours(rng):
    """Foreground and background colours with enough contrast to see the pattern."""
    while True:
        fg, bg = rng.uniform(0, 1, size=3), rng.uniform(0, 1, size=3)
        if np.linalg.norm(fg - bg) > 0.45:
            return fg, bg


def demo_imagenet_image(class_name, rng, size=256):
    """One generated RGB image (uint8, H x W x 3) of the given demo class."""
    coords = (np.arange(size) + 0.5) / size
    xx, yy = np.meshgrid(coords, coords)
    coverage = DEMO_IMAGENET_CLASSES[class_name](rng, xx, yy, size)[:, :, None]
    fg, bg = _random_colours(rng)
    image = bg * (1 - coverage) + fg * coverage
    shade_dir = rng.uniform(0, 2 * np.pi)
    image = image + rng.uniform(0, 0.25) * ((xx * np.cos(shade_dir) + yy * np.sin(shade_dir)) - 0.5)[:, :, None]
    image = image + rng.normal(0, rng.uniform(0.02, 0.08), size=image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_demo_imagenet(root=None, num_classes=4, train_per_class=100, val_per_class=20, size=256, seed=0,
                       verbose=True):
    """Write (once) a small ImageNet-style dataset; returns ``root`` (a Path).

    Layout: ``root/train/<class>/<class>_<k>.JPEG`` and ``root/val/<class>/val_<k>.JPEG``; the
    classes are the first ``num_classes`` (at most 8) of ``DEMO_IMAGENET_CLASSES``. Read it with
    ``ImageFolder(root / "train")``. 256x256 JPEGs are ~15-25 kB each; 4 classes x 120 images
    take ~5 s to write on one core. ``root=None``: ``default_root("demo-imagenet")``.
    """
    root = default_root("demo-imagenet") if root is None else root
    names = list(DEMO_IMAGENET_CLASSES)
    if not 1 <= num_classes <= len(names):
        raise ValueError(f"make_demo_imagenet: num_classes must be between 1 and {len(names)}, got {num_classes}")
    params = {"dataset": "imagenet", "version": 1, "num_classes": int(num_classes),
              "train_per_class": int(train_per_class), "val_per_class": int(val_per_class),
              "size": int(size), "seed": int(seed)}

    def write(folder):
        for c, name in enumerate(names[:num_classes]):
            for split, count, stem in (("train", train_per_class, name), ("val", val_per_class, "val")):
                out = folder / split / name
                out.mkdir(parents=True)
                for k in range(1, count + 1):
                    # One stream per image: the dataset does not depend on generation order.
                    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(c, split == "val", k)))
                    Image.fromarray(demo_imagenet_image(name, rng, size)).save(out / f"{stem}_{k}.JPEG", quality=90)

    root, _ = _write_once(root, params, write, _imagenet_files, verbose)
    return root


def _imagenet_files(params):
    """The files ``make_demo_imagenet`` writes with ``params`` (relative paths)."""
    names = list(DEMO_IMAGENET_CLASSES)[:params["num_classes"]]
    return {os.path.join(split, name, f"{stem}_{k}.JPEG")
            for name in names
            for split, count, stem in (("train", params["train_per_class"], name),
                                       ("val", params["val_per_class"], "val"))
            for k in range(1, count + 1)}


# ---------------------------------------------------------------------------------------------
# EuroSAT demo: 13-band patches mixed from material spectra with class-specific layouts.

# Rough Sentinel-2 L1C spectra (top-of-atmosphere reflectance x 10000), bands in NATURAL order
# B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12. Vegetation: dark red, bright near-IR;
# water: dark beyond green; B10 (cirrus) is near zero over everything.
MATERIAL_SPECTRA = {
    "vegetation": [1300, 1050, 950, 700, 1200, 2200, 2600, 2500, 2800, 900, 15, 1600, 850],
    "grass": [1350, 1150, 1150, 1100, 1500, 2000, 2250, 2200, 2400, 850, 15, 2300, 1500],
    "soil": [1450, 1350, 1500, 1800, 2000, 2200, 2350, 2400, 2500, 900, 20, 3200, 2600],
    "water": [1350, 1100, 900, 650, 550, 450, 420, 380, 350, 150, 8, 200, 120],
    "asphalt": [1400, 1250, 1200, 1250, 1300, 1350, 1400, 1450, 1500, 600, 12, 1900, 1700],
    "roof": [1700, 1650, 1700, 1850, 1950, 2050, 2150, 2200, 2300, 800, 20, 2700, 2400],
}
_MATERIALS = list(MATERIAL_SPECTRA)


def _smooth_noise(rng, size, cells):
    """Smooth random field in [0, 1]: a cells x cells grid of uniform values, bicubically enlarged."""
    grid = rng.uniform(0, 1, size=(cells, cells)).astype(np.float32)
    field = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    low, high = field.min(), field.max()
    return (field - low) / (high - low + 1e-12)


def _abundances(class_name, rng, size):
    """Fraction of each material in every pixel: (len(_MATERIALS), size, size), summing to 1.

    Long because it is one branch per class, each a few lines of drawing: split up, the ten
    recipes would no longer read side by side."""
    a = {m: np.zeros((size, size)) for m in _MATERIALS}
    coords = np.arange(size) + 0.5
    xx, yy = np.meshgrid(coords, coords)

    def background(kind):
        n = _smooth_noise(rng, size, rng.integers(3, 7))
        if kind == "green":
            a["vegetation"][:] = 0.3 + 0.5 * n
            a["grass"][:] = 1 - a["vegetation"]
        else:  # farmland
            a["grass"][:] = 0.4 + 0.4 * n
            a["soil"][:] = 1 - a["grass"]

    def paint(material, mask):
        for m in _MATERIALS:
            a[m] *= 1 - mask
        a[material] += mask

    if class_name == "Forest":
        n = _smooth_noise(rng, size, rng.integers(6, 12))
        a["vegetation"][:] = 0.8 + 0.2 * n
        a["grass"][:] = 1 - a["vegetation"]
    elif class_name == "HerbaceousVegetation":
        n, m = _smooth_noise(rng, size, rng.integers(8, 16)), _smooth_noise(rng, size, rng.integers(8, 16))
        a["vegetation"][:] = 0.15 + 0.45 * n
        a["soil"][:] = 0.25 * m
        a["grass"][:] = 1 - a["vegetation"] - a["soil"]
    elif class_name == "Pasture":
        n = _smooth_noise(rng, size, rng.integers(2, 5))
        a["grass"][:] = 0.6 + 0.3 * n
        a["vegetation"][:] = 1 - a["grass"]
    elif class_name == "AnnualCrop":
        t, _ = _rotated(xx, yy, rng.uniform(0, np.pi))
        field = np.floor(t / rng.uniform(6, 14)).astype(int)
        mixes = rng.dirichlet([1.0, 1.0, 1.0], size=field.max() - field.min() + 1)
        for i, m in enumerate(("vegetation", "grass", "soil")):
            a[m][:] = mixes[field - field.min(), i]
    elif class_name == "PermanentCrop":
        background("farmland")
        u, v = _rotated(xx, yy, rng.uniform(0, np.pi))
        spacing = rng.uniform(4, 6)
        du, dv = (u / spacing) % 1.0 - 0.5, (v / spacing) % 1.0 - 0.5
        paint("vegetation", np.clip(0.5 + (0.3 - np.hypot(du, dv)) * spacing, 0, 1))
    elif class_name == "Highway":
        background(rng.choice(["green", "farmland"]))
        u, _ = _rotated(xx - size / 2 - rng.uniform(-10, 10), yy - size / 2, rng.uniform(0, np.pi))
        paint("asphalt", np.clip(rng.uniform(1.5, 3) - np.abs(u) + 0.5, 0, 1))
    elif class_name == "Industrial":
        a["asphalt"][:] = 0.6
        a["soil"][:] = 0.4
        for _ in range(rng.integers(4, 9)):
            h, w = rng.integers(8, 28, size=2)
            top, left = rng.integers(0, size - 4, size=2)
            mask = np.zeros((size, size))
            mask[top:top + h, left:left + w] = 1
            paint(rng.choice(["roof", "asphalt"], p=[0.7, 0.3]), mask)
    elif class_name == "Residential":
        background("green")
        u, v = _rotated(xx, yy, rng.uniform(0, np.pi / 2))
        spacing = rng.uniform(6, 9)
        du, dv = (u / spacing) % 1.0, (v / spacing) % 1.0
        house = ((du > 0.2) & (du < 0.65) & (dv > 0.2) & (dv < 0.65)).astype(float)
        street = (dv > 0.85).astype(float)
        paint("roof", house)
        paint("asphalt", street)
    elif class_name == "River":
        background("green")
        angle = rng.uniform(0, np.pi)
        u, v = _rotated(xx - size / 2, yy - size / 2, angle)
        centre = rng.uniform(4, 10) * np.sin(2 * np.pi * v / rng.uniform(30, 70) + rng.uniform(0, 2 * np.pi))
        paint("water", np.clip(rng.uniform(2, 5) - np.abs(u - centre) + 0.5, 0, 1))
    elif class_name == "SeaLake":
        n = _smooth_noise(rng, size, rng.integers(3, 6))
        a["water"][:] = 0.9 + 0.1 * n
        a["vegetation"][:] = 1 - a["water"]
        if rng.random() < 0.3:  # a shore
            u, _ = _rotated(xx - size / 2, yy - size / 2, rng.uniform(0, 2 * np.pi))
            paint("grass", np.clip(u - rng.uniform(12, 26), 0, 1))
    else:
        raise ValueError(f"make_demo_eurosat: unknown class {class_name!r}; expected one of {EUROSAT_CLASSES}")
    return np.stack([a[m] for m in _MATERIALS])


def demo_eurosat_image(class_name, rng, size=64):
    """One generated patch: (size, size, 13) uint16, bands in the EuroSAT *file* order (B8A last)."""
    spectra = np.array([MATERIAL_SPECTRA[m] for m in _MATERIALS], dtype=np.float64)  # (materials, bands)
    abundance = _abundances(class_name, rng, size)
    image = np.einsum("mhw,mb->hwb", abundance, spectra)
    image *= rng.uniform(0.85, 1.15) * (1 + rng.normal(0, 0.03, size=spectra.shape[1]))  # illumination, atmosphere
    image += rng.normal(0, 1, size=image.shape) * (20 + 0.02 * image)  # sensor noise
    to_file_order = [NATURAL_BAND_ORDER.index(b) for b in FILE_BAND_ORDER]
    return np.clip(image[:, :, to_file_order] + 0.5, 0, 65535).astype(np.uint16)


def make_demo_eurosat(root=None, per_class=100, seed=0, classes=EUROSAT_CLASSES, size=64, verbose=True):
    """Write (once) a EuroSAT-MS-like dataset: ``root/<Class>/<Class>_<k>.tif``; returns ``root``.

    ``per_class`` patches per class (the real dataset has 2,000-3,000); each file is an
    uncompressed 64x64x13 uint16 TIFF (~107 kB), like the real ones, without the geo-referencing
    tags. Read it with ``EuroSAT(root)``. ``root=None``: ``default_root("demo-eurosat")``.
    """
    import tifffile

    root = default_root("demo-eurosat") if root is None else root
    classes = tuple(classes)
    unknown = [c for c in classes if c not in EUROSAT_CLASSES]
    if unknown:
        raise ValueError(f"make_demo_eurosat: unknown class(es) {unknown}; expected names from {EUROSAT_CLASSES}")
    params = {"dataset": "eurosat", "version": 1, "per_class": int(per_class), "seed": int(seed),
              "classes": list(classes), "size": int(size)}

    def write(folder):
        for name in classes:
            (folder / name).mkdir()
            for k in range(1, per_class + 1):
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(EUROSAT_CLASSES.index(name), k)))
                tifffile.imwrite(folder / name / f"{name}_{k}.tif", demo_eurosat_image(name, rng, size),
                                 photometric="minisblack", planarconfig="contig")

    root, _ = _write_once(root, params, write, _eurosat_files, verbose)
    return root


def _eurosat_files(params):
    """The files ``make_demo_eurosat`` writes with ``params`` (relative paths)."""
    return {os.path.join(name, f"{name}_{k}.tif")
            for name in params["classes"] for k in range(1, params["per_class"] + 1)}
