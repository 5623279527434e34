"""What each rank runs for tests/test_distributed.py, under ``mpiexec -n 2`` (or alone, as the
single process the ranks are compared with).

    python tests/distributed_worker.py SCENARIO OUT

``train``: a sized-down AlexNet (the same kinds of layers: 11x11 stride-4 and grouped
convolutions, LRN, overlapping max-pooling, dropout, three fully connected layers, on 67x67
inputs) and EuroNet (16x16, 4 bands) trained by ``fit`` for two epochs of three steps, with
dropout and random flips on, validated on a sharded loader; each writes its parameters, the
hash of its parameters after every step, and the metrics ``fit`` logged to ``OUT``. Then: a
resume from a stop inside an epoch; two models that differ; a NaN on one rank.
``raise``, ``kill``, ``hang``: rank 1 raises, is killed, or stops answering, after a first step.
``raise-as-if-everywhere``: rank 1 alone raises an error marked as one every rank meets.
``resume FOLDER``: the two ranks resume a run that one process stopped in FOLDER, recording
the warnings they got.
"""
import json
import os
import shutil
import sys
import time
import warnings

import numpy as np

import minidl
from minidl import distributed, layers, ops
from minidl.data import ArrayDataset, DataLoader
from minidl.metrics import binary_error, sigmoid_scores, top1, with_one_hot
from minidl.models import euronet
from minidl.optim import SGD
from minidl.train import DivergenceError, fit

STEPS, EPOCHS, BATCH, LR = 3, 2, 8, 0.01


def mini_alexnet(num_classes=4, width=12):
    """AlexNet's layer kinds at a fraction of its size (67x67 inputs, 1x1 maps after pool5)."""
    return layers.Sequential(
        layers.Conv2d(3, width, kernel_size=11, stride=4), layers.ReLU(),
        layers.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0),
        layers.MaxPool2d(kernel_size=3, stride=2),
        layers.Conv2d(width, 16, kernel_size=5, padding=2, groups=2), layers.ReLU(),
        layers.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0),
        layers.MaxPool2d(kernel_size=3, stride=2),
        layers.Conv2d(16, 24, kernel_size=3, padding=1), layers.ReLU(),
        layers.Conv2d(24, 24, kernel_size=3, padding=1, groups=2), layers.ReLU(),
        layers.Conv2d(24, 16, kernel_size=3, padding=1, groups=2), layers.ReLU(),
        layers.MaxPool2d(kernel_size=3, stride=2), layers.Flatten(),
        layers.Dropout(0.5), layers.Linear(16, 32), layers.ReLU(),
        layers.Dropout(0.5), layers.Linear(32, 32), layers.ReLU(), layers.Linear(32, num_classes))


def flip(image, rng):
    """Random horizontal flip: drawn per sample from (seed, epoch, index), as the examples' are."""
    return image[:, :, ::-1].copy() if rng.random() < 0.5 else image


class Poisoned:
    """A dataset whose sample ``index`` is all NaN: it lies in one rank's share of its batch."""

    def __init__(self, dataset, index):
        self.dataset, self.index = dataset, index

    def __len__(self):
        return len(self.dataset)

    def get(self, index, rng):
        image, label = self.dataset.get(index, rng)
        return (image * np.nan if index == self.index else image), label


class Recording(SGD):
    """SGD that keeps the hash of the parameters after every step."""

    def __init__(self, model, **options):
        super().__init__(model.parameters(), **options)
        self.model, self.digests = model, []

    def step(self):
        super().step()
        self.digests.append(distributed.parameters_digest(self.model))


def case(name, seed=0):
    """(model, loss, metrics, predict, train images, labels, val images, labels) of a case."""
    rng = np.random.default_rng(seed)
    minidl.manual_seed(seed)
    if name == "alexnet":
        model, shape, classes = mini_alexnet(), (3, 67, 67), 4
        loss, metrics, predict = ops.softmax_cross_entropy, (top1,), None
    else:
        model, shape, classes = euronet(in_channels=4, num_classes=4, image_size=16), (4, 16, 16), 4
        loss = with_one_hot(ops.binary_cross_entropy_with_logits)
        metrics, predict = (top1, binary_error), sigmoid_scores
    n_train, n_val = STEPS * BATCH, 6
    x = rng.normal(0, 1, (n_train + n_val,) + shape).astype(np.float32)
    y = rng.integers(0, classes, n_train + n_val)
    return model, loss, metrics, predict, (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def train(name, out=None, max_steps=None, resume=False, epochs=EPOCHS, poison=None):
    """``fit`` on this rank's share; returns (model, optimiser, fit's result)."""
    model, loss, metrics, predict, (x, y), (xv, yv) = case(name)
    world, rank = distributed.world_size(), distributed.rank()
    shard = dict(num_replicas=world, rank=rank)
    dataset = ArrayDataset(x, y, transform=flip)
    if poison is not None:
        dataset = Poisoned(dataset, poison)
    train_loader = DataLoader(dataset, BATCH, shuffle=True, seed=3, num_workers=0, **shard)
    val_loader = DataLoader(ArrayDataset(xv, yv), BATCH, num_workers=0, **shard)
    trained = distributed.DistributedDataParallel(model) if world > 1 else model
    optimizer = Recording(model, lr=LR, momentum=0.9, weight_decay=5e-4)
    options = dict(predict=predict) if predict else {}
    result = fit(trained, loss, optimizer, train_loader, epochs, val_loader=val_loader,
                 metrics=metrics, out_dir=out, max_steps=max_steps, resume=resume, progress=False,
                 **options)
    return model, optimizer, result


def save(path, model, optimizer, result):
    np.savez(path + ".npz", **{name: p.data for name, p in model.named_parameters()})
    with open(path + ".json", "w") as f:
        json.dump({"digests": optimizer.digests, "history": result["history"]}, f)


def main_train(out):
    rank = distributed.rank()
    for name in ("alexnet", "euronet"):
        model, optimizer, result = train(name)
        save(os.path.join(out, f"{name}-rank{rank}"), model, optimizer, result)
    # A stop inside epoch 1 (after 2 of 3 steps), then a resume to the end, in a run folder.
    folder = os.path.join(out, "run")
    train("euronet", folder, max_steps=2)
    if rank == 0:  # kept for a resume on one process (the test's)
        shutil.copytree(folder, os.path.join(out, "stopped"))
    model, optimizer, result = train("euronet", folder, resume=True)
    save(os.path.join(out, f"resumed-rank{rank}"), model, optimizer, result)
    # Ranks that build different models.
    minidl.manual_seed(0)
    try:
        distributed.DistributedDataParallel(mini_alexnet(width=12 if rank == 0 else 8))
        mismatch = None
    except ValueError as error:
        mismatch = str(error)
    # A NaN image, read by one rank only.
    try:
        train("euronet", poison=10)
        diverged = None
    except DivergenceError as error:
        diverged = str(error)
    with open(os.path.join(out, f"faults-rank{rank}.json"), "w") as f:
        json.dump({"mismatch": mismatch, "diverged": diverged}, f)


def main_fault(kind):
    """A first step together, then rank 1 fails in the way ``kind`` says while rank 0 goes on."""
    print(distributed.format_hosts(), flush=True)
    model = distributed.DistributedDataParallel(mini_alexnet())
    x = np.random.default_rng(distributed.rank()).normal(0, 1, (2, 3, 67, 67)).astype(np.float32)
    for step in range(100):
        ops.softmax_cross_entropy(model(minidl.Tensor(x)), np.array([0, 1])).backward()
        if step == 1 and distributed.rank() == 1:
            if kind == "raise":
                raise RuntimeError("a planned failure of rank 1")
            if kind == "raise-as-if-everywhere":
                raise distributed.raised_on_all_ranks(FileNotFoundError("rank 1's data is missing"))
            if kind == "kill":
                os.kill(os.getpid(), 9)
            time.sleep(3600)  # "hang": the watchdog of rank 0 must end the job


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    distributed.init()
    scenario, out = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
    if scenario == "train":
        main_train(out)
    elif scenario == "resume":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            resumed = train("euronet", out, resume=True)
        save(os.path.join(out, f"resumed-rank{distributed.rank()}"), *resumed)
        with open(os.path.join(out, f"warnings-rank{distributed.rank()}.json"), "w") as f:
            json.dump([str(w.message) for w in caught], f)
    else:
        main_fault(scenario)
