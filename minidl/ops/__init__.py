"""Operations: each file holds one family -- its autograd Function, its CPU kernels (NumPy and
Numba) and, in the ``.cu`` file of the same name, its CUDA kernels."""
from .activation import relu, sigmoid
from .arithmetic import add, div, exp, log, matmul, mean, mul, neg, pow, reshape, sub, sum, transpose
from .conv import conv2d
from .dropout import dropout
from .linear import flatten, linear
from .loss import binary_cross_entropy_with_logits, log_softmax, softmax, softmax_cross_entropy
from .lrn import local_response_norm
from .pool import max_pool2d
