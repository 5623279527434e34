"""Time conv2d forward+backward on AlexNet's (and EuroNet's) layers against torch (2 threads).

    python benchmarks/conv_bench.py [--repeats 7] [--batch 32] [--all] [--euronet]

Prints the median wall time of forward alone and of forward+backward for minidl and for
torch.nn.functional.conv2d on the same inputs. Stride-1 layers with 3x3 or 5x5 kernels
(AlexNet's conv2, conv3-5 with --all, EuroNet's six with --euronet) are timed with both of
minidl's algorithms, im2col and Winograd (F(4x4, 3x3), F(2x2, 5x5)), the one
``algorithm="auto"`` picks for them. conv1's input needs no gradient (it is the
image), as in training; conv2's input does. Before each series of timings the script waits
(up to a minute) for the CPU to be otherwise idle, since a shared machine skews them badly.

OpenBLAS keeps its worker threads spinning for a while (2**28 cycles, ~0.1 s) after each
matrix product; on a 2-core machine they then take half of the CPU from the Numba kernels
that run next (im2col, col2im, and every other op). ``--openblas-timeout N`` sets
OPENBLAS_THREAD_TIMEOUT=N (spin for 2**N cycles; 4 is the minimum) before NumPy loads, which
is the only moment OpenBLAS reads it.
"""
import argparse
import os
import time

CONFIGS = {
    # name: (input shape without batch, weight shape, stride, padding, groups, input needs grad)
    "conv1": ((3, 227, 227), (96, 3, 11, 11), 4, 0, 1, False),
    "conv2": ((96, 27, 27), (256, 48, 5, 5), 1, 2, 2, True),
}
MORE_CONFIGS = {  # --all: the rest of AlexNet's convolutions
    "conv3": ((256, 13, 13), (384, 256, 3, 3), 1, 1, 1, True),
    "conv4": ((384, 13, 13), (384, 192, 3, 3), 1, 1, 2, True),
    "conv5": ((384, 13, 13), (256, 192, 3, 3), 1, 1, 2, True),
}
EURONET_CONFIGS = {  # --euronet: EuroNet's convolutions on 13-band 64x64 patches
    "euro-conv1": ((13, 64, 64), (28, 13, 3, 3), 1, 1, 1, False),
    "euro-conv2": ((28, 64, 64), (28, 28, 3, 3), 1, 1, 1, True),
    "euro-conv3": ((28, 32, 32), (56, 28, 3, 3), 1, 1, 1, True),
    "euro-conv4": ((56, 32, 32), (56, 56, 3, 3), 1, 1, 1, True),
    "euro-conv5": ((56, 16, 16), (112, 56, 3, 3), 1, 1, 1, True),
    "euro-conv6": ((112, 16, 16), (112, 112, 3, 3), 1, 1, 1, True),
}


def cpu_busy(seconds=0.5):
    """Fraction of the machine's CPU time used (by anything) over the next ``seconds``."""
    def read():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait
    total0, idle0 = read()
    time.sleep(seconds)
    total1, idle1 = read()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_until_quiet(limit=0.1, timeout=60.0):
    """On a shared machine, wait (up to ``timeout`` s) until other processes leave the CPU idle."""
    if not os.path.exists("/proc/stat"):
        return
    deadline = time.time() + timeout
    while cpu_busy() > limit and time.time() < deadline:
        pass


def median_ms(fn, repeats):
    fn()  # warm-up: compilation, workspace allocation
    wait_until_quiet()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def bench_minidl(x, w, b, stride, padding, groups, x_grad, repeats, algorithm):
    xt = minidl.Tensor(x, requires_grad=x_grad)
    wt = minidl.Tensor(w, requires_grad=True)
    bt = minidl.Tensor(b, requires_grad=True)

    def forward():
        with minidl.no_grad():
            return minidl.ops.conv2d(xt, wt, bt, stride=stride, padding=padding, groups=groups,
                                     algorithm=algorithm)

    def step():
        y = minidl.ops.conv2d(xt, wt, bt, stride=stride, padding=padding, groups=groups,
                              algorithm=algorithm)
        grad = np.ones(y.shape, dtype=y.dtype)
        y.backward(minidl.Tensor(grad))
        xt.grad = wt.grad = bt.grad = None

    return median_ms(forward, repeats), median_ms(step, repeats)


def bench_torch(x, w, b, stride, padding, groups, x_grad, repeats):
    import torch
    import torch.nn.functional as F
    xt = torch.tensor(x, requires_grad=x_grad)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)

    def forward():
        with torch.no_grad():
            return F.conv2d(xt, wt, bt, stride=stride, padding=padding, groups=groups)

    def step():
        y = F.conv2d(xt, wt, bt, stride=stride, padding=padding, groups=groups)
        y.backward(torch.ones_like(y))
        xt.grad = wt.grad = bt.grad = None

    return median_ms(forward, repeats), median_ms(step, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workspace-mb", type=float, default=None,
                        help="override workspace.WORKSPACE_BYTES (MiB)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--all", action="store_true", help="also time conv3, conv4 and conv5")
    parser.add_argument("--euronet", action="store_true", help="also time EuroNet's six convs")
    parser.add_argument("--openblas-timeout", type=int, default=None,
                        help="set OPENBLAS_THREAD_TIMEOUT before NumPy is imported")
    args = parser.parse_args()
    if args.openblas_timeout is not None:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(args.openblas_timeout)
    global np, minidl, workspace
    import numpy as np
    import minidl
    from minidl.ops import workspace
    if args.workspace_mb is not None:
        workspace.WORKSPACE_BYTES = int(args.workspace_mb * 2**20)
    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, workspace {workspace.WORKSPACE_BYTES / 2**20:.0f} MiB, "
          f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset')}, "
          f"median of {args.repeats}, ms")
    configs = dict(CONFIGS, **(MORE_CONFIGS if args.all else {}),
                   **(EURONET_CONFIGS if args.euronet else {}))
    from minidl.ops import winograd
    for name, (in_shape, w_shape, stride, padding, groups, x_grad) in configs.items():
        x = rng.standard_normal((args.batch,) + in_shape).astype(np.float32)
        w = (0.01 * rng.standard_normal(w_shape)).astype(np.float32)
        b = np.zeros(w_shape[0], dtype=np.float32)
        line = f"{name}:"
        steps = {}
        algorithms = (["im2col", "winograd"] if winograd.supports(w_shape, (stride, stride))
                      else ["im2col"])
        for algorithm in algorithms:
            fwd, steps[algorithm] = bench_minidl(x, w, b, stride, padding, groups, x_grad,
                                                 args.repeats, algorithm)
            line += f" minidl {algorithm} forward {fwd:7.1f}  forward+backward {steps[algorithm]:7.1f} |"
        if len(steps) == 2:
            line += f" winograd speed-up fwd+bwd {steps['im2col'] / steps['winograd']:4.2f}x |"
        if torch is not None and not args.no_torch:
            t_fwd, t_step = bench_torch(x, w, b, stride, padding, groups, x_grad, args.repeats)
            line += (f" torch forward {t_fwd:7.1f}  forward+backward {t_step:7.1f}"
                     f" | minidl (auto) speed-up fwd+bwd {t_step / steps[algorithms[-1]]:4.2f}x")
        print(line, flush=True)


if __name__ == "__main__":
    main()
