"""Batches from a dataset: seeded shuffling, background decoding, exact resume.

A dataset is anything with ``len(dataset)`` and ``dataset[i] -> (image, label)``. Datasets that
draw random numbers (random crops, flips, colour noise) also offer ``dataset.get(i, rng)``; the
loader calls it with a generator derived from (seed, epoch, index) -- never from a shared,
stateful generator -- so sample ``i`` of epoch ``e`` is the same array whichever thread made it
and in whatever order the threads finished. That is what makes ``num_workers=2`` give exactly
the batches of ``num_workers=0``, and a resumed run give exactly the batches of an unbroken one.

Sharding for data-parallel training (``minidl.distributed``): with ``num_replicas=N, rank=r``
the loader still walks the epoch's permutation in global batches of ``batch_size``, and yields
rank r's piece of each: the r-th of N contiguous pieces, as even as can be (sizes differ by one
at most). So the N ranks read disjoint parts of the same seeded permutation every epoch, as
PyTorch's ``DistributedSampler`` makes them, and together each step they see exactly the global
batch one process would see -- that is what lets N ranks train exactly as one process. Unlike
``DistributedSampler`` nothing is padded (no sample is read twice, so validation metrics count
every image once) and ``len(loader)`` is the number of global batches, the same on every rank.
``drop_last`` drops the last global batch if it is short, as for one process. A rank whose piece
is empty (a last global batch with fewer samples than ranks, or files that were all unreadable)
still yields, so that every rank takes every step: an empty batch, images and labels of shape (0,).
"""
import collections
import concurrent.futures
import math
import os

import numpy as np

from .transforms import mask_nonfinite


class SkippedSample(Exception):
    """Raised by a dataset for a sample it cannot produce (an undecodable file). The dataset has
    already warned and recorded it; the DataLoader leaves the sample out of its batch."""


def sample_rng(seed, epoch, index):
    """The generator for sample ``index`` in epoch ``epoch``: independent streams for every
    (seed, epoch, index), by NumPy's SeedSequence spawn keys."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1, int(epoch), int(index))))


def epoch_order(length, seed, epoch, shuffle=True):
    """The order in which an epoch visits the samples: a permutation drawn from (seed, epoch),
    so each epoch differs and any epoch can be recomputed; ``arange`` without shuffling."""
    if not shuffle:
        return np.arange(length)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0, int(epoch))))
    return rng.permutation(length)


def shard(batch, num_replicas, rank):
    """Rank ``rank``'s piece of a global batch: the ``rank``-th of ``num_replicas`` contiguous
    pieces, whose sizes differ by one at most (the larger ones last)."""
    n = len(batch)
    return batch[(rank * n) // num_replicas:((rank + 1) * n) // num_replicas]


def load_sample(dataset, index, rng):
    """``dataset.get(index, rng)`` where the dataset has it, else ``dataset[index]``."""
    get = getattr(dataset, "get", None)
    if callable(get):
        return get(index, rng)
    return dataset[index]


def class_indices(labels, num_classes=None, owner="labels"):
    """``labels`` as int64 class indices, refusing what would be silently wrong: fractions
    (0.7 would become 0), negative values (-1 would index the last class), and values not below
    ``num_classes`` where it is given. Whole floats (2.0) are accepted."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            bad = np.flatnonzero(~whole)
            raise ValueError(f"{owner}: labels must be whole class indices; got {labels[bad[0]]} at "
                             f"position {bad[0]} ({len(bad)} such label(s))")
    elif labels.dtype.kind not in "iub":
        raise TypeError(f"{owner}: labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{owner}: labels must be >= 0, got {labels.min()} at position {labels.argmin()}")
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        raise ValueError(f"{owner}: labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                         f"got {labels.max()} at position {labels.argmax()}")
    return labels


class ArrayDataset:
    """In-memory samples: ``images`` (N, C, H, W) and ``labels`` (N,), with an optional transform.

    Labels are checked (``class_indices``: whole, >= 0, below ``num_classes`` if given), and so
    are float images: NaN or infinite pixels are refused, naming the samples, or with
    ``nonfinite="mask"`` replaced by the mean of the finite values of their channel.
    """

    def __init__(self, images, labels, transform=None, num_classes=None, nonfinite="refuse"):
        self.images = np.asarray(images)
        self.targets = class_indices(labels, num_classes, "ArrayDataset")
        if self.images.ndim != 4 or self.targets.shape != (self.images.shape[0],):
            raise ValueError(f"ArrayDataset: expected images (N, C, H, W) and labels (N,), got "
                             f"{self.images.shape} and {self.targets.shape}")
        if nonfinite not in ("refuse", "mask"):
            raise ValueError(f"ArrayDataset: nonfinite must be 'refuse' or 'mask', got {nonfinite!r}")
        if self.images.dtype.kind in "fc":
            bad = np.flatnonzero(~np.isfinite(self.images).reshape(len(self.images), -1).all(axis=1))
            if len(bad) and nonfinite == "refuse":
                raise ValueError(f"ArrayDataset: {len(bad)} image(s) hold NaN or infinite values, "
                                 f"e.g. sample(s) {bad[:5].tolist()}; pass nonfinite='mask' to replace "
                                 "them with their channel's mean")
            if len(bad):
                self.images = self.images.copy()
                for i in bad:
                    self.images[i] = mask_nonfinite(self.images[i])[0]
        self.transform = transform

    def __len__(self):
        return self.images.shape[0]

    def get(self, index, rng):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image, rng)
        return image, int(self.targets[index])

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"ArrayDataset: index {index} out of range for {len(self)} samples")
        index %= len(self)
        return self.get(index, sample_rng(0, 0, index))


class Subset:
    """The samples ``indices`` of ``dataset``, optionally with a transform of its own applied
    after the dataset's (e.g. the train split with augmentation and the test split without)."""

    def __init__(self, dataset, indices, transform=None):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self):
        return len(self.indices)

    @property
    def targets(self):
        base = getattr(self.dataset, "targets", None)
        if base is None:
            raise AttributeError("Subset.targets: the underlying dataset has no .targets")
        return np.asarray(base)[self.indices]

    @property
    def classes(self):
        return self.dataset.classes

    def get(self, index, rng):
        image, label = load_sample(self.dataset, int(self.indices[index]), rng)
        if self.transform is not None:
            image = self.transform(image, rng)
        return image, label

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"Subset: index {index} out of range for {len(self)} samples")
        index %= len(self)
        return self.get(index, sample_rng(0, 0, index))


def collate(samples):
    """[(image, label), ...] -> (images float32 (N, ...), labels int64 (N,))."""
    arrays = [np.asarray(image) for image, _ in samples]
    shapes = [a.shape for a in arrays]
    if len(set(shapes)) > 1:
        raise ValueError(f"collate: the samples of a batch must have one shape, got "
                         f"{_shape_counts(shapes)}")
    images = np.stack(arrays).astype(np.float32, copy=False)
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    return images, labels


def _shape_counts(shapes):
    counts = collections.Counter(shapes)
    return ", ".join(f"{shape} x {n}" for shape, n in counts.most_common())


def _describe(dataset, index):
    """The file behind sample ``index`` where the dataset knows one, else its index."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    samples = getattr(dataset, "samples", None)
    if samples is not None and 0 <= index < len(samples):
        return str(samples[index][0])
    return f"sample {index}"


def default_workers():
    """Loader threads by default: one per core this process may run on, at least 2 (a 2-core
    machine decodes while it computes) and at most 8 (past that, Python's share of the work
    -- handing out batches, stacking -- stops it scaling)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, max(2, cores))


class DataLoader:
    """Iterate over ``dataset`` in batches of NumPy arrays ``(images, labels)``.

    images: float32 (N, C, H, W) (or (N, 10, C, H, W) with a TenCrop transform); labels: int64 (N,).

    * ``shuffle``: each epoch visits the samples in a fresh permutation drawn from
      (``seed``, epoch); without it, in dataset order.
    * Epochs: iterating the loader runs epoch ``self.epoch``; a completed pass advances it by
      one, so ``for epoch in ...: for images, labels in loader:`` sees a new order every epoch.
      ``set_epoch(e)`` jumps to epoch ``e`` (call it every epoch if you prefer to be explicit).
    * Randomness per sample (crops, flips, colour noise) comes from ``sample_rng(seed, epoch,
      index)``, so the batches do not depend on ``num_workers`` or thread timing.
    * ``num_workers`` threads decode, transform and stack batches in the background (Pillow
      and NumPy release the GIL), each thread a whole batch at a time; by default (None) one
      per core this process may use, at least 2 and at most 8 (``default_workers``), so a
      machine with many cores keeps a GPU fed; ``prefetch_batches``
      batches beyond the one being consumed are in flight (at least ``num_workers`` in all),
      which bounds the memory held. ``num_workers=0`` does everything in the calling thread.
    * Resume: ``state_dict()`` -> {"seed", "epoch", "batch"} says which batch comes next;
      ``load_state_dict`` on a fresh loader makes its next iteration continue from exactly
      there. Otherwise every iteration starts at batch 0 of ``self.epoch``, so peeking with
      ``next(iter(loader))`` does not eat the first batch of the epoch.
    * A sample whose dataset raises ``SkippedSample`` (an undecodable file) is left out of its
      batch, which is then one shorter.

    * Sharding: ``num_replicas`` ranks, this one ``rank`` (module docstring); ``batch_size`` is
      the global batch, ``len`` the number of global batches, ``state_dict`` counts them.

    Not for two simultaneous iterations of the same loader.
    """

    def __init__(self, dataset, batch_size, shuffle=False, seed=0, num_workers=None, drop_last=False,
                 prefetch_batches=2, collate_fn=collate, num_replicas=1, rank=0):
        if num_workers is None:
            num_workers = default_workers()
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        if int(num_workers) != num_workers or num_workers < 0:
            raise ValueError(f"DataLoader: num_workers must be a non-negative integer, got {num_workers!r}")
        if int(prefetch_batches) != prefetch_batches or prefetch_batches < 0:
            raise ValueError(f"DataLoader: prefetch_batches must be a non-negative integer, got {prefetch_batches!r}")
        if int(num_replicas) != num_replicas or num_replicas < 1:
            raise ValueError(f"DataLoader: num_replicas must be a positive integer, got {num_replicas!r}")
        if int(rank) != rank or not 0 <= rank < num_replicas:
            raise ValueError(f"DataLoader: rank must be an integer in [0, {num_replicas}), got {rank!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.drop_last = bool(drop_last)
        self.prefetch_batches = int(prefetch_batches)
        self.collate_fn = collate_fn
        self.epoch = 0
        self._start_batch = 0  # where the next iteration starts (set only by set_epoch / load_state_dict)
        self._position = 0     # the batch of self.epoch that comes next, for state_dict

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch, batch=0):
        """Run epoch ``epoch`` next, starting at its batch ``batch``."""
        if int(epoch) != epoch or epoch < 0 or int(batch) != batch or batch < 0:
            raise ValueError(f"DataLoader.set_epoch: epoch and batch must be non-negative integers, "
                             f"got {epoch!r}, {batch!r}")
        self.epoch, self._start_batch, self._position = int(epoch), int(batch), int(batch)

    def state_dict(self):
        """Where the loader stands: the epoch and the batch within it that comes next."""
        if self._position >= len(self):  # the last batch was consumed: next is a new epoch
            return {"seed": self.seed, "epoch": self.epoch + 1, "batch": 0}
        return {"seed": self.seed, "epoch": self.epoch, "batch": self._position}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"], state.get("batch", 0))

    def batch_indices(self, epoch=None):
        """The dataset indices of every batch of an epoch (default: the current one) that this
        loader reads: with sharding, this rank's piece of each global batch."""
        epoch = self.epoch if epoch is None else epoch
        order = epoch_order(len(self.dataset), self.seed, epoch, self.shuffle)
        batches = [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(len(self))]
        if self.num_replicas == 1:
            return batches
        return [shard(batch, self.num_replicas, self.rank) for batch in batches]

    def _load(self, index, epoch):
        try:
            return load_sample(self.dataset, int(index), sample_rng(self.seed, epoch, index))
        except SkippedSample:
            return None

    def _collate(self, samples, indices=None):
        kept = [(s, i) for s, i in zip(samples, indices if indices is not None else range(len(samples)))
                if s is not None]
        if not kept:
            return None
        try:
            return self.collate_fn([s for s, _ in kept])
        except ValueError as error:
            shapes = [np.shape(s[0]) for s, _ in kept]
            common = collections.Counter(shapes).most_common(1)[0][0]
            odd = [_describe(self.dataset, int(i)) + f" {shape}" for (_, i), shape in zip(kept, shapes)
                   if shape != common]
            if not odd or indices is None:
                raise
            raise ValueError(f"{error}; the odd one(s) out: {', '.join(odd[:5])} (most are {common})") from None

    def __iter__(self):
        epoch, start = self.epoch, self._start_batch
        self._start_batch, self._position = 0, start
        batches = self.batch_indices(epoch)
        if self.num_workers == 0:
            for b in range(start, len(batches)):
                batch = self._load_batch(batches[b], epoch)
                self._position = b + 1
                if batch is not None:
                    yield batch
        else:
            yield from self._iter_threaded(epoch, batches, start)
        self.epoch, self._position = epoch + 1, 0

    def _load_batch(self, indices, epoch):
        batch = self._collate([self._load(i, epoch) for i in indices], indices)
        if batch is None and self.num_replicas > 1:  # every rank must take every step
            return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
        return batch

    def _iter_threaded(self, epoch, batches, start):
        # One task per batch: a worker decodes, transforms and stacks a whole batch, so even the
        # stacking (and the first touch of the new batch's memory) stays off the main thread.
        # Batches are taken in order; the threads work on the next ones meanwhile.
        in_flight = max(self.num_workers, self.prefetch_batches + 1)
        pool = concurrent.futures.ThreadPoolExecutor(self.num_workers, thread_name_prefix="minidl-data")
        pending = collections.deque()
        submitted = start
        try:
            for b in range(start, len(batches)):
                while submitted < len(batches) and submitted < b + in_flight:
                    pending.append(pool.submit(self._load_batch, batches[submitted], epoch))
                    submitted += 1
                batch = pending.popleft().result()
                self._position = b + 1
                if batch is not None:
                    yield batch
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def __repr__(self):
        sharded = f", num_replicas={self.num_replicas}, rank={self.rank}" if self.num_replicas > 1 else ""
        return (f"DataLoader({type(self.dataset).__name__} of {len(self.dataset)}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed}, num_workers={self.num_workers}, "
                f"drop_last={self.drop_last}, epoch={self.epoch}{sharded})")
