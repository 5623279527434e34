"""The two main examples, end to end on tiny demo sets: AlexNet on generated ImageNet-layout
JPEGs and EuroNet on generated 13-band GeoTIFFs.

Each runs the example's ``main([...])`` in this process with a small demo, a few SGD steps and
everything written under ``tmp_path`` (the demo images too, so no cache folder is touched). The
full default runs -- what README's first command does -- are marked slow.
"""
import json
import math
import os
import re
import time

import numpy as np
import pytest
from PIL import Image

from minidl import checkpoint
from minidl.models import alexnet, euronet


@pytest.fixture(scope="module")
def alexnet_example(load_example):
    return load_example("alexnet_imagenet")


@pytest.fixture(scope="module")
def euronet_example(load_example):
    return load_example("euronet_eurosat")


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_valid_png(path):
    assert os.path.getsize(path) > 0, path
    with Image.open(path) as image:
        image.verify()  # raises on a truncated or corrupt file
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0


def assert_outputs(out, names):
    for name in names:
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    for png in out.glob("*.png"):
        assert_valid_png(png)


# -- AlexNet -------------------------------------------------------------------------------------
# Two demo classes, 16 training images each, batch 8: four steps per epoch. With the demo's
# scaled initial weights AlexNet starts separating them after about 15 steps. The rate is not
# dropped (--lr-drops 0): with 8 validation images, one unlucky epoch would do it.
ALEXNET_TINY = ["--demo-classes", "2", "--demo-per-class", "16", "--demo-val-per-class", "4",
                "--batch-size", "8", "--lr-drops", "0", "--grad-cam-images", "2", "--workers", "1"]


@pytest.fixture(scope="module")
def alexnet_run(alexnet_example, tmp_path_factory):
    """One short run shared by the AlexNet tests, stopped by --max-steps half-way through its
    6th epoch: (its arguments without --max-steps, its result)."""
    base = tmp_path_factory.mktemp("alexnet")
    args = ALEXNET_TINY + ["--demo-dir", str(base / "demo"), "--out", str(base / "out"), "--epochs", "6"]
    yield args, alexnet_example.main(args + ["--max-steps", "22"])
    remove_checkpoints(base / "out")


def remove_checkpoints(folder):
    """AlexNet's checkpoints are large (455 MB with the velocities): do not leave them in the
    pytest temporary folders that the next runs keep."""
    for path in folder.glob("*.npz"):
        path.unlink()


def test_alexnet_demo_loss_falls_below_chance(alexnet_run):
    _, result = alexnet_run
    history = result["fit"]["history"]
    assert result["fit"]["step"] == 22
    assert len(history) == 5  # 4 steps per epoch; --max-steps stopped the 6th after 2
    losses = [record["train_loss"] for record in history]
    # Chance is ln 2 = 0.693 for two classes, where the first epoch sits. A mean over 32 images
    # 10 % below it takes a network that tells the classes apart.
    assert min(losses) < 0.9 * math.log(2) and losses[-1] < losses[0], f"training loss per epoch: {losses}"
    assert result["ten_crop"]["images"] == 8


def test_alexnet_demo_writes_checkpoint_curves_and_pictures(alexnet_run):
    _, result = alexnet_run
    out = result["out"]
    assert_outputs(out, ["checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png", "filters_conv1.png",
                         "feature_maps_conv1.png", "feature_maps_conv2.png", "feature_maps_conv3.png"])
    grad_cams = sorted(p.name for p in out.glob("grad_cam_*.png"))
    assert len(grad_cams) == 2
    assert grad_cams == sorted(p.name for p in result["pictures"] if p.name.startswith("grad_cam"))

    saved = checkpoint.load(out / "checkpoint.npz")
    assert saved["kind"] == "minidl.train.fit" and saved["run"]["step"] == 22
    model = alexnet(num_classes=2)
    model.load_state_dict(saved["model"])  # the right names and shapes, strictly
    model.load_state_dict(checkpoint.load(out / "best.npz")["model"])

    lines = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["complete"] is False and lines[-1]["step"] == 22
    with Image.open(out / "filters_conv1.png") as image:
        assert image.mode == "RGB"  # conv1's 96 filters see RGB


def test_alexnet_demo_resumes_mid_epoch(alexnet_example, alexnet_run, capsys):
    args, first = alexnet_run
    capsys.readouterr()
    resumed = alexnet_example.main(args + ["--resume"])  # no --max-steps: finish the 6 epochs
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "22 step(s) done" in printed
    assert resumed["fit"]["step"] == 24  # the two steps left in epoch 6, not a new start
    history = resumed["fit"]["history"]
    assert len(history) == 6 and history[:5] == first["fit"]["history"]
    assert history[5]["epoch"] == 6 and history[5]["step"] == 24
    assert [r["epoch"] for r in read_metrics(first["out"] / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert checkpoint.load(first["out"] / "checkpoint.npz")["run"]["epoch"] == 6


def test_alexnet_prints_the_published_parameter_count(alexnet_example, capsys):
    model = alexnet(num_classes=2)
    alexnet_example.print_summary(model, 2)
    printed = capsys.readouterr().out
    assert "Total params: 60,965,224" in printed  # the 1000-class network of the paper
    assert model.num_parameters() == 60_965_224 - 4_097_000 + 4096 * 2 + 2
    assert f"{model.num_parameters():,} parameters in all" in printed


def test_alexnet_data_errors_name_the_folder(alexnet_example, tmp_path):
    data = tmp_path / "imagenet"

    def fails(pattern):
        with pytest.raises(SystemExit, match=pattern):
            alexnet_example.main(["--data", str(data), "--out", str(tmp_path / "out")])

    fails(f"--data {re.escape(str(data))}: no such folder")
    (data / "train" / "n01").mkdir(parents=True)
    fails(f"no val/ folder \\({re.escape(str(data / 'val'))}\\)")
    (data / "val").mkdir()
    fails(f"{re.escape(str(data / 'train' / 'n01'))} contains no files")
    Image.new("RGB", (300, 260)).save(data / "train" / "n01" / "a.JPEG")
    fails(f"no class folders in {re.escape(str(data / 'val'))}")
    (data / "val" / "n01").mkdir()
    fails(f"{re.escape(str(data / 'val' / 'n01'))} contains no files")
    Image.new("RGB", (300, 260)).save(data / "val" / "n01" / "b.JPEG")
    (data / "val" / "n02").mkdir()
    Image.new("RGB", (300, 260)).save(data / "val" / "n02" / "c.JPEG")
    fails(r"same class folders.*only in val/: \['n02'\]")
    assert not (tmp_path / "out").exists()


def test_alexnet_runs_on_an_imagenet_layout_folder(alexnet_example, tmp_path):
    """--data with arbitrary class names, sizes and formats (the real-data path, minus the size)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "imagenet"
    for split, count in (("train", 4), ("val", 1)):
        for wnid in ("n01440764", "n01443537"):
            folder = data / split / wnid
            folder.mkdir(parents=True)
            for k in range(count):
                size = (int(rng.integers(240, 400)), int(rng.integers(240, 400)))
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                name = f"{wnid}_{k}.JPEG" if k % 2 == 0 else f"{wnid}_{k}.png"
                Image.fromarray(pixels).save(folder / name)
    result = alexnet_example.main(["--data", str(data), "--out", str(tmp_path / "out"), "--batch-size", "4",
                                   "--epochs", "1", "--max-steps", "1", "--grad-cam-images", "1",
                                   "--workers", "0"])
    assert result["classes"] == ["n01440764", "n01443537"]
    assert result["fit"]["step"] == 1
    assert result["ten_crop"]["images"] == 2
    assert_outputs(tmp_path / "out", ["checkpoint.npz", "filters_conv1.png", "feature_maps_conv3.png"])
    remove_checkpoints(tmp_path / "out")


def test_alexnet_help(alexnet_example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        alexnet_example.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data", "--epochs", "--batch-size", "--lr", "--variant", "--device", "--out",
                   "--resume", "--max-steps", "--overwrite", "--accept-changed-options", "--on-nonfinite",
                   "--debug", "--check-files"):
        assert option in text


def test_euronet_help(euronet_example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        euronet_example.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--resume", "--overwrite", "--accept-changed-options", "--on-nonfinite", "--debug",
                   "--scale", "--nonfinite", "--bands"):
        assert option in text


@pytest.mark.slow
def test_alexnet_default_demo_run(alexnet_example, tmp_path, monkeypatch):
    """README's first command: the whole demo, under 5 minutes on 2 CPU cores, well above chance."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "data"))
    start = time.perf_counter()
    result = alexnet_example.main([])
    seconds = time.perf_counter() - start
    history = result["fit"]["history"]
    assert history[-1]["train_loss"] < math.log(4) < history[0]["train_loss"] + 0.1
    assert result["ten_crop"]["top1"] < 0.5, result["ten_crop"]  # chance: 0.75
    assert_outputs(tmp_path / "runs" / "alexnet-demo", ["checkpoint.npz", "best.npz", "curves.png",
                                                        "filters_conv1.png", "feature_maps_conv1.png"])
    remove_checkpoints(tmp_path / "runs" / "alexnet-demo")
    assert seconds < 300, f"{seconds:.0f} s"


# -- EuroNet -------------------------------------------------------------------------------------
# Ten demo classes, 10 GeoTIFFs each (8 train, 2 test), batch 16: five steps per epoch.
EURONET_TINY = ["--demo-per-class", "10", "--batch-size", "16", "--grad-cam-images", "2", "--workers", "1"]


@pytest.fixture(scope="module")
def euronet_run(euronet_example, tmp_path_factory):
    base = tmp_path_factory.mktemp("euronet")
    args = EURONET_TINY + ["--demo-dir", str(base / "demo"), "--out", str(base / "out")]
    return args, euronet_example.main(args + ["--epochs", "8"])


def test_euronet_demo_learns(euronet_run):
    _, result = euronet_run
    history = result["fit"]["history"]
    assert result["fit"]["step"] == 40 and len(history) == 8
    losses = [record["train_loss"] for record in history]
    assert losses[-1] < 0.8 * losses[0], f"training loss per epoch: {losses}"
    assert result["test"]["images"] == 20
    assert result["test"]["top1"] <= 0.75, result["test"]  # chance: 0.9


def test_euronet_demo_writes_outputs_and_resumes(euronet_example, euronet_run, capsys):
    args, first = euronet_run
    out = first["out"]
    assert_outputs(out, ["checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png", "filters_conv1.png",
                         "feature_maps_conv1.png", "feature_maps_conv2.png", "feature_maps_conv3.png"])
    assert len(list(out.glob("grad_cam_*.png"))) == 2
    model = euronet()  # 13 bands, 10 classes
    model.load_state_dict(checkpoint.load(out / "checkpoint.npz")["model"])
    capsys.readouterr()
    resumed = euronet_example.main(args + ["--epochs", "9", "--resume"])
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "8 epoch(s) and 40 step(s) done" in printed
    assert resumed["fit"]["step"] == 45
    history = resumed["fit"]["history"]
    assert len(history) == 9 and history[:8] == first["fit"]["history"]


def test_euronet_reads_the_rgb_release(euronet_example, tmp_path):
    from minidl.data import EUROSAT_CLASSES

    rng = np.random.default_rng(0)
    data = tmp_path / "EuroSAT_RGB"
    for c, name in enumerate(EUROSAT_CLASSES[:3]):
        (data / name).mkdir(parents=True)
        for k in range(1, 6):
            pixels = np.clip(rng.normal(60 + 50 * c, 20, size=(64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(data / name / f"{name}_{k}.jpg")
    result = euronet_example.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--epochs", "1",
                                   "--grad-cam-images", "1", "--workers", "0"])
    assert result["classes"] == list(EUROSAT_CLASSES[:3])
    assert result["fit"]["history"][0]["epoch"] == 1
    assert_outputs(tmp_path / "out", ["checkpoint.npz", "curves.png", "filters_conv1.png"])


def test_euronet_batch_norm_option(euronet_example, tmp_path, capsys):
    """--batch-norm trains euronet(batch_norm=True): its running statistics are in the
    checkpoint, and a resume without the option is refused, naming it."""
    rng = np.random.default_rng(0)
    data = tmp_path / "EuroSAT_RGB"
    for c, name in enumerate(("Forest", "River")):
        (data / name).mkdir(parents=True)
        for k in range(1, 5):
            pixels = np.clip(rng.normal(60 + 80 * c, 20, size=(64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(data / name / f"{name}_{k}.jpg")
    args = ["--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1",
            "--batch-size", "4", "--grad-cam-images", "1", "--workers", "0"]
    euronet_example.main(args + ["--batch-norm"])
    assert "recipe: batch norm after each convolution;" in capsys.readouterr().out
    saved = checkpoint.load(tmp_path / "out" / "checkpoint.npz")["model"]
    assert saved["bn1.running_mean"].shape == (28,) and np.any(saved["bn1.running_mean"] != 0)
    with pytest.raises(SystemExit, match="batch_norm"):
        euronet_example.main(args + ["--epochs", "2", "--resume"])


def test_euronet_data_errors_name_the_folder(euronet_example, tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        euronet_example.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    (tmp_path / "Forest").mkdir()
    with pytest.raises(SystemExit, match="found neither .tif .* nor .jpg"):
        euronet_example.main(["--data", str(tmp_path), "--out", str(tmp_path / "out")])


@pytest.mark.slow
def test_euronet_default_demo_run(euronet_example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "data"))
    result = euronet_example.main([])
    assert result["test"]["top1"] < 0.3, result["test"]  # chance: 0.9
    assert_outputs(tmp_path / "runs" / "euronet-demo", ["checkpoint.npz", "best.npz", "curves.png"])


# -- pretrained torchvision weights ------------------------------------------------------------------
def test_evaluate_pretrained_gives_pytorchs_predictions(tmp_path, torch_torchvision_alexnet, load_example):
    """torchvision-layout weights saved by torch, evaluated by the example on a small folder:
    the same top-1 predictions as PyTorch on images preprocessed by hand (Pillow's bilinear
    resize of the shorter side to 256, the central 224 crop, ImageNet's mean and std)."""
    import torch

    rng = np.random.default_rng(0)
    classes = ["n01440764", "n01443537", "n01484850"]
    paths = []
    for name in classes:
        (tmp_path / "val" / name).mkdir(parents=True)
        for k in range(2):
            size = (int(rng.integers(240, 320)), int(rng.integers(240, 320)))
            path = tmp_path / "val" / name / f"{name}_{k}.JPEG"
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
            paths.append(path)
    torch.manual_seed(0)
    theirs = torch_torchvision_alexnet(1000).eval()
    torch.save(theirs.state_dict(), tmp_path / "alexnet.pth")

    example = load_example("evaluate_pretrained")
    result = example.main(["--weights", str(tmp_path / "alexnet.pth"), "--data", str(tmp_path / "val"),
                           "--batch-size", "4", "--workers", "0"])

    def by_hand(path):
        image = Image.open(path).convert("RGB")
        w, h = image.size
        scale = 256 / min(w, h)
        image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        x = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
        return ((x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1).astype(np.float32)

    with torch.no_grad():
        expected = theirs(torch.from_numpy(np.stack([by_hand(p) for p in paths]))).numpy()
    assert result["images"] == 6
    assert result["predictions"] == list(expected.argmax(axis=1))
    labels = np.repeat(np.arange(3), 2)
    assert result["top1"] == pytest.approx(np.mean(expected.argmax(axis=1) != labels))
