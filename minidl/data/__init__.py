"""minidl.data: datasets, transforms and a threaded, seeded DataLoader.

Samples are ``(image, label)`` with the image a float32 NumPy array in CHW layout; the
DataLoader yields ``(images, labels)`` batches: float32 (N, C, H, W) and int64 (N,). The
training loop wraps them in Tensors and moves them to its device.

* ``ImageFolder`` (ImageNet layout), ``EuroSAT`` (multispectral GeoTIFF or RGB release),
  ``ArrayDataset`` (in memory), ``Subset``; ``split_stratified`` and ``eurosat_splits``. Bad
  files are skipped, named and counted (``dataset.summary()``); labels are checked against
  the class count.
* ``transforms``: the AlexNet paper's resize/crop/flip, fancy-PCA colour noise, 10-crop test,
  normalisation; ``channel_mean_std`` and ``pca_from_images`` for a dataset's own statistics.
* ``DataLoader``: seeded shuffling per epoch, per-sample randomness from (seed, epoch, index),
  background threads, exact resume with ``state_dict``.
* ``make_demo_imagenet`` / ``make_demo_eurosat``: generated stand-ins, cached on disk.
"""
from . import transforms
from .demo import DEMO_IMAGENET_CLASSES, make_demo_eurosat, make_demo_imagenet
from .eurosat import (EUROSAT_CLASSES, FILE_BAND_ORDER, NATURAL_BAND_ORDER, EuroSAT, eurosat_splits,
                      split_stratified)
from .folder import DECODE_ERRORS, IMAGE_EXTENSIONS, FolderDataset, ImageFolder, SkippedFileWarning
from .loader import (ArrayDataset, DataLoader, SkippedSample, Subset, class_indices, collate, epoch_order,
                     load_sample, sample_rng)
from .transforms import (IMAGENET_EIGVAL, IMAGENET_EIGVEC, IMAGENET_MEAN, IMAGENET_STD, BadImage, CenterCrop,
                         Compose, ImageTooLarge, Normalize, PCALighting, RandomCrop, RandomHorizontalFlip,
                         RandomVerticalFlip, ResizeShorter, TenCrop, ToArray, alexnet_eval_transform,
                         alexnet_train_transform, channel_mean_std, mask_nonfinite, pca_from_images, ten_crop,
                         to_array)

__all__ = [
    "transforms", "DEMO_IMAGENET_CLASSES", "make_demo_eurosat", "make_demo_imagenet",
    "EUROSAT_CLASSES", "FILE_BAND_ORDER", "NATURAL_BAND_ORDER", "EuroSAT", "eurosat_splits", "split_stratified",
    "DECODE_ERRORS", "IMAGE_EXTENSIONS", "FolderDataset", "ImageFolder", "SkippedFileWarning",
    "ArrayDataset", "DataLoader", "SkippedSample", "Subset", "class_indices", "collate", "epoch_order",
    "load_sample", "sample_rng",
    "IMAGENET_EIGVAL", "IMAGENET_EIGVEC", "IMAGENET_MEAN", "IMAGENET_STD", "BadImage", "CenterCrop", "Compose",
    "ImageTooLarge", "Normalize", "PCALighting", "RandomCrop", "RandomHorizontalFlip", "RandomVerticalFlip",
    "ResizeShorter", "TenCrop", "ToArray", "alexnet_eval_transform", "alexnet_train_transform",
    "channel_mean_std", "mask_nonfinite", "pca_from_images", "ten_crop", "to_array",
]
