"""Time local_response_norm and max_pool2d on AlexNet's shapes against torch (2 threads).

    python benchmarks/pool_lrn_bench.py [--repeats 15] [--batch 32] [--no-torch]

Cases (batch 32 by default): LRN on conv1's 96x55x55 and conv2's 256x27x27 output with the
paper's constants (torch: local_response_norm(size=5, alpha=5e-4, beta=0.75, k=2), the same
function), and 3x3 stride-2 max pooling of 96x55x55. For each, the median wall time of forward
alone (no graph) and of forward+backward, minidl and torch on the same float32 inputs. The
two libraries are timed alternately, repeat by repeat, so a busy neighbour on the machine
slows both alike.
"""
import argparse
import time

import numpy as np

import minidl

CASES = [
    # name, per-image input shape, minidl op, torch op
    ("lrn 96x55x55", (96, 55, 55),
     lambda x: minidl.ops.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=2.0),
     lambda F, x: F.local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2.0)),
    ("lrn 256x27x27", (256, 27, 27),
     lambda x: minidl.ops.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=2.0),
     lambda F, x: F.local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2.0)),
    ("maxpool 3/2 96x55x55", (96, 55, 55),
     lambda x: minidl.ops.max_pool2d(x, 3, 2),
     lambda F, x: F.max_pool2d(x, 3, 2)),
]


def minidl_calls(op, x, grad):
    xt = minidl.Tensor(x, requires_grad=True)
    gt = minidl.Tensor(grad)

    def forward():
        with minidl.no_grad():
            op(xt)

    def step():
        op(xt).backward(gt)
        xt.grad = None

    return forward, step


def torch_calls(op, x, grad):
    import torch
    import torch.nn.functional as F
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(grad)

    def forward():
        with torch.no_grad():
            op(F, xt)

    def step():
        op(F, xt).backward(gt)
        xt.grad = None

    return forward, step


def alternate_medians(functions, repeats):
    """Median wall time (ms) of each function, run in turn so that noise hits all alike."""
    for fn in functions:
        fn()  # warm-up: Numba compilation (or its cache), allocator
    times = [[] for _ in functions]
    for _ in range(repeats):
        for fn, record in zip(functions, times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [1e3 * float(np.median(t)) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch
            torch.set_num_threads(2)
        except ImportError:
            use_torch = False
    print(f"batch {args.batch}, median of {args.repeats}, minidl threads {minidl.cpu.num_threads()}"
          + (f", torch threads {torch.get_num_threads()}" if use_torch else ""))
    header = f"{'case':22s} {'':16s} {'minidl ms':>10s}"
    print(header + (f" {'torch ms':>10s} {'speed-up':>9s}" if use_torch else ""))
    rng = np.random.default_rng(0)
    for name, shape, minidl_op, torch_op in CASES:
        # ReLU outputs, as in AlexNet: non-negative, with ties at zero.
        x = np.maximum(rng.standard_normal((args.batch,) + shape), 0).astype(np.float32) * 4
        with minidl.no_grad():
            out_shape = minidl_op(minidl.Tensor(x)).shape
        grad = rng.standard_normal(out_shape).astype(np.float32)
        calls = list(minidl_calls(minidl_op, x, grad))
        if use_torch:
            calls += list(torch_calls(torch_op, x, grad))
        medians = alternate_medians(calls, args.repeats)
        for i, what in enumerate(("forward", "forward+backward")):
            line = f"{name:22s} {what:16s} {medians[i]:10.1f}"
            if use_torch:
                line += f" {medians[i + 2]:10.1f} {medians[i + 2] / medians[i]:8.1f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
