"""Operations: each file holds one family, laid out the same way.

1. The module docstring: what the op computes (the formula), its semantics and edge cases,
   and how the kernels are laid out (which loop iteration or thread owns which output).
2. The simple version (``max_pool2d_simple``, ``conv2d_simple``, ...): the definition in plain
   Python loops over NumPy arrays. Read it first; the tests check the kernels against it.
3. The CPU kernels: Numba loops (``cpu.kernel``: the work of items first .. stop-1, launched
   as ``kernel(n_items, ...)`` like a CUDA kernel), or NumPy where NumPy is already a
   compiled loop.
4. The drivers, one per device with identical signatures (``_forward_cpu`` / ``_forward_cuda``),
   or for the convolutions two sets of steps (``CPU_STEPS`` / ``CUDA_STEPS``).
5. The ``...Function`` (autograd): checks its inputs (``checks``), picks the driver with
   ``backend.pick(x, cpu=..., cuda=...)``, saves what backward needs.
6. The public function, which takes Tensors or arrays and returns a Tensor.

The CUDA kernels of ``pool.py`` are in ``pool.cu`` beside it, and so on; every ``.cu`` file
starts from ``common.cuh`` (one grid-stride loop macro, one kernel signature convention; see
``minidl/cuda.py``). ``arithmetic.py`` (the Tensor algebra) and ``linear.py`` (products) are
written once against ``xp`` and need no kernels; ``conv.py`` chooses between ``im2col.py`` and
``winograd.py`` (after ``space_to_depth.py`` for a strided kernel), which share
``conv_geometry.py`` and ``workspace.py``.
"""
from .activation import relu, sigmoid
from .arithmetic import (add, div, exp, log, matmul, mean, mul, neg, power, reduce_sum, reshape,
                         sub, transpose)
from .avgpool import adaptive_avg_pool2d, avg_pool2d
from .batchnorm import batch_norm
from .conv import conv2d
from .dropout import dropout
from .linear import flatten, linear
from .loss import (binary_cross_entropy_with_logits, cross_entropy, log_softmax, softmax,
                   softmax_cross_entropy)
from .lrn import local_response_norm
from .pool import max_pool2d, max_unpool2d
from .space_to_depth import pixel_unshuffle, space_to_depth
