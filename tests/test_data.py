"""minidl.data: folders, transforms, EuroSAT, the DataLoader and the demo datasets.

Small folders are generated in tmp_path; everything is seeded.
"""
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from minidl import data
from minidl.data import transforms as T


def _write_jpeg(path, seed=0, size=(40, 30), fmt="JPEG"):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def _coordinate_image(height, width):
    """CHW float image whose channel 0 holds the row index and channel 1 the column index."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([rows, cols, rows * 0])


# ----------------------------------------------------------------------------- ImageFolder

def test_image_folder_classes_sorted_and_extensions(tmp_path):
    for wnid, names in {"n02": ["a.JPEG", "b.jpg"], "n01": ["x_10.jpeg", "x_2.PNG"], "n10": ["z.JpG"]}.items():
        for i, name in enumerate(names):
            _write_jpeg(tmp_path / wnid / name, seed=i, fmt="PNG" if name.lower().endswith("png") else "JPEG")
    (tmp_path / "n10" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    ds = data.ImageFolder(tmp_path)
    assert ds.classes == ["n01", "n02", "n10"]
    assert ds.class_to_idx == {"n01": 0, "n02": 1, "n10": 2}
    names = [p.split("/")[-1] for p, _ in ds.samples]
    assert names == ["x_2.PNG", "x_10.jpeg", "a.JPEG", "b.jpg", "z.JpG"]  # natural order inside a class
    assert ds.targets.tolist() == [0, 0, 1, 1, 2]
    image, label = ds[2]
    assert image.shape == (3, 30, 40) and image.dtype == np.float32 and label == 1
    assert 0.0 <= image.min() and image.max() <= 1.0
    with pytest.raises(IndexError):
        ds[5]


def test_image_folder_grayscale_becomes_rgb(tmp_path):
    path = tmp_path / "c" / "g.png"
    path.parent.mkdir()
    Image.fromarray(np.full((8, 9), 200, np.uint8)).save(path)
    image, _ = data.ImageFolder(tmp_path)[0]
    assert image.shape == (3, 8, 9)
    np.testing.assert_allclose(image, 200 / 255, rtol=1e-6)


def test_undecodable_file_skipped_with_warning_and_counted(tmp_path):
    _write_jpeg(tmp_path / "cat" / "good_1.JPEG", seed=1)
    _write_jpeg(tmp_path / "cat" / "good_2.JPEG", seed=2)
    (tmp_path / "cat" / "bad.JPEG").write_bytes(b"this is not a jpeg")
    good = tmp_path / "dog" / "good_3.JPEG"
    _write_jpeg(good, seed=3)
    truncated = tmp_path / "dog" / "truncated.JPEG"
    truncated.write_bytes(good.read_bytes()[:200])
    ds = data.ImageFolder(tmp_path)
    assert len(ds) == 5
    loader = data.DataLoader(ds, batch_size=5, num_workers=0)
    with pytest.warns(data.SkippedFileWarning) as caught:
        (images, labels), = list(loader)
    messages = " ".join(str(w.message) for w in caught)
    assert "bad.JPEG" in messages and "truncated.JPEG" in messages
    assert images.shape == (3, 3, 30, 40) and labels.tolist() == [0, 0, 1]
    assert sorted(p.split("/")[-1] for p, _ in ds.skipped) == ["bad.JPEG", "truncated.JPEG"]
    report = ds.report()
    assert "5 files in 2 classes, 3 used, 2 skipped (2 cannot decode)" in report and "bad.JPEG" in report
    assert "no class left empty" in report and "checked as they are read" in report
    # The second epoch does not warn again, and still leaves them out.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (images, labels), = list(loader)
    assert len(labels) == 3 and len(ds.skipped) == 2
    # Direct access raises a clear exception rather than returning a bogus sample.
    bad_index = [p.split("/")[-1] for p, _ in ds.samples].index("bad.JPEG")
    with pytest.raises(data.SkippedSample):
        ds[bad_index]
    # check_files=True drops them at construction time.
    with pytest.warns(data.SkippedFileWarning) as caught:
        checked = data.ImageFolder(tmp_path, check_files=True)
    assert len(caught) == 2 and "bad.JPEG" in str(caught[0].message)
    assert len(checked) == 3 and len(checked.skipped) == 2


def test_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        data.ImageFolder(tmp_path / "does-not-exist")
    (tmp_path / "root").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders in .*root"):
        data.ImageFolder(tmp_path / "root")
    _write_jpeg(tmp_path / "root" / "full" / "a.jpg")
    (tmp_path / "root" / "empty").mkdir()
    (tmp_path / "root" / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"class folder .*empty contains no files"):
        data.ImageFolder(tmp_path / "root")


# ----------------------------------------------------------------------------- transforms

def test_resize_shorter_and_center_crop_geometry():
    rng = np.random.default_rng(0)
    pil = Image.new("RGB", (400, 300))
    resized = T.ResizeShorter(256)(pil, rng)
    assert resized.size == (341, 256)  # (width, height)
    assert T.ResizeShorter(256)(Image.new("RGB", (300, 500)), rng).size == (256, 427)
    cropped = T.CenterCrop(256)(resized, rng)
    assert cropped.size == (256, 256)
    array = T.ResizeShorter(256)(np.ones((13, 64, 80), np.float32), rng)  # any channel count
    assert array.shape == (13, 256, 320) and array.dtype == np.float32
    np.testing.assert_allclose(array, 1.0, rtol=1e-5)
    coords = _coordinate_image(256, 300)
    centre = T.CenterCrop(227)(coords, rng)
    assert centre.shape == (3, 227, 227)
    assert centre[0, 0, 0] == (256 - 227) // 2 and centre[1, 0, 0] == (300 - 227) // 2
    with pytest.raises(ValueError, match="CenterCrop: cannot take a 300x300 crop"):
        T.CenterCrop(300)(coords, rng)
    # The paper's preprocessing composed, on a Pillow image, ends as a CHW float array.
    out = T.Compose([T.ResizeShorter(256), T.CenterCrop(256), T.ToArray()])(pil, rng)
    assert out.shape == (3, 256, 256) and out.dtype == np.float32


def test_random_crop_reaches_every_offset_and_flip_mirrors():
    image = _coordinate_image(256, 256)
    crop = T.RandomCrop(227)
    rng = np.random.default_rng(0)
    tops, lefts = set(), set()
    for _ in range(3000):
        out = crop(image, rng)
        assert out.shape == (3, 227, 227)
        tops.add(int(out[0, 0, 0]))
        lefts.add(int(out[1, 0, 0]))
    assert tops == set(range(30)) and lefts == set(range(30))
    flip = T.RandomHorizontalFlip()
    flips = 0
    for _ in range(400):
        out = flip(image, rng)
        if out[1, 0, 0] == 255:
            flips += 1
            np.testing.assert_array_equal(out, image[:, :, ::-1])
        else:
            np.testing.assert_array_equal(out, image)
    assert 150 < flips < 250
    with pytest.raises(TypeError, match="RandomCrop: is random and needs a numpy Generator"):
        crop(image, None)
    # Same on a Pillow image: the crop lands inside, the flip mirrors.
    pil = Image.fromarray(np.arange(256 * 256 * 3, dtype=np.uint32).reshape(256, 256, 3).astype(np.uint8))
    assert T.RandomCrop(227)(pil, rng).size == (227, 227)
    np.testing.assert_array_equal(np.asarray(T.RandomHorizontalFlip(p=1.0)(pil, rng)), np.asarray(pil)[:, ::-1])


def test_ten_crop_geometry_and_mirrors():
    image = _coordinate_image(256, 260)
    crops = T.ten_crop(image, 227)
    assert crops.shape == (10, 3, 227, 227)
    expected_offsets = [(0, 0), (0, 33), (29, 0), (29, 33), (14, 16)]
    for i, (top, left) in enumerate(expected_offsets):
        np.testing.assert_array_equal(crops[i], image[:, top:top + 227, left:left + 227])
        np.testing.assert_array_equal(crops[5 + i], crops[i][:, :, ::-1])
    assert T.TenCrop(227)(Image.new("RGB", (256, 256)), None).shape == (10, 3, 227, 227)


def test_to_array_and_normalize():
    pil = Image.fromarray(np.array([[[0, 51, 255]]], dtype=np.uint8))
    np.testing.assert_allclose(T.to_array(pil)[:, 0, 0], [0.0, 0.2, 1.0], rtol=1e-6)
    image = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    out = T.Normalize([1.0, 2.0, 3.0], [0.5, 2.0, 4.0])(image)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (image - np.array([1, 2, 3])[:, None, None]) / np.array([0.5, 2, 4])[:, None, None],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="Normalize: image has 3 channels but mean/std have 2"):
        T.Normalize([0, 0], [1, 1])(image)
    with pytest.raises(TypeError, match="Normalize: expects a CHW float array"):
        T.Normalize([0, 0, 0], [1, 1, 1])(pil)


def test_pca_lighting_offset_covariance():
    lighting = T.PCALighting()  # ImageNet's eigenvalues/eigenvectors, alpha ~ N(0, 0.1)
    rng = np.random.default_rng(0)
    zero = np.zeros((3, 2, 2), np.float32)
    offsets = []
    for _ in range(20000):
        out = lighting(zero, rng)
        assert out.dtype == np.float32
        assert np.all(out == out[:, :1, :1])  # one offset per image, the same at every pixel
        offsets.append(out[:, 0, 0])
    offsets = np.array(offsets, dtype=np.float64)
    eigval, eigvec = T.IMAGENET_EIGVAL, T.IMAGENET_EIGVEC
    expected = eigvec @ np.diag((0.1 * eigval) ** 2) @ eigvec.T
    np.testing.assert_allclose(offsets.mean(axis=0), 0.0, atol=3e-4)
    np.testing.assert_allclose(np.cov(offsets.T), expected, atol=0.03 * expected.max())
    # Per eigen-direction: the projection onto p_i has standard deviation 0.1 * l_i.
    np.testing.assert_allclose((offsets @ eigvec).std(axis=0), 0.1 * eigval, rtol=0.03)
    with pytest.raises(ValueError, match="PCALighting: image has 13 channels"):
        lighting(np.zeros((13, 2, 2), np.float32), rng)


def test_pca_from_images_recovers_a_known_covariance():
    rng = np.random.default_rng(1)
    for channels in (3, 13):
        basis, _ = np.linalg.qr(rng.normal(size=(channels, channels)))
        true_eigval = np.sort(rng.uniform(0.1, 4.0, size=channels))[::-1]
        cov = basis @ np.diag(true_eigval) @ basis.T
        mean = rng.uniform(100, 1000, size=channels)  # large offset, like uint16 reflectances
        pixels = rng.multivariate_normal(mean, cov, size=40 * 16 * 16)
        images = pixels.reshape(40, 16, 16, channels).transpose(0, 3, 1, 2).astype(np.float32)
        eigval, eigvec = T.pca_from_images(images)
        sample_cov = np.cov(pixels.T, bias=True)
        np.testing.assert_allclose(eigvec @ np.diag(eigval) @ eigvec.T, sample_cov, atol=2e-3 * true_eigval[0])
        np.testing.assert_allclose(eigval, true_eigval, rtol=0.1)
        assert np.all(np.diff(eigval) <= 0)
        np.testing.assert_allclose(eigvec.T @ eigvec, np.eye(channels), atol=1e-10)
        # The same from a dataset of (image, label) pairs and from a DataLoader's batches.
        dataset = data.ArrayDataset(images, np.zeros(40, np.int64))
        np.testing.assert_allclose(T.pca_from_images(dataset)[0], eigval, rtol=1e-4)
        np.testing.assert_allclose(T.pca_from_images(data.DataLoader(dataset, 7))[0], eigval, rtol=1e-4)
        mean_est, std_est = T.channel_mean_std(dataset)
        np.testing.assert_allclose(mean_est, pixels.mean(axis=0), rtol=1e-5)
        np.testing.assert_allclose(std_est, pixels.std(axis=0), rtol=1e-3)


# ----------------------------------------------------------------------------- EuroSAT

def _write_band_tifs(root, classes=("Forest", "River"), per_class=2):
    """Files whose band at *file* position i holds the value 100 * (i + 1) + class index."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(1, per_class + 1):
            array = np.empty((64, 64, 13), np.uint16)
            array[:] = (100 * (np.arange(13) + 1) + c).astype(np.uint16)
            tifffile.imwrite(root / name / f"{name}_{k}.tif", array, photometric="minisblack", planarconfig="contig")


def test_eurosat_band_order(tmp_path):
    _write_band_tifs(tmp_path)
    file_order = data.EuroSAT(tmp_path, scale=1.0)
    assert file_order.kind == "ms" and file_order.classes == ["Forest", "River"] and len(file_order) == 4
    image, label = file_order[2]
    assert image.shape == (13, 64, 64) and image.dtype == np.float32 and label == 1
    np.testing.assert_array_equal(image[:, 0, 0], 100 * (np.arange(13) + 1) + 1)
    assert file_order.bands[-1] == "B8A"
    natural = data.EuroSAT(tmp_path, band_order="natural", scale=1.0)
    image_n, _ = natural[2]
    assert natural.bands[8] == "B8A" and natural.bands[9] == "B09"
    assert image_n[8, 0, 0] == image[12, 0, 0]  # B8A moved from last to after B08
    np.testing.assert_array_equal(image_n[:8], image[:8])
    np.testing.assert_array_equal(image_n[9:], image[8:12])
    rgb = data.EuroSAT(tmp_path, bands=("B04", "B03", "B02"))[0][0]
    np.testing.assert_allclose(rgb[:, 0, 0], np.array([400, 300, 200]) * 1e-4, rtol=1e-6)  # default scale
    with pytest.raises(ValueError, match="EuroSAT: unknown band"):
        data.EuroSAT(tmp_path, bands=("B13",))
    with pytest.raises(ValueError, match="band_order must be 'file' or 'natural'"):
        data.EuroSAT(tmp_path, band_order="wavelength")


def test_eurosat_rgb_release_and_archive_layout(tmp_path):
    for name in ("AnnualCrop", "SeaLake"):
        for k in (1, 2):
            _write_jpeg(tmp_path / "EuroSAT_RGB" / name / f"{name}_{k}.jpg", seed=k, size=(64, 64))
    ds = data.EuroSAT(tmp_path)  # finds the class folders inside EuroSAT_RGB/
    assert ds.kind == "rgb" and ds.classes == ["AnnualCrop", "SeaLake"] and ds.bands == ("R", "G", "B")
    image, _ = ds[0]
    assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1


def test_demo_eurosat_layout_and_reader(tmp_path, capsys):
    root = data.make_demo_eurosat(tmp_path / "eurosat", per_class=3, seed=0)
    assert "writing a demo eurosat dataset" in capsys.readouterr().err
    assert (root / "AnnualCrop" / "AnnualCrop_1.tif").is_file()
    raw = tifffile.imread(root / "SeaLake" / "SeaLake_3.tif")
    assert raw.shape == (64, 64, 13) and raw.dtype == np.uint16
    ds = data.EuroSAT(root, band_order="natural")
    assert tuple(ds.classes) == data.EUROSAT_CLASSES and len(ds) == 30
    spectra = {}
    for i in range(len(ds)):
        image, label = ds[i]
        spectra.setdefault(ds.classes[label], []).append(image.mean(axis=(1, 2)))
    water, forest = np.mean(spectra["SeaLake"], axis=0), np.mean(spectra["Forest"], axis=0)
    b04, b08 = ds.bands.index("B04"), ds.bands.index("B08")
    assert water[b08] < water[b04] < forest[b04] < forest[b08]  # water dark in near-IR, vegetation bright
    again = data.make_demo_eurosat(tmp_path / "eurosat", per_class=3, seed=0)
    assert again == root and "using the cached demo eurosat dataset" in capsys.readouterr().err


def test_split_stratified_proportions_and_seeding():
    labels = np.repeat([0, 1, 2], [10, 25, 7])
    np.random.default_rng(0).shuffle(labels)
    train, test = data.split_stratified(labels, 0.8, seed=3)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    assert np.bincount(labels[train]).tolist() == [8, 20, 6]  # round(0.8 * n) per class
    assert np.bincount(labels[test]).tolist() == [2, 5, 1]
    again = data.split_stratified(labels, 0.8, seed=3)
    np.testing.assert_array_equal(again[0], train)
    other = data.split_stratified(labels, 0.8, seed=4)
    assert not np.array_equal(other[0], train)
    dataset = data.ArrayDataset(np.zeros((len(labels), 1, 1, 1)), labels)
    np.testing.assert_array_equal(data.split_stratified(dataset, 0.8, seed=3)[0], train)
    with pytest.raises(ValueError, match="train_fraction must be between 0 and 1"):
        data.split_stratified(labels, 1.0)


def test_eurosat_splits_normalise_with_training_statistics(tmp_path):
    root = data.make_demo_eurosat(tmp_path / "e", per_class=5, seed=1, verbose=False)
    train, test, (mean, std) = data.eurosat_splits(root, seed=0)
    assert len(train) == 40 and len(test) == 10
    assert np.bincount(test.targets).tolist() == [1] * 10
    stacked = np.stack([train[i][0] for i in range(len(train))])
    np.testing.assert_allclose(stacked.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(stacked.std(axis=(0, 2, 3)), 1.0, rtol=1e-3)
    assert mean.shape == (13,) and stacked.dtype == np.float32


# ----------------------------------------------------------------------------- DataLoader

def _indexed_dataset(n, transform=None):
    """Image i is filled with the value i, so a batch tells which samples it holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 3, 8, 8)).copy()
    return data.ArrayDataset(images, np.arange(n) % 4, transform)


def _ids(batch):
    return batch[0][:, 0, 0, 0].astype(int).tolist()


def test_dataloader_batches_len_and_drop_last():
    ds = _indexed_dataset(10)
    loader = data.DataLoader(ds, batch_size=4, num_workers=0)
    batches = list(loader)
    assert len(loader) == 3 and len(batches) == 3
    assert [_ids(b) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    images, labels = batches[0]
    assert images.shape == (4, 3, 8, 8) and images.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 3]
    dropping = data.DataLoader(ds, batch_size=4, drop_last=True, num_workers=2)
    assert len(dropping) == 2 and [_ids(b) for b in dropping] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(data.DataLoader(ds, batch_size=5, drop_last=True)) == 2
    with pytest.raises(ValueError, match="DataLoader: batch_size must be a positive integer"):
        data.DataLoader(ds, batch_size=0)


def test_dataloader_shuffle_reproducible_and_new_each_epoch():
    ds = _indexed_dataset(50)

    def epoch_ids(loader):
        return [i for b in loader for i in _ids(b)]

    a = data.DataLoader(ds, batch_size=8, shuffle=True, seed=7, num_workers=0)
    b = data.DataLoader(ds, batch_size=8, shuffle=True, seed=7, num_workers=2)
    first_a, first_b = epoch_ids(a), epoch_ids(b)
    assert first_a == first_b and sorted(first_a) == list(range(50)) and first_a != list(range(50))
    assert a.epoch == 1  # a completed pass advances the epoch
    second = epoch_ids(a)
    assert second != first_a and sorted(second) == list(range(50))
    a.set_epoch(0)
    assert epoch_ids(a) == first_a
    c = data.DataLoader(ds, batch_size=8, shuffle=True, seed=8, num_workers=0)
    assert epoch_ids(c) != first_a


def test_dataloader_threads_match_single_thread_with_random_transforms():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, size=(37, 3, 40, 40)).astype(np.float32)
    transform = T.Compose([T.RandomCrop(32), T.RandomHorizontalFlip(), T.PCALighting()])
    ds = data.ArrayDataset(images, rng.integers(0, 5, 37), transform)
    runs = []
    for workers in (0, 1, 3):
        loader = data.DataLoader(ds, batch_size=6, shuffle=True, seed=3, num_workers=workers, prefetch_batches=3)
        runs.append([b for _ in range(2) for b in loader])  # two epochs
    for other in runs[1:]:
        assert len(other) == len(runs[0]) == 14
        for (x0, y0), (x1, y1) in zip(runs[0], other):
            np.testing.assert_array_equal(x0, x1)
            np.testing.assert_array_equal(y0, y1)
    # The augmentation differs between epochs (same samples, new crops / colours).
    assert not np.array_equal(runs[0][0][0], runs[0][7][0])


def test_dataloader_resume_mid_epoch():
    ds = _indexed_dataset(30, transform=T.Compose([T.RandomCrop(6), T.PCALighting()]))
    reference = data.DataLoader(ds, batch_size=4, shuffle=True, seed=1, num_workers=2)
    unbroken = [b for _ in range(2) for b in reference]
    interrupted = data.DataLoader(ds, batch_size=4, shuffle=True, seed=1, num_workers=2)
    seen = []
    for batch in interrupted:
        seen.append(batch)
        if len(seen) == 3:
            state = interrupted.state_dict()
            break
    assert state == {"seed": 1, "epoch": 0, "batch": 3}
    resumed = data.DataLoader(ds, batch_size=4, shuffle=True, seed=99, num_workers=0)
    resumed.load_state_dict(state)
    seen += list(resumed)
    assert resumed.state_dict() == {"seed": 1, "epoch": 1, "batch": 0}
    seen += list(resumed)
    assert len(seen) == len(unbroken)
    for (x0, y0), (x1, y1) in zip(unbroken, seen):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    # Peeking at one batch does not make the next full pass skip it.
    peek = data.DataLoader(ds, batch_size=4, shuffle=True, seed=1)
    next(iter(peek))
    assert len(list(peek)) == len(peek)


def test_alexnet_pipeline_on_demo_imagenet(tmp_path, capsys):
    root = data.make_demo_imagenet(tmp_path / "demo", num_classes=4, train_per_class=3, val_per_class=1, size=64)
    assert "writing a demo imagenet dataset" in capsys.readouterr().err
    train = data.ImageFolder(root / "train", transform=T.Compose([
        T.ResizeShorter(40), T.CenterCrop(40), T.RandomCrop(32), T.RandomHorizontalFlip(), T.ToArray(),
        T.PCALighting(), T.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)]))
    assert train.classes == ["checkerboard", "disc", "horizontal_stripes", "vertical_stripes"]
    assert len(train) == 12 and len(data.ImageFolder(root / "val")) == 4
    images, labels = next(iter(data.DataLoader(train, batch_size=12, shuffle=True)))
    assert images.shape == (12, 3, 32, 32) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    full = data.alexnet_train_transform()(Image.new("RGB", (300, 280)), np.random.default_rng(0))
    assert full.shape == (3, 227, 227) and full.dtype == np.float32
    assert data.alexnet_eval_transform(ten_crops=True)(Image.new("RGB", (300, 280)), None).shape == (10, 3, 227, 227)
    # Reused, not rewritten, on the second call; other parameters regenerate.
    stamp = (root / "train" / "disc" / "disc_1.JPEG").stat().st_mtime_ns
    data.make_demo_imagenet(tmp_path / "demo", num_classes=4, train_per_class=3, val_per_class=1, size=64)
    assert "using the cached demo imagenet dataset" in capsys.readouterr().err
    assert (root / "train" / "disc" / "disc_1.JPEG").stat().st_mtime_ns == stamp
    data.make_demo_imagenet(tmp_path / "demo", num_classes=2, train_per_class=2, val_per_class=1, size=64)
    assert data.ImageFolder(root / "train").classes == ["disc", "horizontal_stripes"]
    # A folder that is not ours is never overwritten.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a minidl demo dataset"):
        data.make_demo_imagenet(tmp_path / "mine", verbose=False)


def test_demo_imagenet_classes_not_separable_by_mean_colour():
    """A nearest-centroid classifier on an image's mean colour stays near chance (25 %)."""
    features, labels = [], []
    for c, name in enumerate(list(data.DEMO_IMAGENET_CLASSES)[:4]):
        for k in range(60):
            image = data.demo.demo_imagenet_image(name, np.random.default_rng([c, k]), size=32)
            features.append(image.reshape(-1, 3).mean(axis=0) / 255)
            labels.append(c)
    features, labels = np.array(features), np.array(labels)
    train = np.arange(len(labels)) % 2 == 0
    centroids = np.stack([features[train & (labels == c)].mean(axis=0) for c in range(4)])
    predicted = np.argmin(((features[~train, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert np.mean(predicted == labels[~train]) < 0.45


def test_demo_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path))
    root = data.make_demo_eurosat(per_class=1, classes=("Forest", "River"), verbose=False)
    assert root == tmp_path / "demo-eurosat" and len(data.EuroSAT(root)) == 2
    with pytest.raises(ValueError, match="make_demo_eurosat: unknown class"):
        data.make_demo_eurosat(tmp_path / "x", classes=("Desert",))


def test_loader_threads_follow_the_cores(monkeypatch):
    """By default one loader thread per core the process may use, at least 2, at most 8."""
    from minidl.data import loader as loader_module

    for cores, expected in ((1, 2), (2, 2), (6, 6), (16, 8)):
        monkeypatch.setattr(loader_module.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert loader_module.default_workers() == expected
        dataset = loader_module.ArrayDataset(np.zeros((4, 1, 2, 2), np.float32), [0, 1, 0, 1])
        assert loader_module.DataLoader(dataset, 2).num_workers == expected
        assert loader_module.DataLoader(dataset, 2, num_workers=0).num_workers == 0
