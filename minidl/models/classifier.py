"""``ImageClassifier``: what AlexNet and EuroNet share beyond being a ``Sequential``.

Both take batches of images of one shape (``input_shape``, (C, H, W)) and return one score
(logit) per class. Checking the input against that shape before the first layer turns a wrong
image size into one clear message instead of a shape error deep inside a convolution.
"""
from .. import ops
from ..layers import Sequential
from ..tensor import Tensor, no_grad
from .summary import forward_with


class ImageClassifier(Sequential):
    """A ``Sequential`` of named layers from (N, C, H, W) images to (N, classes) logits.

    Subclasses set ``input_shape`` (C, H, W), ``feature_map_layers`` (the layers whose maps
    ``viz.feature_maps`` shows), ``grad_cam_layer`` (the last convolution's maps) and
    ``output_activation``.
    """

    input_shape = None
    feature_map_layers = ()
    grad_cam_layer = None
    output_activation = "softmax"  # or "sigmoid": what predict_proba applies to the logits

    def forward(self, x):
        self.check_input(x)
        return super().forward(x)

    def check_input(self, x):
        """Fail before the first convolution, naming the expected shape, if ``x`` does not fit."""
        name = type(self).__name__.lower()
        dims = ", ".join(map(str, self.input_shape))
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a minidl Tensor of shape (N, {dims}), "
                            f"got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            sizes = "x".join(map(str, self.input_shape))
            raise ValueError(f"{name}: expected input of shape (N, {dims}) -- a batch of {sizes} "
                             f"images -- got shape {x.shape}")

    def forward_with(self, x, taps):
        """``{tap: activation, ..., "output": logits}`` for the named layers (see
        ``summary.forward_with``)."""
        return forward_with(self, x, taps)

    def predict(self, x):
        """The highest-scoring class of each input, as a NumPy array of ints (call eval() first)."""
        with no_grad():
            return self(x).numpy().argmax(axis=1)

    def predict_proba(self, x):
        """Per-class probabilities without a graph (call eval() first): the softmax of the
        logits, or their sigmoid for a model with independent yes/no outputs."""
        with no_grad():
            logits = self(x)
            if self.output_activation == "sigmoid":
                return ops.sigmoid(logits)
            return ops.softmax(logits, axis=1)
