"""Train AlexNet with the paper's recipe on an ImageNet-layout folder, or on a built-in demo set.

    python examples/alexnet_imagenet.py                        # the demo: < 5 min on 2 CPU cores
    python examples/alexnet_imagenet.py --data /data/imagenet --device cuda --epochs 90
    python examples/alexnet_imagenet.py --resume               # continue the run in --out

``--data DIR`` must hold ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` with the same class
folders (the usual re-organised ILSVRC layout; .jpg/.jpeg/.png, any case, also work). Without
``--data`` the script writes a small generated data set in that layout once into a cache
folder (``$MINIDL_DATA`` or ``~/.cache/minidl``) -- coloured discs, stripes, checkerboards...,
the class being the *shape* -- and runs the whole pipeline on it.

What runs is the recipe of Krizhevsky et al. (2012): SGD with momentum 0.9 and weight decay
0.0005, the learning rate inside the velocity; the rate divided by 10 when the validation error
stops improving (at most three times); training crops 227x227 at random from the central
256x256, random mirroring and "fancy PCA" colour noise; dropout 0.5 in fc6 and fc7; the
test-time average of the softmax over ten crops (four corners, centre, and their mirrors). Each
epoch is validated on the centre crop (ten times cheaper); the final evaluation uses the ten
crops.

What it writes to ``--out``: checkpoint.npz (resume from it with ``--resume``), best.npz (the
epoch with the lowest validation error), metrics.jsonl, curves.png, filters_conv1.png,
feature_maps_conv{1,2,3}.png (for one validation image, after ReLU) and grad_cam_*.png (where
the network looks, for a few validation images). A folder that holds a run is refused without
``--resume`` or ``--overwrite``; Ctrl-C or SIGTERM saves a checkpoint and says how to go on;
``--help`` lists the options, README the exit statuses.

Images that cannot be decoded or used (a thin strip that resizing would blow up past a size
limit) are skipped and named as they are read; ``--check-files`` reads them all before
training. The ``data:`` lines count the files used and skipped, by reason, and name classes
left with no usable image.

The demo (no ``--data``) keeps the recipe and shrinks the rest to fit 5 minutes on 2 CPU
cores: 4 classes of 75 training and 20 validation images, batch 16, 10 epochs of 18 steps, the
rate dropped after one epoch without improvement and at most once. One departure from the
paper: the initial weights are scaled to each layer's fan-in (``--init scaled``; see
``scaled_init``), since with the published ones AlexNet stays at chance for longer than the
demo lasts. Measured on 2 cores (AMD EPYC, 2026-11-30): 135 s from an empty Numba cache,
demo images included, about 2 minutes warm. With seeds 0, 1 and 2 (``--seed``) the training
loss fell from 1.41-1.43 (chance: ln 4 = 1.39) to 0.07, 0.26 and 0.21, and the ten-crop
validation accuracy reached 97.5, 98.75 and 92.5 % (chance: 25 %). The run is short and its
rate high, so the result depends on the seed.
"""
import math
import time
from pathlib import Path

import numpy as np

import minidl
from minidl import init, ops
from minidl.data import (IMAGENET_MEAN, IMAGENET_STD, DataLoader, ImageFolder, Subset,
                         alexnet_eval_transform, alexnet_train_transform, make_demo_imagenet)
from minidl.data.demo import DemoFolderBusy
from minidl.data.transforms import CenterCrop, Compose, Normalize, ResizeShorter, to_array
from minidl.layers import Linear
from minidl.metrics import top1, top5
from minidl.models import alexnet, summary
from minidl.models.alexnet import WEIGHTED_LAYERS
from minidl.random import default_generator
from minidl.train import evaluate, fit

import common

# Settings of the no-argument demo (see the module docstring and --help): a few classes, small
# batches and a handful of epochs, so that the whole run, Numba's first compilation and the
# data generation included, stays under 5 minutes on 2 CPU cores.
DEMO = dict(classes=4, per_class=75, val_per_class=20, batch_size=16, epochs=10, init="scaled",
            lr_patience=1, lr_drops=1)
PAPER = dict(batch_size=128, epochs=90, init="published", lr_patience=3, lr_drops=3)
EXAMPLE = common.Example("alexnet_imagenet.py", "alexnet", DEMO, PAPER, source="the paper's",
                         monitored="validation error")


def build_parser():
    parser = EXAMPLE.parser(__doc__, data_help="folder with train/<class>/*.JPEG and val/<class>/*.JPEG; "
                                               "without it a generated demo set is used")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"images per SGD step (default {PAPER['batch_size']}, the paper's; "
                             f"{DEMO['batch_size']} for the demo, to fit its 5-minute budget)")
    parser.add_argument("--lr", type=float, default=0.01, help="initial learning rate (default %(default)s)")
    EXAMPLE.add_schedule_options(parser)
    parser.add_argument("--variant", choices=("paper", "caffe"), default="paper",
                        help="'paper': LRN with k=2 and the paper's initial weights; 'caffe': the "
                             "Caffe reference model's LRN and initial weights (biases 0.1, smaller "
                             "fc6/fc7 weights); default %(default)s")
    parser.add_argument("--init", choices=("published", "scaled"), default=None,
                        help="'published': the variant's initial weights (N(0, 0.01), ...); "
                             "'scaled': N(0, 1/fan_in) weights and zero biases, which start "
                             "learning within a few dozen steps, where the published ones stay at "
                             "chance for longer than the demo lasts (default "
                             f"{PAPER['init']!r}; {DEMO['init']!r} for the demo)")
    parser.add_argument("--val-images", type=int, default=None,
                        help="validate on this many validation images only (a seeded random "
                             "choice); default all")
    parser.add_argument("--check-files", action="store_true",
                        help="decode every image once before training, so that the data: line "
                             "counts every unusable file and empty class up front (reads the "
                             "whole data set; without it files are checked as they are read)")
    demo = EXAMPLE.add_run_options(parser, evaluated="validation images",
                                   seeded="the weights and the batches", demo_files="images",
                                   demo_folder="demo-imagenet")
    demo.add_argument("--demo-classes", type=int, default=DEMO["classes"],
                      help="number of classes, 2 to 8 (default %(default)s)")
    demo.add_argument("--demo-per-class", type=int, default=DEMO["per_class"],
                      help="training images per class (default %(default)s)")
    demo.add_argument("--demo-val-per-class", type=int, default=DEMO["val_per_class"],
                      help="validation images per class (default %(default)s)")
    return parser


def scaled_init(model, generator):
    """Weights ~ N(0, 1 / fan_in) ("LeCun normal") and zero biases, in place.

    Why the demo needs it: with the published N(0, 0.01) weights each layer scales the signal
    down (conv3 has 2,304 inputs per output, so its outputs have 0.01 * sqrt(2304) = 0.48 times
    the size of its inputs, and so on through eight layers). At the start the part of the fc7
    output that depends on the image is a few hundredths of the part the constant biases add,
    the gradients of the convolutions are tiny, and the loss stays at ln(classes) for longer
    than the demo lasts (measured: the paper and Caffe variants were both still at chance after
    the 8-epoch, 144-step demo the first version had). Weights of std 1/sqrt(fan_in) keep the
    signal's size from layer to layer, and the network starts learning after a few dozen steps.
    Large data sets and long runs can afford the published weights; this is the one departure
    from the paper's recipe.
    """
    for name in WEIGHTED_LAYERS:
        init.lecun_normal_(model[name].weight, generator)
        init.zeros_(model[name].bias)
    return model


# -- data ------------------------------------------------------------------------------------------
def image_folders(root, check_files=False):
    """The train and val ``ImageFolder``s of ``root``, checked for the layout the script needs."""
    root = Path(root)
    if not root.is_dir():
        EXAMPLE.fail(f"--data {root}: no such folder")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            EXAMPLE.fail(f"--data {root}: there is no {split}/ folder ({root / split}); expected "
                         f"{root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG")
    try:
        train = ImageFolder(root / "train", transform=alexnet_train_transform(), check_files=check_files)
        val = ImageFolder(root / "val", transform=alexnet_eval_transform(), check_files=check_files)
    except FileNotFoundError as error:  # an empty split or class folder: the message names it
        EXAMPLE.fail(str(error))
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        EXAMPLE.fail(f"--data {root}: train/ and val/ must have the same class folders; "
                     f"only in train/: {only_train[:5]}{' ...' if len(only_train) > 5 else ''}, "
                     f"only in val/: {only_val[:5]}{' ...' if len(only_val) > 5 else ''}")
    return train, val


def demo_folders(args):
    if not 2 <= args.demo_classes <= 8:
        EXAMPLE.fail(f"--demo-classes must be between 2 and 8, got {args.demo_classes}")
    print(f"DEMO: no --data given, so AlexNet trains on a small generated data set: "
          f"{args.demo_classes} classes of patterns, {args.demo_per_class} training and "
          f"{args.demo_val_per_class} validation images per class (256x256 JPEGs).")
    try:
        root = make_demo_imagenet(root=args.demo_dir, num_classes=args.demo_classes,
                                  train_per_class=args.demo_per_class,
                                  val_per_class=args.demo_val_per_class, seed=0)
    except (FileExistsError, DemoFolderBusy) as error:
        EXAMPLE.fail(str(error))
    print(f"DEMO: images in {root}; pass --data DIR to train on your own ImageNet-layout folder.")
    return (ImageFolder(root / "train", transform=alexnet_train_transform(), check_files=args.check_files),
            ImageFolder(root / "val", transform=alexnet_eval_transform(), check_files=args.check_files))


def ten_crop_view(dataset):
    """The same images as ``dataset`` (an ImageFolder or a Subset of one), as ten crops each."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    tens = ImageFolder(base.root, transform=alexnet_eval_transform(ten_crops=True))
    return Subset(tens, dataset.indices) if isinstance(dataset, Subset) else tens


# -- output ----------------------------------------------------------------------------------------
def print_summary(model, num_classes):
    """The layer table of AlexNet as published (1000 classes), and what this run changes."""
    if num_classes == 1000:
        summary(model, model.input_shape)
        return
    # Built only for its table: the published network, with ImageNet's 1000 classes.
    reference = alexnet(1000, variant=model.variant, generator=np.random.default_rng(0))
    print("AlexNet as published (ImageNet, 1000 classes):")
    summary(reference, reference.input_shape)
    del reference
    fc8 = model.fc8.num_parameters()
    print(f"This run has {num_classes} classes, so fc8 is 4096 -> {num_classes} "
          f"({fc8:,} parameters instead of {Linear(4096, 1000).num_parameters():,}): "
          f"{model.num_parameters():,} parameters in all.")


def picture_images(val):
    """One validation image of each class -- the first of its class that can be read: (the
    normalised input, its label, the 227x227 centre crop a person sees)."""
    base = val.dataset if isinstance(val, Subset) else val
    indices = val.indices if isinstance(val, Subset) else np.arange(len(val))
    crop = Compose([ResizeShorter(256), CenterCrop(256), CenterCrop(227)])
    normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)  # as in alexnet_eval_transform
    labels = np.asarray(base.targets)[indices]

    def picture(index):
        path, label = base.samples[index]
        shown = crop(base.read(path, label))
        return normalize(to_array(shown)), label, shown

    return common.first_usable((indices[labels == c] for c in np.unique(labels)), picture)


# -- the run ---------------------------------------------------------------------------------------
def main(argv=None):
    """Run the example; returns a dict with the fit result, the ten-crop evaluation and the
    paths. Errors end it with one line and an exit status (``common``'s docstring)."""
    return EXAMPLE.run(build_parser(), train, argv)


def train(args):
    """The run itself, from parsed options."""
    start = time.perf_counter()
    run = EXAMPLE.settings(args)
    init_weights = args.init or EXAMPLE.defaults(run.demo)["init"]
    if args.val_images is not None and args.val_images < 1:
        EXAMPLE.fail(f"--val-images must be at least 1, got {args.val_images}")
    EXAMPLE.claim(args, run)  # before the data: a refused --out costs nothing; held to the end

    train_set, val_set = (common.on_rank_0_first(lambda: demo_folders(args)) if run.demo
                          else image_folders(args.data, args.check_files))
    folders = (train_set, val_set)
    if args.val_images is not None and args.val_images < len(val_set):
        chosen = np.random.default_rng(args.seed).choice(len(val_set), args.val_images, replace=False)
        val_set = Subset(val_set, np.sort(chosen))
    classes = train_set.classes
    for folder in folders:
        print(f"data: {folder.summary()}")
    print(f"data: {len(train_set):,} training images, {len(val_set):,} validation images, "
          f"{len(classes)} classes ({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")

    minidl.manual_seed(args.seed)
    model = alexnet(num_classes=len(classes), variant=args.variant)
    if init_weights == "scaled":
        scaled_init(model, default_generator())
    print_summary(model, len(classes))

    train_loader = DataLoader(train_set, run.batch_size, shuffle=True, seed=args.seed,
                              num_workers=args.workers, drop_last=len(train_set) >= 2 * run.batch_size,
                              **common.shard())
    val_loader = DataLoader(val_set, run.batch_size, num_workers=args.workers, **common.shard())
    trained = common.distribute(model)  # itself, or averaging its gradients over the processes
    optimizer, scheduler = common.sgd_with_plateau(model, args, run)
    metrics = (top1, top5) if len(classes) > 5 else (top1,)  # top-5 of <= 5 classes is always right
    chance_loss = math.log(len(classes))
    print(f"recipe: {EXAMPLE.describe_sgd(args, run, len(train_loader))}; random 227x227 crops of the "
          f"central 256x256, mirroring and fancy-PCA colour noise; dropout 0.5")
    departure = " (the demo's one departure from the paper: see --help, --init)"
    print(f"model: variant {args.variant!r}, {init_weights} initial weights"
          + (departure if init_weights == "scaled" else "")
          + f"; device {run.device}. Chance: loss ln({len(classes)}) = {chance_loss:.3f}, "
          f"top-1 error {100 * (1 - 1 / len(classes)):.0f}%")
    recipe = {"model": "alexnet", "variant": args.variant, "classes": list(classes), "seed": args.seed,
              "val_images": args.val_images}
    result = fit(trained, ops.softmax_cross_entropy, optimizer, train_loader, run.epochs,
                 val_loader=val_loader, scheduler=scheduler, device=run.device, out_dir=run.out,
                 metrics=metrics, recipe=recipe, **common.fit_options(args))
    history = result["history"]
    if history:
        best = ("no epoch had a finite validation error" if result["best"] is None else
                f"best validation top-1 error {100 * result['best']:.2f}% in epoch {result['best_epoch']}")
        print(f"training loss: {history[0]['train_loss']:.3f} in epoch 1, {history[-1]['train_loss']:.3f} "
              f"in epoch {history[-1]['epoch']} (chance {chance_loss:.3f}); {best}")

    print(f"evaluating the final model on {len(val_set):,} validation images, ten crops each ...")
    ten_crop_loader = DataLoader(ten_crop_view(val_set), max(1, run.batch_size // 8),
                                 num_workers=args.workers, **common.shard())
    tested = evaluate(trained, ten_crop_loader, ops.softmax_cross_entropy, device=run.device,
                      ten_crop=True, metrics=metrics, progress=EXAMPLE.rank == 0)
    print(f"ten-crop validation: loss {tested['loss']:.4f}, "
          + ", ".join(f"{m.__name__} error {100 * tested[m.__name__]:.2f}% "
                      f"(accuracy {100 * (1 - tested[m.__name__]):.2f}%)" for m in metrics))

    written = [] if EXAMPLE.rank else common.save_pictures(model, picture_images(val_set), classes,
                                                           run.out, args.grad_cam_images)
    for folder in folders:
        print(f"data: {folder.summary()}")
    common.print_written(run.out, written, start)
    return {"fit": result, "ten_crop": tested, "out": run.out, "pictures": written,
            "classes": classes, "args": args}


if __name__ == "__main__":
    main()
