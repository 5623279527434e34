"""Compile minidl's CPU kernels ahead of their first use, several at a time.

    python -m minidl.warmup                 # every kernel, float32, one process per core
    python -m minidl.warmup --dtype float32 float64 --jobs 2

Numba compiles each kernel the first time it runs and caches the machine code on disk, so
only a fresh install (or a new minidl version) pays: AlexNet's first training step compiles
about twenty kernels, one after the other, before it computes anything. This module runs
small exercises of every op family -- the same public calls the models make, so the same
compiled signatures -- in parallel worker processes, each filling the shared Numba cache
with its share; a later process loads the cached code instead of compiling. Optional: without
it, the kernels compile on first use as before.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

# name -> what it compiles (for the listing); the exercises themselves are in _exercise.
EXERCISES = {
    "conv_im2col": "im2col, col2im and the layout changes (conv1, any geometry)",
    "winograd_3x3": "Winograd F(4x4, 3x3): the four tile transforms",
    "winograd_5x5": "Winograd F(2x2, 5x5)",
    "max_pool": "max pooling forward and backward",
    "lrn": "local response normalisation forward and backward",
    "dropout": "dropout",
    "sgd": "the SGD update",
    "adam": "the Adam update",
    "batch_norm": "batch normalisation",
    "avg_pool": "average pooling",
}


def _exercise(name, dtype):
    """Run the op family ``name`` forward and backward on small inputs of ``dtype``."""
    import minidl
    from minidl import layers, ops, optim

    rng = np.random.default_rng(0)

    def tensor(*shape, grad=True):
        return minidl.Tensor(rng.standard_normal(shape).astype(dtype), requires_grad=grad)

    def backward(y):
        y.backward(np.ones(y.shape, dtype))

    if name == "conv_im2col":
        for relu in (False, True):
            backward(ops.conv2d(tensor(2, 3, 23, 23), tensor(4, 3, 11, 11), tensor(4), stride=4,
                                relu=relu))
    elif name in ("winograd_3x3", "winograd_5x5"):
        k = 3 if name == "winograd_3x3" else 5
        for relu in (False, True):
            for bias in (tensor(4), None):
                backward(ops.conv2d(tensor(2, 4, 9, 9), tensor(4, 4, k, k), bias, padding=k // 2,
                                    relu=relu))
    elif name == "max_pool":
        backward(ops.max_pool2d(tensor(2, 3, 9, 9), 3, stride=2))
    elif name == "lrn":
        for beta in (0.75, 0.5):
            backward(ops.local_response_norm(tensor(2, 6, 5, 5), 5, beta=beta))
    elif name == "dropout":
        backward(ops.dropout(tensor(4, 8), 0.5))
    elif name in ("sgd", "adam"):
        layer = layers.Linear(8, 4, dtype=dtype)
        optimizer = (optim.SGD(layer.parameters(), lr=0.1) if name == "sgd"
                     else optim.Adam(layer.parameters(), lr=0.1))
        backward(layer(tensor(2, 8, grad=False)))
        optimizer.step()
    elif name == "batch_norm":
        norm = layers.BatchNorm2d(3).to(np.dtype(dtype))
        backward(norm(tensor(2, 3, 4, 4)))
        norm.eval()
        norm(tensor(2, 3, 4, 4, grad=False))
    elif name == "avg_pool":
        backward(ops.avg_pool2d(tensor(2, 3, 6, 6), 2))
        backward(ops.adaptive_avg_pool2d(tensor(2, 3, 7, 7), (3, 3)))
    else:
        raise ValueError(f"warmup: no exercise named {name!r}; known: {', '.join(EXERCISES)}")


def warm_up(names=None, dtypes=("float32",), jobs=None, quiet=False):
    """Compile the kernels of ``names`` (default: all) for ``dtypes`` in ``jobs`` worker
    processes (default: one per core); returns the seconds it took."""
    names = list(names or EXERCISES)
    unknown = [n for n in names if n not in EXERCISES]
    if unknown:
        raise ValueError(f"warmup: no exercise named {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(EXERCISES)}")
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(names)))
    shares = [names[i::jobs] for i in range(jobs)]  # round robin: the slow ones spread out
    start = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-m", "minidl.warmup", "--worker", *share,
                                 "--dtype", *dtypes], env=dict(os.environ, MINIDL_NUM_THREADS="1"))
               for share in shares]
    failed = [w.args for w in workers if w.wait() != 0]
    if failed:
        raise RuntimeError(f"warmup: a worker failed ({failed[0]}); its error is above")
    seconds = time.perf_counter() - start
    if not quiet:
        print(f"minidl.warmup: compiled {len(names)} op families for {', '.join(dtypes)} in "
              f"{seconds:.1f} s with {jobs} process(es); cache: "
              f"{os.environ.get('NUMBA_CACHE_DIR') or 'beside the sources'}")
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minidl.warmup",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"op families to compile (default all: {', '.join(EXERCISES)})")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64"])
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes (default: one per core)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import minidl  # noqa: F401  -- configure() first, as in any minidl process

        for name in args.names:
            for dtype in args.dtype:
                _exercise(name, np.dtype(dtype))
        return
    warm_up(args.names or None, args.dtype, args.jobs)


if __name__ == "__main__":
    main()
