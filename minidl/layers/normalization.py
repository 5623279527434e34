import numpy as np

from .. import ops
from ..ops import checks
from .module import Module, Parameter


class LocalResponseNorm(Module):
    """Local response normalisation across channels, in the AlexNet paper's form.

    ``b_i = a_i / (k + alpha * sum_{j in window(i)} a_j^2) ** beta`` with a window of ``size``
    channels centred on i. ``convention="caffe"`` uses alpha / size instead of alpha, as Caffe
    and ``torch.nn.LocalResponseNorm`` do (see ``minidl.ops.local_response_norm``).
    """

    def __init__(self, size, alpha=1e-4, beta=0.75, k=2.0, convention="paper"):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.convention = convention

    def forward(self, x):
        return ops.local_response_norm(x, self.size, self.alpha, self.beta, self.k,
                                       convention=self.convention)

    def extra_repr(self):
        text = f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
        return text + (f", convention='{self.convention}'" if self.convention != "paper" else "")


class _BatchNorm(Module):
    """Batch normalisation with PyTorch's arguments and state (see ``ops.batch_norm``).

    Training uses the batch's statistics and updates the running ones (``momentum``; None for
    a cumulative average over ``num_batches_tracked`` batches); eval mode uses the running
    ones. ``affine`` adds the learnable ``weight`` (gamma, 1) and ``bias`` (beta, 0);
    ``track_running_stats=False`` keeps no running statistics and always uses the batch's.
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` are buffers: saved in
    ``state_dict()`` and checkpoints, never trained.
    """

    dims = ()  # the numbers of dimensions the input may have

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        self.num_features = checks.integer(name, "num_features", num_features, 1)
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum!r}")
        self.eps, self.momentum = eps, momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.array(0, np.int64))
        else:
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(buffer, None)

    def reset_running_stats(self):
        if self.track_running_stats:
            xp_zeros = self.running_mean.data * 0
            self.running_mean.data = xp_zeros
            self.running_var.data = xp_zeros + 1
            self.num_batches_tracked.data = np.array(0, np.int64)

    def forward(self, x):
        name = type(self).__name__
        if x.ndim not in self.dims:
            shapes = " or ".join(f"{d}-D" for d in self.dims)
            raise ValueError(f"{name}: input must be {shapes} (N, C, ...), got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name}: input has {x.shape[1]} channels (shape {x.shape}), the "
                             f"layer {self.num_features}")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data = self.num_batches_tracked.data + 1
            if self.momentum is None:  # a cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked.data)
        use_batch = self.training or self.running_mean is None
        keep = not self.training or self.track_running_stats
        return ops.batch_norm(x, self.running_mean if keep else None,
                              self.running_var if keep else None, self.weight, self.bias,
                              training=use_batch, momentum=momentum, eps=self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs, as ``torch.nn.BatchNorm1d``."""

    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs, per channel, as ``torch.nn.BatchNorm2d``."""

    dims = (4,)
