"""Which vector registers minidl's CPU kernels compiled to on this machine.

    python benchmarks/vector_check.py

Numba compiles every kernel for the host CPU (LLVM's name for it is printed first: znver4,
skylake-avx512, haswell...). This script compiles the kernels of one AlexNet and one EuroNet
training step, an SGD update and an im2col convolution into an empty, temporary Numba cache (cached code cannot be
inspected), then counts, per float32 kernel, the vector instructions of its machine code by
register width: zmm (AVX-512, 16 floats), ymm (AVX/AVX2, 8), xmm (SSE or scalar float code).
On an AVX-512 machine the hot loops should show zmm; on an AVX2 one, ymm. A kernel with only
xmm did not vectorise.
"""
import os
import re
import sys
import tempfile

os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="minidl-vector-check-")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minidl import Tensor, ops, optim  # noqa: E402  (minidl first: its settings precede NumPy's)
from minidl.models import alexnet, euronet  # noqa: E402

import numpy as np  # noqa: E402

WIDTHS = ("zmm", "ymm", "xmm")


def compile_one_step_of_each():
    rng = np.random.default_rng(0)
    for model, shape, classes in ((alexnet(), (2, 3, 227, 227), 1000),
                                  (euronet(), (2, 13, 64, 64), 10)):
        x = Tensor(rng.standard_normal(shape).astype(np.float32))
        loss = ops.cross_entropy(model(x), rng.integers(0, classes, 2))
        loss.backward()
        optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4).step()
    x = Tensor(rng.standard_normal((2, 8, 16, 16)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), requires_grad=True)
    ops.conv2d(x, w, stride=2, padding=1, algorithm="im2col").sum().backward()  # im2col, col2im


def compiled_kernels():
    """(module, name, dispatcher) for every cpu.kernel of minidl that has compiled."""
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("minidl"):
            continue
        for name, value in vars(module).items():
            dispatcher = getattr(value, "compiled", None)
            if dispatcher is not None and getattr(dispatcher, "signatures", None):
                yield module.__name__, name, dispatcher


def main():
    import llvmlite.binding as llvm
    compile_one_step_of_each()
    print(f"LLVM's host CPU: {llvm.get_host_cpu_name()}")
    print(f"| kernel | {' | '.join(WIDTHS)} |")
    print("|---|" + "---:|" * len(WIDTHS))
    for module, name, dispatcher in sorted(compiled_kernels(), key=lambda k: k[:2]):
        for signature, asm in dispatcher.inspect_asm().items():
            if "float32" not in str(signature):
                continue
            counts = [len(re.findall(rf"^\s*v\w+\s[^\n]*%{width}", asm, re.M)) for width in WIDTHS]
            print(f"| {module.removeprefix('minidl.')}.{name} | "
                  + " | ".join(str(c) for c in counts) + " |")


if __name__ == "__main__":
    main()
