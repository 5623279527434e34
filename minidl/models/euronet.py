"""EuroNet: the small CNN of the EuroSAT study (13-band 64x64 Sentinel-2 patches, 10 classes).

Three blocks of two 3x3 convolutions (28, 56, 112 channels, padding 1) each followed by a 2x2
max-pool, then dense 784 and dense 10: 5,850,750 parameters (docs/MODELS.md has the table; the
slides print 113,080 for the sixth conv where 112*112*9 + 112 = 113,008 is what gives their own
total).

Choices the slides leave open, made here:

* dropout p = 0.5 after the 784-unit dense layer's ReLU, before the last dense layer (the
  slides say only "Dropout used"; 0.5 is AlexNet's value and the usual one);
* the output is the 10 logits: the "10-way sigmoid" is applied by
  ``ops.binary_cross_entropy_with_logits`` during training and by ``predict_proba``;
* initialisation as in Keras, which produced the slides' table ("Conv2D", "Dense"):
  Glorot-uniform weights, limit sqrt(6 / (fan_in + fan_out)), and zero biases.

``euronet(batch_norm=True)`` puts a ``BatchNorm2d`` (``bn1`` ... ``bn6``) between each
convolution and its ReLU, and drops the convolutions' biases (the normalisation's beta takes
their place): 5,850,750 - 392 + 2 * 392 = 5,851,142 parameters, plus the running statistics.
"""
from collections import OrderedDict

import numpy as np

from .. import init
from ..layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU
from .classifier import ImageClassifier


class EuroNet(ImageClassifier):
    """EuroNet as a named ``Sequential``; build it with ``euronet()``."""

    feature_map_layers = ("relu1", "relu2", "relu3")  # the first three convolutions, after ReLU
    grad_cam_layer = "relu6"                            # the last conv maps, 112 x 16 x 16
    output_activation = "sigmoid"

    def __init__(self, in_channels=13, num_classes=10, dropout=0.5, image_size=64,
                 dtype=np.float32, generator=None, batch_norm=False):
        if image_size % 8:
            raise ValueError(f"euronet: image_size must be a multiple of 8 (three 2x2 pools), "
                             f"got {image_size}")
        side = image_size // 8
        layers = OrderedDict()
        channels = [in_channels, 28, 28, 56, 56, 112, 112]
        for i in range(6):
            layers[f"conv{i + 1}"] = Conv2d(channels[i], channels[i + 1], 3, padding=1,
                                            bias=not batch_norm, dtype=dtype)
            if batch_norm:
                layers[f"bn{i + 1}"] = BatchNorm2d(channels[i + 1], dtype=dtype)
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
        self.batch_norm = bool(batch_norm)
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        """Keras' defaults: Glorot-uniform weights, zero biases."""
        for module in self._modules.values():
            if isinstance(module, (Conv2d, Linear)):
                init.glorot_uniform_(module.weight, generator)
                if module.bias is not None:
                    init.zeros_(module.bias)
        return self

    def extra_repr(self):
        return (f"in_channels={self.input_shape[0]}, num_classes={self.num_classes}"
                + (", batch_norm=True" if self.batch_norm else ""))


def euronet(in_channels=13, num_classes=10, dropout=0.5, image_size=64, dtype=np.float32,
            generator=None, batch_norm=False):
    """EuroNet for ``in_channels`` x ``image_size`` x ``image_size`` inputs; ``batch_norm=True``
    adds BatchNorm2d after each convolution (see module doc)."""
    return EuroNet(in_channels=in_channels, num_classes=num_classes, dropout=dropout,
                   image_size=image_size, dtype=dtype, generator=generator, batch_norm=batch_norm)
