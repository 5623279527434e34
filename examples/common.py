"""What the AlexNet and EuroNet examples share: the options of a training run and their
defaults for the demo and for real data, SGD with its plateau schedule, the pictures of what the
network learned, and the closing list of the files written.

An example imports this file as ``common`` -- Python puts a script's own folder on
``sys.path`` -- and keeps for itself only what differs: its data and its recipe.
"""
import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import minidl
from minidl import backend, viz
from minidl.data.demo import default_root
from minidl.optim import SGD, ReduceLROnPlateau

# What fit writes to the output folder, listed at the end of a run.
FIT_FILES = ("checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png")


@dataclasses.dataclass
class Settings:
    """The options whose defaults depend on whether the run is the demo, resolved."""
    demo: bool
    epochs: int
    batch_size: int
    lr_patience: int
    lr_drops: int
    out: Path
    device: str


class Example:
    """One training example: the script's name (in error messages), its run folder's name, the
    defaults of the demo and of a run on real data, and what the schedule watches."""

    def __init__(self, prog, run_name, demo_defaults, full_defaults, source, monitored):
        self.prog = prog
        self.run_name = run_name
        self.demo_defaults = demo_defaults
        self.full_defaults = full_defaults
        self.source = source        # whose recipe the full defaults are: "the paper's"
        self.monitored = monitored  # what must improve to keep the rate: "validation error"

    def fail(self, message):
        """Stop with a one-line error (exit status 1) instead of a traceback."""
        raise SystemExit(f"{self.prog}: error: {message}")

    def defaults(self, demo):
        return self.demo_defaults if demo else self.full_defaults

    def parser(self, doc, data_help):
        """An argument parser described by the first line of the script's docstring ``doc``,
        with --data (``data_help`` says what it holds) and --epochs."""
        description = doc.split("\n", 1)[0] if doc else None  # no docstrings under python -OO
        parser = argparse.ArgumentParser(prog=self.prog, description=description)
        parser.add_argument("--data", type=Path, default=None, help=data_help)
        parser.add_argument("--epochs", type=int, default=None,
                            help=f"epochs in all, resumed ones included (default "
                                 f"{self.full_defaults['epochs']}, {self.source}; "
                                 f"{self.demo_defaults['epochs']} for the demo)")
        return parser

    def add_schedule_options(self, parser):
        """--momentum, --weight-decay, --lr-patience and --lr-drops."""
        demo, full = self.demo_defaults, self.full_defaults
        parser.add_argument("--momentum", type=float, default=0.9, help="(default %(default)s)")
        parser.add_argument("--weight-decay", type=float, default=0.0005, help="(default %(default)s)")
        parser.add_argument("--lr-patience", type=int, default=None,
                            help=f"epochs without a better {self.monitored} before the rate is "
                                 f"divided by 10 (default {full['lr_patience']}; "
                                 f"{demo['lr_patience']} for the demo)")
        parser.add_argument("--lr-drops", type=int, default=None,
                            help=f"at most this many divisions by 10 (default {full['lr_drops']}; "
                                 f"{demo['lr_drops']} for the demo)")

    def add_run_options(self, parser, evaluated, seeded, demo_files, demo_folder):
        """--device, --out, --resume, --max-steps, --workers, --seed, --grad-cam-images, and a
        group for the demo's data holding --demo-dir, returned for the example's own demo options.

        ``evaluated`` names the images the run is evaluated on ("test images"), ``seeded`` what
        the seed decides, ``demo_files`` what the demo set is made of ("GeoTIFFs") and
        ``demo_folder`` its folder's name in the data cache.
        """
        parser.add_argument("--device", default="cpu",
                            help="cpu (default) or cuda (needs CuPy and an NVIDIA GPU)")
        parser.add_argument("--out", type=Path, default=None,
                            help=f"output folder (default runs/{self.run_name}, "
                                 f"runs/{self.run_name}-demo for the demo)")
        parser.add_argument("--resume", action="store_true",
                            help="continue from --out/checkpoint.npz (give the same settings)")
        parser.add_argument("--max-steps", type=int, default=None,
                            help="stop after this many SGD steps in all, for a quick look")
        parser.add_argument("--workers", type=int, default=2,
                            help="data-loading threads (default %(default)s)")
        parser.add_argument("--seed", type=int, default=0,
                            help=f"seeds {seeded} (default %(default)s)")
        parser.add_argument("--grad-cam-images", type=int, default=3,
                            help=f"{evaluated} (one per class) to draw Grad-CAM maps for "
                                 "(default %(default)s)")
        demo = parser.add_argument_group("demo data (used when --data is absent)")
        demo.add_argument("--demo-dir", type=Path, default=None,
                          help=f"where the demo {demo_files} are written once "
                               f"(default {default_root(demo_folder)})")
        return demo

    def settings(self, args):
        """The demo's defaults without --data, the full run's with it, for the options left
        unset; checked, with the device available."""
        demo = args.data is None
        defaults = self.defaults(demo)
        batch_size = args.batch_size
        if "batch_size" in defaults:  # a default that depends on the data, not the option's own
            batch_size = batch_size or defaults["batch_size"]
        epochs = args.epochs if args.epochs is not None else defaults["epochs"]
        lr_patience = args.lr_patience or defaults["lr_patience"]
        lr_drops = args.lr_drops if args.lr_drops is not None else defaults["lr_drops"]
        out = args.out or Path("runs") / (f"{self.run_name}-demo" if demo else self.run_name)
        if batch_size < 1 or epochs < 1 or lr_patience < 1 or lr_drops < 0:
            self.fail("--batch-size, --epochs and --lr-patience must be at least 1, --lr-drops at least 0")
        try:
            device = backend.normalize_device(args.device)
        except (RuntimeError, ValueError) as error:
            self.fail(str(error))
        return Settings(demo, epochs, batch_size, lr_patience, lr_drops, out, device)

    def describe_sgd(self, args, settings, steps_per_epoch):
        """The optimiser and schedule part of the run's "recipe:" line."""
        return (f"SGD, lr {args.lr} inside the velocity, momentum {args.momentum}, weight decay "
                f"{args.weight_decay}; lr divided by 10 after {settings.lr_patience} epoch(s) without "
                f"a better {self.monitored}, at most {settings.lr_drops} time(s); batch "
                f"{settings.batch_size}, {steps_per_epoch} steps per epoch, {settings.epochs} epochs")


def sgd_with_plateau(model, args, settings):
    """The paper's optimiser and schedule: SGD with momentum and weight decay, the rate divided
    by 10 whenever the monitored value stops improving. Returns (optimizer, scheduler)."""
    optimizer = SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                    weight_decay=args.weight_decay)
    scheduler = ReduceLROnPlateau(optimizer, factor=0.1, patience=settings.lr_patience,
                                  max_reductions=settings.lr_drops)
    return optimizer, scheduler


def save_pictures(model, images, classes, out, count, filter_scale=4):
    """filters_conv1.png, feature_maps_conv{1,2,3}.png (of the first image) and
    grad_cam_<n>_<class>_as_<predicted class>.png (of the first ``count``); returns their paths.

    ``images`` yields ``(x, label, shown)`` for one image of each class: ``x`` as the network
    takes it (normalised), ``shown`` the picture a person should see under the heat map.
    ``filter_scale`` enlarges conv1's filters (11x11 for AlexNet, 3x3 for EuroNet).
    """
    written = [viz.save_filter_grid(model.conv1.weight, out / "filters_conv1.png", scale=filter_scale)]
    for n, (x, label, shown) in enumerate(itertools.islice(images, max(count, 1))):
        if n == 0:
            written += viz.save_feature_maps(model, x, out, layers=["relu1", "relu2", "relu3"],
                                             names=["conv1", "conv2", "conv3"]).values()
        if n >= count:
            break
        predicted = int(model.predict(minidl.Tensor(backend.to_device(x[None], model.device)))[0])
        name = f"grad_cam_{n + 1}_{classes[label]}_as_{classes[predicted]}.png"
        viz.save_grad_cam(model, x, out / name, target_class=predicted, display=shown)
        written.append(out / name)
    return [Path(p) for p in written]


def print_written(out, pictures, start):
    """The run's last lines: the files written to ``out`` and the time since ``start``."""
    print("written:")
    for name in FIT_FILES:
        if (out / name).exists():
            print(f"  {out / name}")
    for path in pictures:
        print(f"  {path}")
    print(f"done in {time.perf_counter() - start:.0f} s")
