"""Train EuroNet, the EuroSAT study's CNN, on EuroSAT or on a built-in generated demo set.

    python examples/euronet_eurosat.py                           # the demo: under a minute on 2 CPU cores
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
16 steps. Measured on 2 CPU cores (AMD EPYC, 2026-11-30): 45 s, test accuracy 88.5 % (chance:
10 %), at about 175 img/s. ``--batch-norm`` adds BatchNorm2d after each convolution (not in
the study): on the demo it cut the test error faster in the first epochs and ended at 91.0 and
89.5 % with seeds 0 and 1 (88.5 and 90.0 % without), each step about 17 % slower
(docs/MODELS.md).

What it writes to ``--out``: checkpoint.npz (resume with ``--resume``), best.npz, metrics.jsonl,
curves.png, filters_conv1.png, feature_maps_conv{1,2,3}.png (for one test image, after ReLU)
and grad_cam_*.png (class activation maps over the natural-colour image). A folder that holds
a run is refused without ``--resume`` or ``--overwrite``; Ctrl-C or SIGTERM saves a checkpoint
and says how to go on; ``--help`` lists the options, README the exit statuses.

Every file is decoded once before training: a file of the wrong size, band count or type
(uint16 expected; ``--scale`` reads others), or with NaN pixels (``--nonfinite``), is skipped,
named, and counted in the ``data:`` line.
"""
import time

import numpy as np
from PIL import Image

import minidl
from minidl import ops, viz
from minidl.data import DataLoader, eurosat_splits, make_demo_eurosat
from minidl.data.demo import DemoFolderBusy
from minidl.metrics import binary_error, sigmoid_scores, top1, with_one_hot
from minidl.models import euronet, summary
from minidl.train import evaluate, fit

import common

# The no-argument demo: ten classes of generated 13-band patches (the real set has 2,000-3,000
# per class), trained for a few epochs so the run takes a couple of minutes on 2 CPU cores.
DEMO = dict(per_class=100, epochs=8, lr_patience=1, lr_drops=1)
STUDY = dict(epochs=20, lr_patience=3, lr_drops=3)
EXAMPLE = common.Example("euronet_eurosat.py", "euronet", DEMO, STUDY, source="the study's",
                         monitored="test loss")


def build_parser():
    parser = EXAMPLE.parser(__doc__, data_help="the EuroSAT MS or RGB folder (class folders inside); "
                                               "without it a generated demo set is used")
    parser.add_argument("--batch-size", type=int, default=50,
                        help="images per SGD step (default %(default)s, the study's)")
    parser.add_argument("--lr", type=float, default=0.05,
                        help="initial learning rate; higher than AlexNet's 0.01 because the binary "
                             "cross-entropy averages over the 10 outputs as well as the batch, which "
                             "makes its gradients about 10 times smaller than a softmax loss's (on "
                             "the demo 0.01 stays at chance for 8 epochs and 0.1 is unstable; "
                             "default %(default)s)")
    EXAMPLE.add_schedule_options(parser)
    parser.add_argument("--batch-norm", action="store_true",
                        help="BatchNorm2d between each convolution and its ReLU (not in the study; "
                             "see docs/MODELS.md)")
    parser.add_argument("--bands", default=None,
                        help="comma-separated bands to use, e.g. B04,B03,B02 (default: all 13, in "
                             "wavelength order, or R,G,B for the RGB release)")
    parser.add_argument("--scale", type=float, default=None,
                        help="multiply the multispectral values by this and accept files of any "
                             "number type (e.g. 1 for float reflectances); default: files must be "
                             "uint16 digital numbers, multiplied by 1e-4, and others are skipped")
    parser.add_argument("--nonfinite", choices=("refuse", "mask"), default="refuse",
                        help="a file holding NaN or infinite values: 'refuse' skips it (default), "
                             "'mask' replaces them with the mean of their band in that file")
    demo = EXAMPLE.add_run_options(parser, evaluated="test images",
                                   seeded="the split, the weights and the batches",
                                   demo_files="GeoTIFFs", demo_folder="demo-eurosat")
    demo.add_argument("--demo-per-class", type=int, default=DEMO["per_class"],
                      help="images per class, split 4:1 into train and test (default %(default)s)")
    return parser


def data_root(args):
    """The EuroSAT folder: --data, or the demo set, written on first use."""
    if args.data is None:
        if args.demo_per_class < 2:
            EXAMPLE.fail(f"--demo-per-class must be at least 2 (one for training, one for testing), "
                         f"got {args.demo_per_class}")
        print(f"DEMO: no --data given, so EuroNet trains on a small generated data set: 10 classes, "
              f"{args.demo_per_class} 64x64 13-band GeoTIFFs each.")
        try:
            root = make_demo_eurosat(root=args.demo_dir, per_class=args.demo_per_class, seed=0)
        except (FileExistsError, DemoFolderBusy) as error:
            EXAMPLE.fail(str(error))
        print(f"DEMO: images in {root}; pass --data DIR to train on the real EuroSAT.")
        return root
    if not args.data.is_dir():
        EXAMPLE.fail(f"--data {args.data}: no such folder")
    return args.data


def display_bands(bands):
    """Indices of red, green and blue among ``bands`` (for pictures), or None if absent."""
    for rgb in (("B04", "B03", "B02"), ("R", "G", "B")):
        if all(b in bands for b in rgb):
            return [bands.index(b) for b in rgb]
    return None


def picture_images(test, dataset):
    """One test image of each class -- the first of its class that can be read: (the
    normalised input, its label, the natural-colour bands of its file, stretched and enlarged 4
    times, for a person to see)."""
    rgb = display_bands(list(dataset.bands))
    labels = np.asarray(dataset.targets)[test.indices]

    def picture(position):
        x, label = test[int(position)]
        raw = dataset.read(*dataset.samples[int(test.indices[position])])
        shown = viz.to_display_image(raw[rgb] if rgb is not None else raw.mean(axis=0))
        return x, label, shown.resize((4 * shown.width, 4 * shown.height), Image.Resampling.NEAREST)

    return common.first_usable((np.flatnonzero(labels == c) for c in np.unique(labels)), picture)


def main(argv=None):
    """Run the example; returns a dict with the fit result, the final test evaluation and the
    paths. Errors end it with one line and an exit status (``common``'s docstring)."""
    return EXAMPLE.run(build_parser(), train, argv)


def train(args):
    """The run itself, from parsed options."""
    start = time.perf_counter()
    run = EXAMPLE.settings(args)
    if args.scale is not None and not (np.isfinite(args.scale) and args.scale > 0):
        EXAMPLE.fail(f"--scale must be a finite number > 0, got {args.scale}")
    EXAMPLE.claim(args, run)  # before the data: a refused --out costs nothing; held to the end
    root = common.on_rank_0_first(lambda: data_root(args))
    bands = tuple(b.strip() for b in args.bands.split(",")) if args.bands else None
    try:
        train_set, test_set, (mean, std) = eurosat_splits(root, train_fraction=0.8, seed=args.seed,
                                                          augment=True, bands=bands,
                                                          num_workers=args.workers, scale=args.scale,
                                                          nonfinite=args.nonfinite)
    except (FileNotFoundError, ValueError) as error:  # missing/empty class folders, unknown bands
        EXAMPLE.fail(str(error))
    dataset = train_set.dataset
    classes = dataset.classes
    print(f"data: {dataset.summary()}")
    print(f"data: {dataset.kind.upper()} release, {len(dataset.bands)} bands "
          f"({', '.join(dataset.bands)}), {len(classes)} classes; {len(train_set):,} training and "
          f"{len(test_set):,} test images (4:1 per class); bands normalised with the training "
          f"split's mean and std")

    minidl.manual_seed(args.seed)
    model = euronet(in_channels=len(dataset.bands), num_classes=len(classes),
                    batch_norm=args.batch_norm)
    summary(model, model.input_shape)

    train_loader = DataLoader(train_set, run.batch_size, shuffle=True, seed=args.seed,
                              num_workers=args.workers, **common.shard())
    test_loader = DataLoader(test_set, run.batch_size, num_workers=args.workers, **common.shard())
    trained = common.distribute(model)  # itself, or averaging its gradients over the processes
    optimizer, scheduler = common.sgd_with_plateau(model, args, run)
    loss_fn = with_one_hot(ops.binary_cross_entropy_with_logits)
    metrics = (top1, binary_error)
    print(f"recipe: {'batch norm after each convolution; ' if args.batch_norm else ''}"
          f"{len(classes)} sigmoid outputs, binary cross-entropy against one-hot labels; "
          f"{EXAMPLE.describe_sgd(args, run, len(train_loader))}; random flips; device {run.device}")
    print(f"columns: top1 = error of the highest output (chance {100 * (1 - 1 / len(classes)):.0f}%), "
          f"binary = error of the {len(classes)} yes/no outputs at 0.5 (1 - Keras's binary accuracy; "
          f"answering 'no' everywhere scores {100 / len(classes):.0f}%)")
    recipe = {"model": "euronet", "classes": list(classes), "bands": list(dataset.bands),
              "seed": args.seed, "scale": args.scale, "nonfinite": args.nonfinite}
    if args.batch_norm:  # only then, so that runs from before the option resume as they were
        recipe["batch_norm"] = True
    result = fit(trained, loss_fn, optimizer, train_loader, run.epochs, val_loader=test_loader,
                 scheduler=scheduler, device=run.device, out_dir=run.out, metrics=metrics,
                 predict=sigmoid_scores, monitor="val_loss", recipe=recipe, **common.fit_options(args))
    history = result["history"]
    if history:
        best = ("no epoch had a finite test loss" if result["best"] is None else
                f"best test loss {result['best']:.4f} in epoch {result['best_epoch']}")
        print(f"training loss: {history[0]['train_loss']:.4f} in epoch 1, "
              f"{history[-1]['train_loss']:.4f} in epoch {history[-1]['epoch']}; {best}")

    tested = evaluate(trained, test_loader, loss_fn, device=run.device, metrics=metrics,
                      predict=sigmoid_scores)
    print(f"final model on the {len(test_set):,} test images: loss {tested['loss']:.4f}, accuracy "
          f"{100 * (1 - tested['top1']):.2f}% (top-1 error {100 * tested['top1']:.2f}%), binary "
          f"accuracy {100 * (1 - tested['binary']):.2f}%")

    written = [] if EXAMPLE.rank else common.save_pictures(
        model, picture_images(test_set, dataset), classes, run.out, args.grad_cam_images, filter_scale=8)
    print(f"data: {dataset.summary()}")
    common.print_written(run.out, written, start)
    return {"fit": result, "test": tested, "out": run.out, "pictures": written, "classes": classes,
            "args": args}


if __name__ == "__main__":
    main()
