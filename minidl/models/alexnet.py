"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012) on one device.

The paper split the network over two GPUs; on one device the split becomes ``groups=2`` in
conv2, conv4 and conv5 (each half of the output channels sees only its half of the input
channels), while conv3 and the fully connected layers see everything. The input is 3x227x227:
an 11x11 stride-4 convolution gives the paper's 55x55 maps from 227, not from 224.

Three variants:

``"paper"``
    as the paper describes it: LRN with k=2, n=5, alpha=1e-4 multiplying the plain sum of
    squares, beta=0.75; weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7 and 0
    in the others. 60,965,224 parameters.
``"caffe"``
    Caffe's ``models/bvlc_alexnet/train_val.prototxt`` as it was trained: LRN with Caffe's
    convention (alpha divided by the window size n) and k=1 (Caffe's default); fc6 and fc7
    weights ~ N(0, 0.005), other weights ~ N(0, 0.01); the biases that the paper sets to 1 are
    0.1 instead ("initialization to 1 gave flat loss", says the model's readme), the rest 0.
    Same layers, same parameter count.
``"torchvision"``
    the layout of ``torchvision.models.alexnet`` (Krizhevsky's "one weird trick" version, what
    torchvision's pretrained weights are for): 3x224x224 input, conv1 with padding 2,
    64-192-384-256-256 channels, no groups, no LRN, ``AdaptiveAvgPool2d((6, 6))`` after pool5,
    dropout before fc6 and fc7; PyTorch's default initialisation. 61,100,840 parameters.
    ``load_state_dict`` takes torchvision's names (``features.0.weight`` is ``conv1.weight``,
    ``classifier.1.weight`` is ``fc6.weight``, ...), as arrays, torch tensors or a ``.pth``
    file, so pretrained weights on disk run in minidl unchanged.

Layers are registered under the paper's names in the order they run (conv1, relu1, norm1,
pool1, conv2, ..., fc8), so ``state_dict()`` keys read ``conv1.weight``, ``fc6.bias``... and
any of them can be tapped by name (``model.forward_with(x, taps=["relu1", "relu5"])``).
The output is fc8's logits; softmax belongs to the loss (``ops.softmax_cross_entropy``).
"""
from collections import OrderedDict

import numpy as np

from .. import init
from ..layers import (AdaptiveAvgPool2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm,
                      MaxPool2d, ReLU, Sequential)
from .classifier import ImageClassifier

INPUT_SHAPE = (3, 227, 227)

# variant -> LRN settings, weight std per layer (default 0.01), and the "non-zero" bias value.
VARIANTS = {
    "paper": dict(lrn=dict(size=5, alpha=1e-4, beta=0.75, k=2.0, convention="paper"),
                  weight_std={}, bias=1.0),
    "caffe": dict(lrn=dict(size=5, alpha=1e-4, beta=0.75, k=1.0, convention="caffe"),
                  weight_std={"fc6": 0.005, "fc7": 0.005}, bias=0.1),
    "torchvision": dict(lrn=None, weight_std=None, bias=None),  # PyTorch's default init
}

# torchvision's names of the weighted layers (features.N, classifier.N) -> minidl's.
TORCHVISION_NAMES = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3",
                     "features.8": "conv4", "features.10": "conv5", "classifier.1": "fc6",
                     "classifier.4": "fc7", "classifier.6": "fc8"}

# The layers with weights, and those whose bias starts non-zero (1 in the paper, 0.1 in Caffe).
WEIGHTED_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
NONZERO_BIAS = ("conv2", "conv4", "conv5", "fc6", "fc7")

_FEATURES_END = "pool5"  # the last layer of model.features; model.classifier is the rest


class AlexNet(ImageClassifier):
    """AlexNet as a named ``Sequential``; build it with ``alexnet()``."""

    input_shape = INPUT_SHAPE
    feature_map_layers = ("relu1", "relu2", "relu3")  # conv1..conv3 after their ReLU
    grad_cam_layer = "relu5"                            # the last conv maps, 256 x 13 x 13

    def __init__(self, num_classes=1000, variant="paper", dropout=0.5, dtype=np.float32,
                 generator=None):
        if variant not in VARIANTS:
            raise ValueError(f"alexnet: unknown variant {variant!r}; valid variants are "
                             + ", ".join(repr(v) for v in VARIANTS))
        if variant == "torchvision":
            layers = _torchvision_layers(num_classes, dropout, dtype)
        else:
            layers = _paper_layers(VARIANTS[variant]["lrn"], num_classes, dropout, dtype)
        super().__init__(layers)
        if variant == "torchvision":
            self.input_shape = (3, 224, 224)
        self.variant = variant
        self.num_classes = num_classes
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        """Draw the variant's initial weights from ``generator`` (minidl's default one if None)."""
        settings = VARIANTS[self.variant]
        for name in WEIGHTED_LAYERS:
            layer = self[name]
            if self.variant == "torchvision":  # U(+-1/sqrt(fan_in)), weights and biases
                fan_in = int(np.prod(layer.weight.shape[1:]))
                init.fan_in_uniform_(layer.weight, fan_in, generator)
                init.fan_in_uniform_(layer.bias, fan_in, generator)
                continue
            init.normal_(layer.weight, std=settings["weight_std"].get(name, 0.01), generator=generator)
            init.constant_(layer.bias, settings["bias"] if name in NONZERO_BIAS else 0.0)
        return self

    def state_dict_aliases(self):
        """torchvision's parameter names -> this model's, for the torchvision variant."""
        if self.variant != "torchvision":
            return {}
        return {f"{theirs}.{kind}": f"{mine}.{kind}" for theirs, mine in TORCHVISION_NAMES.items()
                for kind in ("weight", "bias")}

    # -- views ------------------------------------------------------------------------------------
    def _slice(self, start, stop):
        names = list(self._modules)
        lo = names.index(start) if start else 0
        hi = names.index(stop) + 1 if stop else len(names)
        return Sequential(OrderedDict((n, self._modules[n]) for n in names[lo:hi]))

    @property
    def features(self):
        """conv1 .. pool5, as a ``Sequential`` sharing this model's layers (N,3,227,227 -> N,256,6,6)."""
        return self._slice(None, _FEATURES_END)

    @property
    def classifier(self):
        """flatten, fc6 .. fc8, as a ``Sequential`` sharing this model's layers (N,256,6,6 -> N,classes)."""
        names = list(self._modules)
        return self._slice(names[names.index(_FEATURES_END) + 1], None)

    def extra_repr(self):
        return f"variant={self.variant!r}, num_classes={self.num_classes}"


def _paper_layers(lrn_settings, num_classes, dropout, dtype):
    """The paper's (and Caffe's) AlexNet: groups 2 in conv2, conv4, conv5; LRN after relu1, relu2."""

    def lrn():
        return LocalResponseNorm(**lrn_settings)

    return OrderedDict([
        ("conv1", Conv2d(3, 96, 11, stride=4, dtype=dtype)),             # 96 x 55 x 55
        ("relu1", ReLU()), ("norm1", lrn()),
        ("pool1", MaxPool2d(3, stride=2)),                                # 96 x 27 x 27
        ("conv2", Conv2d(96, 256, 5, padding=2, groups=2, dtype=dtype)),  # 256 x 27 x 27
        ("relu2", ReLU()), ("norm2", lrn()),
        ("pool2", MaxPool2d(3, stride=2)),                                # 256 x 13 x 13
        ("conv3", Conv2d(256, 384, 3, padding=1, dtype=dtype)),           # 384 x 13 x 13
        ("relu3", ReLU()),
        ("conv4", Conv2d(384, 384, 3, padding=1, groups=2, dtype=dtype)),
        ("relu4", ReLU()),
        ("conv5", Conv2d(384, 256, 3, padding=1, groups=2, dtype=dtype)),  # 256 x 13 x 13
        ("relu5", ReLU()),
        ("pool5", MaxPool2d(3, stride=2)),                                # 256 x 6 x 6
        ("flatten", Flatten()),                                           # 9216
        ("fc6", Linear(256 * 6 * 6, 4096, dtype=dtype)),
        ("relu6", ReLU()), ("drop6", Dropout(dropout)),
        ("fc7", Linear(4096, 4096, dtype=dtype)),
        ("relu7", ReLU()), ("drop7", Dropout(dropout)),
        ("fc8", Linear(4096, num_classes, dtype=dtype)),
    ])


def _torchvision_layers(num_classes, dropout, dtype):
    """torchvision's AlexNet under the paper's layer names (TORCHVISION_NAMES maps them)."""
    return OrderedDict([
        ("conv1", Conv2d(3, 64, 11, stride=4, padding=2, dtype=dtype)),    # 64 x 55 x 55
        ("relu1", ReLU()), ("pool1", MaxPool2d(3, stride=2)),                # 64 x 27 x 27
        ("conv2", Conv2d(64, 192, 5, padding=2, dtype=dtype)),              # 192 x 27 x 27
        ("relu2", ReLU()), ("pool2", MaxPool2d(3, stride=2)),                # 192 x 13 x 13
        ("conv3", Conv2d(192, 384, 3, padding=1, dtype=dtype)), ("relu3", ReLU()),
        ("conv4", Conv2d(384, 256, 3, padding=1, dtype=dtype)), ("relu4", ReLU()),
        ("conv5", Conv2d(256, 256, 3, padding=1, dtype=dtype)), ("relu5", ReLU()),
        ("pool5", MaxPool2d(3, stride=2)),                                   # 256 x 6 x 6
        ("avgpool", AdaptiveAvgPool2d((6, 6))), ("flatten", Flatten()),     # 9216
        ("drop6", Dropout(dropout)), ("fc6", Linear(256 * 6 * 6, 4096, dtype=dtype)),
        ("relu6", ReLU()),
        ("drop7", Dropout(dropout)), ("fc7", Linear(4096, 4096, dtype=dtype)), ("relu7", ReLU()),
        ("fc8", Linear(4096, num_classes, dtype=dtype)),
    ])


def alexnet(num_classes=1000, variant="paper", dropout=0.5, dtype=np.float32, generator=None):
    """AlexNet with ``num_classes`` outputs; ``variant`` is ``"paper"``, ``"caffe"`` or
    ``"torchvision"`` (see module doc)."""
    return AlexNet(num_classes=num_classes, variant=variant, dropout=dropout, dtype=dtype,
                   generator=generator)
