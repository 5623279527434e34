"""How much of a bare training step's speed ``fit`` keeps with the threaded DataLoader.

    python benchmarks/loop_bench.py                 # AlexNet on the demo's JPEGs, batch 16
    python benchmarks/loop_bench.py --workers 1 --batch-size 32

The bare step trains on one batch already in memory, over and over; ``fit`` trains on the
demo's 256x256 JPEGs, which the DataLoader's threads decode and augment (random 227x227 crops,
flips, fancy PCA) while the step runs, on the same cores. The two are timed in turn -- a bare
epoch, then a fit epoch, a bare epoch ... -- so both see the same machine, and the table gives
the median images/s of each and their ratio: the share of the step's speed the real loop
keeps. The demo set is the example's (``make_demo_imagenet``, written once to the data cache).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import minidl  # noqa: E402  -- first, as a training script does (see minidl.cpu.configure)

from minidl import ops  # noqa: E402
from minidl.data import DataLoader, ImageFolder, alexnet_train_transform, make_demo_imagenet  # noqa: E402
from minidl.models import alexnet  # noqa: E402
from minidl.optim import SGD  # noqa: E402
from minidl.train import fit  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader threads (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="bare epochs and fit epochs, each")
    args = parser.parse_args()

    root = make_demo_imagenet(num_classes=4, train_per_class=75, val_per_class=20, seed=0,
                              verbose=False)
    train = ImageFolder(root / "train", transform=alexnet_train_transform())
    loader = DataLoader(train, args.batch_size, shuffle=True, seed=0, num_workers=args.workers,
                        drop_last=True)
    minidl.manual_seed(0)
    model = alexnet(num_classes=4)
    optimizer = SGD(model.parameters(), lr=0.001)
    images, labels = next(iter(loader))
    x = minidl.Tensor(images)

    def bare_epoch():
        start = time.perf_counter()
        for _ in range(len(loader)):
            loss = ops.softmax_cross_entropy(model(x), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return len(loader) * args.batch_size / (time.perf_counter() - start)

    bare_epoch()  # compilation and first-touch of the buffers
    bare, looped = [], []
    with tempfile.TemporaryDirectory() as out:
        for epoch in range(args.rounds):
            bare.append(bare_epoch())
            result = fit(model, ops.softmax_cross_entropy, optimizer, loader, epochs=epoch + 1,
                         out_dir=out, resume=epoch > 0, metrics=(), progress=False)
            looped.append(result["history"][-1]["images_per_s"])
    print(f"AlexNet, batch {args.batch_size}, {len(loader)} steps per epoch, DataLoader with "
          f"{args.workers} thread(s), {os.cpu_count()} cores")
    print("| loop | img/s median (min-max) |")
    print("|---|---|")
    for name, rates in (("bare step, one batch in memory", bare),
                        ("fit on the demo JPEGs", looped)):
        print(f"| {name} | {statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f}) |")
    print(f"| **fit / bare** | **{statistics.median(looped) / statistics.median(bare):.0%}** |")


if __name__ == "__main__":
    main()
