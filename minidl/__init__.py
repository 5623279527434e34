"""minidl: a small deep-learning framework written to be read -- and to run AlexNet."""
from . import cpu

cpu.configure()  # before NumPy's and Numba's thread pools start; see cpu.configure

from . import backend, cuda, init, ops, layers, optim, models  # noqa: E402
from .gradcheck import GradcheckError, gradcheck  # noqa: E402
from .random import manual_seed  # noqa: E402
from .tensor import Function, Tensor, is_grad_enabled, no_grad, profile, tensor  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Tensor", "tensor", "Function", "no_grad", "is_grad_enabled", "profile", "gradcheck",
           "GradcheckError", "manual_seed", "init", "ops", "layers", "optim", "models", "cuda",
           "backend"]
