"""Train EuroNet, the EuroSAT study's CNN, on EuroSAT or on a built-in generated demo set.

    python examples/euronet_eurosat.py                           # the demo: about 2 min on 2 CPU cores
    python examples/euronet_eurosat.py --data /data/EuroSAT_MS   # 13 bands (GeoTIFF)
    python examples/euronet_eurosat.py --data /data/EuroSAT_RGB  # or the RGB JPEG release
    python examples/euronet_eurosat.py --resume                  # continue the run in --out

``--data DIR`` is the extracted EuroSAT folder: its ten class folders (``AnnualCrop/``,
``Forest/``, ...), or a parent holding one of the archive layouts (``EuroSAT_MS/``, ``2750/``...).
The multispectral release is 64x64x13 uint16 GeoTIFFs, the RGB one 64x64 JPEGs; which one it
is comes from the files. Without ``--data`` the script writes a small generated set in the
multispectral layout once into a cache folder (``$MINIDL_DATA`` or ``~/.cache/minidl``): each
pixel mixes material spectra (vegetation, soil, water, asphalt, roofs...) in class-dependent
layouts, written as real 13-band GeoTIFFs, so the real reader runs.

The study's setup: a seeded, per-class 4:1 train/test split; per-band normalisation with the
training split's mean and std; EuroNet (six 3x3 convolutions, dense 784 with dropout, ten
sigmoid outputs, 5,850,750 parameters); binary cross-entropy on the ten sigmoid outputs against
one-hot labels; batch 50 for 20 epochs. The optimiser is not on the slides; this script uses
AlexNet's (SGD, momentum 0.9, weight decay 0.0005, the rate divided by 10 when the test loss
stops improving). Random horizontal and vertical flips augment the training split.

The demo (no ``--data``): 100 generated patches per class (80 train, 20 test), 8 epochs of
16 steps. Measured on 2 CPU cores: about 2 minutes, test accuracy 88 % (chance: 10 %).

What it writes to ``--out``: checkpoint.npz (resume with ``--resume``), best.npz, metrics.jsonl,
curves.png, filters_conv1.png, feature_maps_conv{1,2,3}.png (for one test image, after ReLU)
and grad_cam_*.png (class activation maps over the natural-colour image).
"""
import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

import minidl
from minidl import backend, ops, viz
from minidl.data import DataLoader, eurosat_splits, make_demo_eurosat
from minidl.data.demo import default_root
from minidl.models import euronet, summary
from minidl.optim import SGD, ReduceLROnPlateau
from minidl.train import binary_error, evaluate, fit, sigmoid, top1, with_one_hot

# The no-argument demo: ten classes of generated 13-band patches (the real set has 2,000-3,000
# per class), trained for a few epochs so the run takes a couple of minutes on 2 CPU cores.
DEMO = dict(per_class=100, epochs=8, lr_patience=1, lr_drops=1)
STUDY = dict(epochs=20, lr_patience=3, lr_drops=3)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="euronet_eurosat.py",
        description="Train EuroNet on EuroSAT (multispectral or RGB), or on a small generated "
                    "13-band demo set when --data is absent.")
    parser.add_argument("--data", type=Path, default=None,
                        help="the EuroSAT MS or RGB folder (class folders inside); without it a "
                             "generated demo set is used")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs in all, resumed ones included (default {STUDY['epochs']}, "
                             f"the study's; {DEMO['epochs']} for the demo)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per SGD step (default %(default)s, the study's)")
    parser.add_argument("--lr", type=float, default=0.05,
                        help="initial learning rate; higher than AlexNet's 0.01 because the binary "
                             "cross-entropy averages over the 10 outputs as well as the batch, which "
                             "makes its gradients about 10 times smaller than a softmax loss's (on "
                             "the demo 0.01 stays at chance for 8 epochs and 0.1 is unstable; "
                             "default %(default)s)")
    parser.add_argument("--momentum", type=float, default=0.9, help="(default %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=0.0005, help="(default %(default)s)")
    parser.add_argument("--lr-patience", type=int, default=None,
                        help="epochs without a better test loss before the rate is divided by 10 "
                             f"(default {STUDY['lr_patience']}; {DEMO['lr_patience']} for the demo)")
    parser.add_argument("--lr-drops", type=int, default=None,
                        help=f"at most this many divisions by 10 (default {STUDY['lr_drops']}; "
                             f"{DEMO['lr_drops']} for the demo)")
    parser.add_argument("--bands", default=None,
                        help="comma-separated bands to use, e.g. B04,B03,B02 (default: all 13, in "
                             "wavelength order, or R,G,B for the RGB release)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda (needs CuPy and an NVIDIA GPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/euronet, runs/euronet-demo for the demo)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from --out/checkpoint.npz (give the same settings)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many SGD steps in all, for a quick look")
    parser.add_argument("--workers", type=int, default=2, help="data-loading threads (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the weights and the batches (default %(default)s)")
    parser.add_argument("--grad-cam-images", type=int, default=3,
                        help="test images (one per class) to draw Grad-CAM maps for (default %(default)s)")
    demo = parser.add_argument_group("demo data (used when --data is absent)")
    demo.add_argument("--demo-dir", type=Path, default=None,
                      help=f"where the demo GeoTIFFs are written once (default {default_root('demo-eurosat')})")
    demo.add_argument("--demo-per-class", type=int, default=DEMO["per_class"],
                      help="images per class, split 4:1 into train and test (default %(default)s)")
    return parser


def fail(message):
    """Stop with a one-line error (exit status 1) instead of a traceback."""
    raise SystemExit(f"euronet_eurosat.py: error: {message}")


def display_bands(bands):
    """Indices of red, green and blue among ``bands`` (for pictures), or None if absent."""
    for rgb in (("B04", "B03", "B02"), ("R", "G", "B")):
        if all(b in bands for b in rgb):
            return [bands.index(b) for b in rgb]
    return None


def pictures(model, test, dataset, out, count):
    """filters_conv1.png, feature_maps_conv{1,2,3}.png and grad_cam_*.png; returns their paths."""
    written = [viz.save_filter_grid(model.conv1.weight, out / "filters_conv1.png", scale=8)]
    rgb = display_bands(list(dataset.bands))
    labels = np.asarray(dataset.targets)[test.indices]
    chosen = np.sort(np.unique(labels, return_index=True)[1])[:max(count, 1)]  # one per class
    for n, position in enumerate(chosen):
        x, label = test[int(position)]  # normalised, as the network takes it
        if n == 0:
            written += viz.save_feature_maps(model, x, out, layers=["relu1", "relu2", "relu3"],
                                             names=["conv1", "conv2", "conv3"]).values()
        if n >= count:
            break
        with minidl.no_grad():
            predicted = int(model(minidl.Tensor(backend.to_device(x[None], model.device))).numpy().argmax())
        # What a person sees: the natural-colour bands of the file, stretched, enlarged 4 times.
        raw = dataset.decode(dataset.samples[int(test.indices[position])][0])
        shown = viz.to_display_image(raw[rgb] if rgb is not None else raw.mean(axis=0))
        shown = shown.resize((4 * shown.width, 4 * shown.height), Image.Resampling.NEAREST)
        name = f"grad_cam_{n + 1}_{dataset.classes[label]}_as_{dataset.classes[predicted]}.png"
        viz.save_grad_cam(model, x, out / name, target_class=predicted, display=shown)
        written.append(out / name)
    return [Path(p) for p in written]


def main(argv=None):
    """Run the example; returns a dict with the fit result, the final test evaluation and the paths."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    demo = args.data is None
    defaults = DEMO if demo else STUDY
    epochs = args.epochs if args.epochs is not None else defaults["epochs"]
    lr_patience = args.lr_patience or defaults["lr_patience"]
    lr_drops = args.lr_drops if args.lr_drops is not None else defaults["lr_drops"]
    out = args.out or Path("runs") / ("euronet-demo" if demo else "euronet")
    if args.batch_size < 1 or epochs < 1 or lr_patience < 1 or lr_drops < 0:
        fail("--batch-size, --epochs and --lr-patience must be at least 1, --lr-drops at least 0")
    try:
        device = backend.normalize_device(args.device)
    except (RuntimeError, ValueError) as error:
        fail(str(error))

    if demo:
        if args.demo_per_class < 2:
            fail(f"--demo-per-class must be at least 2 (one for training, one for testing), "
                 f"got {args.demo_per_class}")
        print(f"DEMO: no --data given, so EuroNet trains on a small generated data set: 10 classes, "
              f"{args.demo_per_class} 64x64 13-band GeoTIFFs each.")
        root = make_demo_eurosat(root=args.demo_dir, per_class=args.demo_per_class, seed=0)
        print(f"DEMO: images in {root}; pass --data DIR to train on the real EuroSAT.")
    else:
        root = args.data
        if not root.is_dir():
            fail(f"--data {root}: no such folder")
    bands = tuple(b.strip() for b in args.bands.split(",")) if args.bands else None
    try:
        train_set, test_set, (mean, std) = eurosat_splits(root, train_fraction=0.8, seed=args.seed,
                                                          augment=True, bands=bands,
                                                          num_workers=args.workers)
    except (FileNotFoundError, ValueError) as error:  # missing/empty class folders, unknown bands
        fail(str(error))
    dataset = train_set.dataset
    classes = dataset.classes
    print(f"data: {dataset.kind.upper()} release in {dataset.root}, {len(dataset.bands)} bands "
          f"({', '.join(dataset.bands)}), {len(classes)} classes; {len(train_set):,} training and "
          f"{len(test_set):,} test images (4:1 per class); bands normalised with the training "
          f"split's mean and std")

    minidl.manual_seed(args.seed)
    model = euronet(in_channels=len(dataset.bands), num_classes=len(classes))
    summary(model, model.input_shape)

    train_loader = DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed,
                              num_workers=args.workers)
    test_loader = DataLoader(test_set, args.batch_size, num_workers=args.workers)
    optimizer = SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                    weight_decay=args.weight_decay)
    scheduler = ReduceLROnPlateau(optimizer, factor=0.1, patience=lr_patience,
                                  max_reductions=lr_drops)
    loss_fn = with_one_hot(ops.binary_cross_entropy_with_logits)
    metrics = (top1, binary_error)
    print(f"recipe: {len(classes)} sigmoid outputs, binary cross-entropy against one-hot labels; SGD, "
          f"lr {args.lr} inside the velocity, momentum {args.momentum}, weight decay "
          f"{args.weight_decay}; lr divided by 10 after {lr_patience} epoch(s) without a better test "
          f"loss, at most {lr_drops} time(s); batch {args.batch_size}, {len(train_loader)} steps per "
          f"epoch, {epochs} epochs; random flips; device {device}")
    print(f"columns: top1 = error of the highest output (chance {100 * (1 - 1 / len(classes)):.0f}%), "
          f"binary = error of the {len(classes)} yes/no outputs at 0.5 (1 - Keras's binary accuracy; "
          f"answering 'no' everywhere scores {100 / len(classes):.0f}%)")
    result = fit(model, loss_fn, optimizer, train_loader, epochs, val_loader=test_loader,
                 scheduler=scheduler, device=device, out_dir=out, resume=args.resume,
                 max_steps=args.max_steps, metrics=metrics, predict=sigmoid, monitor="val_loss")
    history = result["history"]
    if history:
        print(f"training loss: {history[0]['train_loss']:.4f} in epoch 1, "
              f"{history[-1]['train_loss']:.4f} in epoch {history[-1]['epoch']}; best test loss "
              f"{result['best']:.4f} in epoch {result['best_epoch']}")

    tested = evaluate(model, test_loader, loss_fn, device=device, metrics=metrics, predict=sigmoid)
    print(f"final model on the {len(test_set):,} test images: loss {tested['loss']:.4f}, accuracy "
          f"{100 * (1 - tested['top1']):.2f}% (top-1 error {100 * tested['top1']:.2f}%), binary "
          f"accuracy {100 * (1 - tested['binary']):.2f}%")

    written = pictures(model, test_set, dataset, out, args.grad_cam_images)
    print("written:")
    for name in ("checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png"):
        if (out / name).exists():
            print(f"  {out / name}")
    for path in written:
        print(f"  {path}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return {"fit": result, "test": tested, "out": out, "pictures": written, "classes": classes,
            "args": args}


if __name__ == "__main__":
    main()
