"""What the AlexNet and EuroNet examples share: the options of a training run and their
defaults for the demo and for real data, SGD with its plateau schedule, the pictures of what the
network learned, the closing list of the files written, and how a run ends when something
goes wrong: one line and an exit status, not a traceback (``--debug`` shows it).

Exit statuses: 0 done; 1 an error (bad option or data, a folder holding another run, a
checkpoint that cannot be used, a full disk...), 2 a malformed command line (argparse); 3 the
training diverged (NaN or infinite loss or gradient) and stopped, the last checkpoint intact;
130 stopped by SIGINT (Ctrl-C) and 143 by SIGTERM, after saving a checkpoint to resume from.

Many processes: under an MPI launcher (``mpiexec -n 2 python examples/euronet_eurosat.py``,
``srun``) or with ``--distributed`` an example trains with ``minidl.distributed``: each process
takes its share of every global batch (``--batch-size`` stays the global batch), rank 0 alone
prints and writes, and the metrics are those of the whole batch and the whole validation set.
An error that every process meets at the same point (a bad option, a refused folder, a
diverged loss, a signal) ends each of them with one line from rank 0 and the usual status; an
error of one process alone is printed by it, naming its rank, and ends the whole job through
``MPI_Abort`` with that status.

An example imports this file as ``common`` -- Python puts a script's own folder on
``sys.path`` -- and keeps for itself only what differs: its data and its recipe.
"""
import argparse
import dataclasses
import itertools
import math
import os
import shlex
import sys
import time
from pathlib import Path

import minidl
from minidl import backend, checkpoint, distributed, runs, viz
from minidl.data import DECODE_ERRORS, BadImage, SkippedSample
from minidl.data.demo import default_root
from minidl.optim import SGD, ReduceLROnPlateau
from minidl.train import DivergenceError, RecipeChangedError, TrainingInterrupted

# What fit writes to the output folder, listed at the end of a run.
FIT_FILES = runs.RUN_FILES
EXIT_ERROR, EXIT_DIVERGED = 1, 3


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
        self.folder = None          # the output folder while a run holds it (claim)
        self.world, self.rank = 1, 0  # processes training together, and which one this is

    def fail(self, message, everywhere=True):
        """Stop with a one-line error (exit status 1) instead of a traceback. ``everywhere``:
        with many processes, every one of them meets this error at the same point (they share
        the options and the data), so rank 0 alone says it."""
        raise _marked(SystemExit(f"{self.prog}: error: {message}"), everywhere)

    def run(self, parser, main, argv):
        """``main(args)`` with ``args`` parsed from ``argv``, ending in one line and an exit
        status when something goes wrong (module docstring); ``--debug`` re-raises instead."""
        args = parser.parse_args(argv)
        try:
            self.start_processes(args)
            return self._run_reporting(main, args, argv)
        except SystemExit as end:
            if self.world == 1 or args.debug:
                raise
            self._end_one_of_many(end)
        finally:
            if self.folder is not None:  # held since claim(), even when the run failed
                self.folder.release()
                self.folder = None

    def _end_one_of_many(self, end):
        """One process of many ends with ``end``: quietly where every rank ends the same way
        (rank 0 tells), else -- an error this rank met alone, such as a data folder missing on
        its machine -- naming this rank and stopping the whole job."""
        status = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
        text = None if isinstance(end.code, int) or end.code is None else str(end.code)
        if status == 0 or (distributed.is_raised_on_all_ranks(end) and distributed.ending_together()):
            if text and self.rank == 0:
                print(text, file=sys.stderr, flush=True)
            raise SystemExit(status) from None
        print(f"{text or f'{self.prog}: exit status {status}'} (rank {self.rank} of {self.world}; "
              "stopping every process)", file=sys.stderr, flush=True)
        distributed.abort(status)

    def start_processes(self, args):
        """Join the other processes if an MPI launcher started several (or ``--distributed``):
        ``minidl.distributed.init()``; rank 0 keeps the standard output, and each process gets
        its share of the CPU cores (unless MINIDL_NUM_THREADS says otherwise)."""
        if not (args.distributed or distributed.launched_by_mpi()):
            return
        try:
            distributed.init(device=args.device if args.device != "cpu" else None)
        except (RuntimeError, ImportError) as error:
            raise SystemExit(f"{self.prog}: error: {error}") from None
        self.world, self.rank = distributed.world_size(), distributed.rank()
        if self.world == 1:
            return
        if self.rank != 0:
            sys.stdout = open(os.devnull, "w")
        threads = share_cores()
        print(f"processes: {self.world} ({distributed.format_hosts()}); {threads}; rank 0 "
              "prints and writes the files")

    def _run_reporting(self, main, args, argv):
        try:
            return main(args)
        except TrainingInterrupted as stop:
            if self.rank != 0 and distributed.is_raised_on_all_ranks(stop):
                pass  # rank 0 says it
            elif stop.saved or (self.folder is not None
                                and (Path(self.folder.path) / "checkpoint.npz").exists()):
                print(f"{self.prog}: {stop}; to continue: {resume_command(self.prog, argv, self.world)}",
                      file=sys.stderr, flush=True)
            else:
                print(f"{self.prog}: {stop}", file=sys.stderr, flush=True)
            if args.debug:
                raise
            raise _marked(SystemExit(stop.exit_status), distributed.is_raised_on_all_ranks(stop)) from None
        except DivergenceError as error:
            if args.debug:
                raise
            text = str(error).replace("on_nonfinite='skip' or 'reduce_lr'", "--on-nonfinite skip or reduce-lr")
            if self.rank == 0 or not distributed.is_raised_on_all_ranks(error):
                print(f"{self.prog}: error: {text}", file=sys.stderr, flush=True)
            raise _marked(SystemExit(EXIT_DIVERGED), distributed.is_raised_on_all_ranks(error)) from None
        except RecipeChangedError as error:
            if args.debug:
                raise
            self.fail(str(error).removeprefix("fit: ").replace("(accept_changed_recipe=True)",
                                                               "(--accept-changed-options)"))
        except (checkpoint.CheckpointError, OSError, MemoryError, distributed.PeerError) as error:
            if args.debug:
                raise
            hint = " (try a smaller --batch-size)" if isinstance(error, MemoryError) else ""
            self.fail(f"{type(error).__name__ + ': ' if isinstance(error, MemoryError) else ''}{error}{hint}",
                      everywhere=distributed.is_raised_on_all_ranks(error))
        except KeyboardInterrupt:  # outside fit: loading data, writing the demo set
            if args.debug:
                raise
            print(f"{self.prog}: interrupted (nothing was being trained)", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    def claim(self, args, settings):
        """Take the output folder for this run (held until ``run`` returns), refusing in one
        line a folder that another run is using or that holds a run not to be touched."""
        try:  # with many processes rank 0 holds it; the others learn whether it could
            self.folder = distributed.on_root(lambda: runs.claim(settings.out, resume=args.resume,
                                                                 overwrite=args.overwrite),
                                              what="claiming the output folder")
            return self.folder
        except distributed.PeerError:
            raise _marked(SystemExit(EXIT_ERROR), True) from None
        except runs.RunLockedError as error:
            self.fail(str(error))
        except runs.RunFolderError as error:
            if args.resume:
                self.fail(f"--out {settings.out} holds {', '.join(error.files)} but no checkpoint.npz "
                          "to resume from; add --overwrite (instead of --resume) to replace that run")
            self.fail(f"--out {settings.out} already holds a run ({', '.join(error.files)}): add "
                      "--resume to continue it, or --overwrite to replace it")

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
        """--device, --out, --resume or --overwrite, --accept-changed-options, --on-nonfinite,
        --max-steps, --checkpoint-every, --workers, --seed, --grad-cam-images, --debug, and a
        group for the demo's data holding --demo-dir, returned for the example's own demo
        options.

        ``evaluated`` names the images the run is evaluated on ("test images"), ``seeded`` what
        the seed decides, ``demo_files`` what the demo set is made of ("GeoTIFFs") and
        ``demo_folder`` its folder's name in the data cache.
        """
        parser.add_argument("--device", default="cpu",
                            help="cpu (default) or cuda (needs CuPy and an NVIDIA GPU)")
        parser.add_argument("--out", type=Path, default=None,
                            help=f"output folder (default runs/{self.run_name}, "
                                 f"runs/{self.run_name}-demo for the demo)")
        again = parser.add_mutually_exclusive_group()
        again.add_argument("--resume", action="store_true",
                           help="continue the run in --out from its checkpoint.npz, with the same "
                                "options (a folder holding a run is refused without --resume or "
                                "--overwrite)")
        again.add_argument("--overwrite", action="store_true",
                           help="replace the run in --out: its checkpoint.npz, best.npz, "
                                "metrics.jsonl and curves.png are deleted first")
        parser.add_argument("--accept-changed-options", action="store_true",
                            help="with --resume: use options that differ from the checkpoint's "
                                 "(--lr, --momentum, --weight-decay, --batch-size, --lr-patience, "
                                 "--lr-drops, the model...) instead of refusing; the new values "
                                 "apply from now on and are listed")
        parser.add_argument("--on-nonfinite", choices=("stop", "skip", "reduce-lr"), default="stop",
                            help="when a step's loss or gradient is NaN or infinite: 'stop' "
                                 "(default; exit status 3, the last checkpoint intact), 'skip' the "
                                 "batch (10 in a row stop), or 'reduce-lr': go back to the last "
                                 "checkpoint's state with the rate divided by 10 (3 times at most)")
        parser.add_argument("--max-steps", type=int, default=None,
                            help="stop after this many SGD steps in all, for a quick look")
        parser.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                            help="also write checkpoint.npz inside an epoch every STEPS SGD steps, "
                                 "so a crash loses at most that many (default: at each epoch's end "
                                 "and at a stop only)")
        parser.add_argument("--workers", type=int, default=None,
                            help="data-loading threads (default: one per core, at least 2, at most 8)")
        parser.add_argument("--seed", type=int, default=0,
                            help=f"seeds {seeded} (default %(default)s)")
        parser.add_argument("--grad-cam-images", type=int, default=3,
                            help=f"{evaluated} (one per class) to draw Grad-CAM maps for "
                                 "(default %(default)s)")
        parser.add_argument("--debug", action="store_true",
                            help="show the Python traceback of an error instead of one line")
        parser.add_argument("--distributed", action="store_true",
                            help="train on every process an MPI launcher started (found by itself "
                                 "under mpiexec or srun; this insists, and fails without mpi4py); "
                                 "--batch-size is then the global batch, split among them")
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

        def option(name):  # None means "not given": 0 is a value, to be checked like any other
            value = getattr(args, name)
            return defaults[name] if value is None else value

        batch_size, epochs = option("batch_size"), option("epochs")
        lr_patience, lr_drops = option("lr_patience"), option("lr_drops")
        out = args.out or Path("runs") / (f"{self.run_name}-demo" if demo else self.run_name)
        for name, value, low in (("--batch-size", batch_size, 1), ("--epochs", epochs, 1),
                                 ("--lr-patience", lr_patience, 1), ("--lr-drops", lr_drops, 0),
                                 ("--seed", args.seed, 0),
                                 ("--workers", 0 if args.workers is None else args.workers, 0),
                                 ("--grad-cam-images", args.grad_cam_images, 0),
                                 ("--max-steps", 1 if args.max_steps is None else args.max_steps, 1),
                                 ("--checkpoint-every",
                                  1 if args.checkpoint_every is None else args.checkpoint_every, 1)):
            if value < low:
                self.fail(f"{name} must be at least {low}, got {value}")
        for name, value in (("--lr", args.lr), ("--momentum", args.momentum),
                            ("--weight-decay", args.weight_decay)):
            if not (math.isfinite(value) and value >= 0):
                self.fail(f"{name} must be a finite number >= 0, got {value}")
        if args.accept_changed_options and not args.resume:
            self.fail("--accept-changed-options goes with --resume")
        if batch_size < self.world:
            self.fail(f"--batch-size {batch_size} is smaller than the {self.world} processes: each "
                      "needs at least one image per step (--batch-size is the global batch)")
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


def fit_options(args):
    """The keyword arguments of ``fit`` that come straight from the run options."""
    return dict(resume=args.resume, overwrite=args.overwrite,
                accept_changed_recipe=args.accept_changed_options,
                on_nonfinite=args.on_nonfinite.replace("-", "_"), max_steps=args.max_steps,
                checkpoint_every=args.checkpoint_every)


def resume_command(prog, argv, processes=1):
    """The command that continues this run: the same options, with --resume (and the same
    number of processes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if a not in ("--overwrite", "--resume")]
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(prog) else f"examples/{prog}"
    launcher = ["mpiexec", "-n", str(processes)] if processes > 1 else []
    return shlex.join(launcher + ["python", script] + argv + ["--resume"])


def _marked(error, everywhere):
    return distributed.raised_on_all_ranks(error) if everywhere else error


def share_cores():
    """Give each of the processes on this machine its share of the cores for minidl's and
    BLAS's threads, unless MINIDL_NUM_THREADS / OPENBLAS_NUM_THREADS say otherwise: two
    processes of two threads on two cores would each wait for the other's. Returns a
    description of the thread counts."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // _processes_here())
    set_threads = getattr(minidl.cpu, "set_num_threads", None)
    if set_threads is not None and not os.environ.get("MINIDL_NUM_THREADS"):
        set_threads(share)
    if not os.environ.get("OPENBLAS_NUM_THREADS"):
        from threadpoolctl import threadpool_limits
        threadpool_limits(share, user_api="blas")
    minidl_threads = minidl.cpu.num_threads() if hasattr(minidl.cpu, "num_threads") else "?"
    return f"{minidl_threads} minidl thread(s) per process on {cores} core(s)"


def _processes_here():
    """How many of the job's processes run on this machine."""
    here = distributed.hosts()[distributed.rank()][0]
    return sum(1 for host, _ in distributed.hosts() if host == here)


def shard():
    """The DataLoader arguments that give this process its share of each global batch."""
    return dict(num_replicas=distributed.world_size(), rank=distributed.rank())


def distribute(model):
    """``model`` wrapped to average its gradients over the processes (itself when alone)."""
    return distributed.DistributedDataParallel(model) if distributed.world_size() > 1 else model


def on_rank_0_first(make):
    """``make()`` on rank 0, then on the others (a demo set written once, which the others then
    find complete, or write on a machine of their own)."""
    made = distributed.on_root(make, what="writing the demo data set")
    return made if distributed.rank() == 0 else make()


def first_usable(groups, make):
    """For each group of candidates (the images of one class), ``make`` of the first candidate
    that can be read: an undecodable or refused file is passed over (the dataset has named it),
    and a group with none gives nothing."""
    for group in groups:
        for candidate in group:
            try:
                yield make(candidate)
            except (SkippedSample, BadImage) + DECODE_ERRORS:
                continue
            break


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
        with model.evaluating():  # dropout off: the prediction the Grad-CAM map explains
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
