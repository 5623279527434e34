"""Train a small CNN on scikit-learn's bundled handwritten digits and report held-out accuracy.

    python examples/digits.py            # about half a minute on 2 CPU cores
    python examples/digits.py --epochs 5 --device cuda

The data (1,797 8x8 greyscale digits, scanned from 43 people) ships inside scikit-learn, so
this runs with no download. It exercises every piece of the core: convolutions, pooling,
ReLU, dropout, a linear layer, the cross-entropy loss, autograd and SGD with momentum.
"""
import argparse
import time

import numpy as np
from tqdm import tqdm

import minidl
from minidl import layers, ops
from minidl.optim import SGD


def load_digits_split(seed=0, test_fraction=0.25):
    """Images (N, 1, 8, 8) scaled to [0, 1] and labels, split into train and held-out parts."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return (images[train], labels[train]), (images[test], labels[test])


def build_model():
    return layers.Sequential(
        layers.Conv2d(1, 32, kernel_size=3, padding=1), layers.ReLU(),
        layers.Conv2d(32, 32, kernel_size=3, padding=1), layers.ReLU(),
        layers.MaxPool2d(kernel_size=2),                                  # 32 x 4 x 4
        layers.Conv2d(32, 64, kernel_size=3, padding=1), layers.ReLU(),
        layers.MaxPool2d(kernel_size=2),                                  # 64 x 2 x 2
        layers.Flatten(), layers.Dropout(0.25), layers.Linear(64 * 2 * 2, 10))


def accuracy(model, images, labels, device, batch_size=500):
    model.eval()
    correct = 0
    with minidl.no_grad():
        for start in range(0, len(labels), batch_size):
            x = minidl.Tensor(images[start:start + batch_size]).to(device)
            predicted = model(x).numpy().argmax(axis=1)
            correct += int((predicted == labels[start:start + batch_size]).sum())
    model.train()
    return correct / len(labels)


def train(epochs=15, batch_size=32, lr=0.05, device="cpu", seed=0, progress=True):
    """Train the digits CNN; returns (held-out accuracy, final training loss)."""
    minidl.manual_seed(seed)
    (train_x, train_y), (test_x, test_y) = load_digits_split(seed)
    model = build_model().to(device)
    optimizer = SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(seed)
    steps_per_epoch = len(train_y) // batch_size
    bar = tqdm(total=epochs * steps_per_epoch, disable=not progress, unit="step")
    loss_value = float("nan")
    for epoch in range(epochs):
        order = rng.permutation(len(train_y))
        for step in range(steps_per_epoch):
            batch = order[step * batch_size:(step + 1) * batch_size]
            x = minidl.Tensor(train_x[batch]).to(device)
            loss = ops.softmax_cross_entropy(model(x), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_value = loss.item()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.3f}")
            bar.update()
    bar.close()
    return accuracy(model, test_x, test_y, device), loss_value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    held_out, loss = train(args.epochs, args.batch_size, args.lr, args.device, args.seed)
    print(f"final training loss {loss:.4f}; held-out accuracy {100 * held_out:.2f} % "
          f"on {int(1797 * 0.25)} digits; {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
