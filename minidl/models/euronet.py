"""EuroNet: the small CNN of the EuroSAT study (13-band 64x64 Sentinel-2 patches, 10 classes).

Three blocks of two 3x3 convolutions (28, 56, 112 channels, padding 1) each followed by a 2x2
max-pool, then dense 784 and dense 10: 5,850,750 parameters (SPEC's table; the slides print
113,080 for the sixth conv where 112*112*9 + 112 = 113,008 is what gives their own total).

Choices the slides leave open, made here:

* dropout p = 0.5 after the 784-unit dense layer's ReLU, before the last dense layer (the
  slides say only "Dropout used"; 0.5 is AlexNet's value and the usual one);
* the output is the 10 logits: the "10-way sigmoid" is applied by
  ``ops.binary_cross_entropy_with_logits`` during training and by ``predict_proba``;
* initialisation as in Keras, which produced the slides' table ("Conv2D", "Dense"):
  Glorot-uniform weights, limit sqrt(6 / (fan_in + fan_out)), and zero biases.
"""
from collections import OrderedDict

import math

import numpy as np

from .. import backend, ops, random
from ..autograd import no_grad
from ..layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential
from .alexnet import _check_input
from .summary import forward_with


class EuroNet(Sequential):
    """EuroNet as a named ``Sequential``; build it with ``euronet()``."""

    feature_map_layers = ("relu1", "relu2", "relu3")  # the first three convolutions, after ReLU
    grad_cam_layer = "relu6"                            # the last conv maps, 112 x 16 x 16

    def __init__(self, in_channels=13, num_classes=10, dropout=0.5, image_size=64,
                 dtype=np.float32, generator=None):
        if image_size % 8:
            raise ValueError(f"euronet: image_size must be a multiple of 8 (three 2x2 pools), "
                             f"got {image_size}")
        side = image_size // 8
        layers = OrderedDict()
        channels = [in_channels, 28, 28, 56, 56, 112, 112]
        for i in range(6):
            layers[f"conv{i + 1}"] = Conv2d(channels[i], channels[i + 1], 3, padding=1, dtype=dtype)
            layers[f"relu{i + 1}"] = ReLU()
            if i % 2 == 1:
                layers[f"pool{i // 2 + 1}"] = MaxPool2d(2)
        layers["flatten"] = Flatten()                                  # 112 * 8 * 8 = 7168
        layers["fc1"] = Linear(112 * side * side, 784, dtype=dtype)
        layers["relu_fc1"] = ReLU()
        layers["dropout"] = Dropout(dropout)
        layers["fc2"] = Linear(784, num_classes, dtype=dtype)
        super().__init__(layers)
        self.input_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        """Keras' defaults: Glorot-uniform weights, zero biases."""
        rng = generator if generator is not None else random.default_generator()
        for module in self._modules.values():
            if isinstance(module, (Conv2d, Linear)):
                w = module.weight
                receptive = int(np.prod(w.shape[2:])) if w.ndim > 2 else 1
                fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                values = rng.uniform(-limit, limit, w.shape).astype(w.dtype)
                device = backend.device_of(w.data)
                w.data = backend.to_device(values, device)
                module.bias.data = backend.to_device(np.zeros(module.bias.shape, w.dtype), device)
        return self

    def forward(self, x):
        _check_input("euronet", x, self.input_shape)
        return super().forward(x)

    def forward_with(self, x, taps):
        """``{tap: activation, ..., "output": logits}`` for the named layers."""
        return forward_with(self, x, taps)

    def predict_proba(self, x):
        """sigmoid(logits): per-class probabilities, computed without a graph (call eval() first)."""
        with no_grad():
            return ops.sigmoid(self(x))

    def predict(self, x):
        """The most likely class of each input, as a NumPy array of ints (call eval() first)."""
        with no_grad():
            return self(x).numpy().argmax(axis=1)

    def extra_repr(self):
        return f"in_channels={self.input_shape[0]}, num_classes={self.num_classes}"


def euronet(in_channels=13, num_classes=10, dropout=0.5, image_size=64, dtype=np.float32,
            generator=None):
    """EuroNet for ``in_channels`` x ``image_size`` x ``image_size`` inputs (see module doc)."""
    return EuroNet(in_channels=in_channels, num_classes=num_classes, dropout=dropout,
                   image_size=image_size, dtype=dtype, generator=generator)
