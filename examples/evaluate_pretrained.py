"""Evaluate torchvision's pretrained AlexNet weights with minidl on an ImageNet-layout folder.

    python examples/evaluate_pretrained.py --weights alexnet-owt-7be5be79.pth --data /data/imagenet/val
    python examples/evaluate_pretrained.py --weights alexnet.npz --data val --device cuda --limit 5000

``--weights``: torchvision's ``alexnet`` state_dict -- the ``.pth`` file it downloads (reading it
needs torch installed) or an ``.npz`` of the same arrays (``numpy.savez``; no torch needed).
``--data``: a folder of class folders, ``<wnid>/*.JPEG``. The network's output k is the k-th
class in sorted wnid order (n01440764 first), which is the order of the 1000 ILSVRC folders,
so ``--data`` must hold all 1000 class folders (empty ones are fine) for labels to line up.

The preprocessing is torchvision's evaluation transform: shorter side resized to 256 (Pillow's
bilinear filter), the central 224x224 crop, values in [0, 1] normalised with ImageNet's
per-channel mean and std. The network is ``alexnet(variant="torchvision")`` (64-192-384-256-256
channels, no LRN, 61,100,840 parameters), not the 2012 paper's. Given the same weights and
the same preprocessed images, its logits are PyTorch's to float32 rounding, so the predictions
are the same (tests/test_examples.py checks it against PyTorch with random weights).
"""
import argparse
import time

import numpy as np

import minidl
from minidl.data import IMAGENET_MEAN, IMAGENET_STD, DataLoader, ImageFolder, Subset
from minidl.data.transforms import CenterCrop, Compose, Normalize, ResizeShorter, ToArray
from minidl.metrics import top1, top5
from minidl.models import alexnet


def torchvision_eval_transform():
    return Compose([ResizeShorter(256), CenterCrop(224), ToArray(), Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def load_weights(model, path):
    """A torchvision state_dict from a .pth (through torch) or an .npz file of its arrays."""
    if str(path).endswith(".npz"):
        with np.load(path, allow_pickle=False) as arrays:
            model.load_state_dict(dict(arrays))
    else:
        model.load_state_dict(str(path))  # minidl.layers.Module reads .pth files through torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="torchvision AlexNet state_dict (.pth or .npz)")
    parser.add_argument("--data", required=True, help="ImageNet-layout folder: <wnid>/*.JPEG")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads decoding images (default: one per core, 2 to 8)")
    parser.add_argument("--show", type=int, default=5, help="print the predictions for this many images")
    args = parser.parse_args(argv)

    dataset = ImageFolder(args.data, transform=torchvision_eval_transform())
    if args.limit is not None:
        dataset = Subset(dataset, list(range(min(args.limit, len(dataset)))))
    classes = dataset.dataset.classes if isinstance(dataset, Subset) else dataset.classes
    if len(classes) != 1000:
        print(f"note: {args.data} has {len(classes)} class folders, not ImageNet's 1000: label k "
              "is the k-th folder in sorted order, and scores count as right only if that is "
              "the network's class k")
    model = alexnet(variant="torchvision", num_classes=1000).eval()
    load_weights(model, args.weights)
    model.to(args.device)

    loader = DataLoader(dataset, args.batch_size, num_workers=args.workers)
    start, wrong1, wrong5, seen, shown = time.perf_counter(), 0.0, 0.0, 0, []
    with minidl.no_grad():
        for images, labels in loader:
            logits = model(minidl.Tensor(images).to(args.device)).numpy()
            wrong1 += top1(logits, labels) * len(labels)
            wrong5 += top5(logits, labels) * len(labels)
            seen += len(labels)
            shown += [(int(label), int(guess)) for label, guess in zip(labels, logits.argmax(axis=1))]
    seconds = time.perf_counter() - start
    for label, guess in shown[:args.show]:
        name = classes[guess] if guess < len(classes) else f"class {guess}"
        print(f"  {classes[label]}: predicted {name}{'' if guess == label else '  (wrong)'}")
    print(f"{seen:,} images: top-1 error {100 * wrong1 / max(seen, 1):.2f}%, top-5 error "
          f"{100 * wrong5 / max(seen, 1):.2f}% ({seen / seconds:.1f} img/s on {args.device})")
    return {"images": seen, "top1": wrong1 / max(seen, 1), "top5": wrong5 / max(seen, 1),
            "predictions": [guess for _, guess in shown]}


if __name__ == "__main__":
    main()
