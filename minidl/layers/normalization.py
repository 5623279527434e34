from .. import ops
from .module import Module


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
