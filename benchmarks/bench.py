"""Time minidl's AlexNet and EuroNet training steps and inference, against PyTorch if installed.

    python benchmarks/bench.py                    # AlexNet b32 train + inference, EuroNet b50 train
    python benchmarks/bench.py --batch128         # also AlexNet training at batch 128 (slow)
    python benchmarks/bench.py --busy             # the same with one core kept busy by a burner
    python benchmarks/bench.py --cold             # the first step from an empty compile cache
    python benchmarks/bench.py --device cuda      # the same on a GPU (CuPy vs PyTorch CUDA)
    python benchmarks/bench.py --only euronet-train-50 --repeats 15
    python benchmarks/bench.py --baseline /tmp/old            # also another checkout of minidl
    python benchmarks/bench.py --variant "system-malloc:MINIDL_CPU_ALLOCATOR=system"

What it measures is what a user gets: each framework with its own defaults and nothing opted
into. The minidl worker does what a training script does -- ``import minidl`` first, which
applies ``minidl.cpu.configure()`` -- and the PyTorch worker never imports minidl. Anything
else is an opt-in that adds a row: ``--variant NAME:VAR=VALUE,...`` runs another minidl worker
with those environment variables (``VAR=-`` removes one), ``--baseline DIR`` the minidl of
another checkout (e.g. ``git worktree add /tmp/old HEAD~1``), to compare versions in one run.

A training step is forward, loss, backward and the SGD update. Each case is warmed up first;
the first step, which includes Numba/NVRTC compilation or loading it from cache, is reported
separately ("first step"; with ``--cold`` minidl's worker starts from an empty Numba cache, so
it is a fresh install's first step, compilation included). The workers are asked for one step
at a time, in turn, so all see the same machine load, and the table gives medians with
min-max. Each framework runs each case in a worker process of its own: in one process, two
frameworks share a malloc heap, caches and each other's idle threads, an effect no user
running one of them sees. Peak memory is the worker's after its first two steps (VmHWM on
the CPU; on the GPU the most bytes CuPy's memory pool had handed out at once, counted by
a memory hook, against PyTorch's max_memory_allocated).

``--busy`` starts a burner process that keeps one core busy for the whole run (a machine
shared with other work); compare its ratios with a quiet run's.
"""
import os
import sys

if sys.argv[1:3] == ["--worker", "minidl"]:
    # What a training script does: minidl first, so that its configure() comes before NumPy
    # (OpenBLAS reads its thread settings when NumPy loads).
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import minidl  # noqa: F401
elif sys.argv[1:3] == ["--worker", "pytorch"]:
    import torch  # noqa: F401

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

# Per image: about 3x the 1.45 GFLOP forward (docs/MODELS.md), counted as direct convolution. The
# table's "of matmul peak" is images/s times this over the measured matmul rate: for minidl an
# effective figure, since Winograd does conv2-5 with fewer multiply-adds.
ALEXNET_TRAIN_GFLOP = 4.3

CASES = {
    # name: (model, batch, train?)
    "alexnet-train-32": ("alexnet", 32, True),
    "alexnet-infer-32": ("alexnet", 32, False),
    "alexnet-train-128": ("alexnet", 128, True),
    "euronet-train-50": ("euronet", 50, True),
}


# -- minidl ---------------------------------------------------------------------------------
class MinidlCase:
    def __init__(self, model_name, batch, train, device, tf32=False):
        import minidl
        from minidl import ops
        from minidl.models import alexnet, euronet
        from minidl.optim import SGD

        self.minidl = minidl
        if device == "cuda":
            minidl.backend.allow_tf32(tf32)
        minidl.manual_seed(0)
        rng = np.random.default_rng(0)
        self.device, self.train_mode = device, train
        if model_name == "alexnet":
            self.model = alexnet(num_classes=1000)
            x = rng.standard_normal((batch, 3, 227, 227), dtype=np.float32)
            self.targets = rng.integers(0, 1000, batch)
            self.loss_fn = ops.softmax_cross_entropy
        else:
            self.model = euronet(in_channels=13, num_classes=10)
            x = rng.standard_normal((batch, 13, 64, 64), dtype=np.float32)
            self.targets = (rng.random((batch, 10)) < 0.1).astype(np.float32)
            self.loss_fn = ops.binary_cross_entropy_with_logits
        self.model.to(device)
        self.x = minidl.Tensor(x).to(device)
        if device == "cuda":
            import cupy
            self.targets = cupy.asarray(self.targets)
        self.optimizer = SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.model.train(train)

    def step(self):
        if self.train_mode:
            loss = self.loss_fn(self.model(self.x), self.targets)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        else:
            with self.minidl.no_grad():
                self.model(self.x)
        synchronize(self.device)

    def breakdown(self):
        with self.minidl.profile(lambda: synchronize(self.device)) as prof:
            self.step()
        return prof


def gpu_problem():
    """Why this checkout's minidl cannot use the GPU ('' when it can), asked of a child: this
    process never imports minidl."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    probe = (f"import sys; sys.path.insert(0, {root!r}); import minidl; "
             "print(minidl.backend.cuda_status() or '')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else result.stderr.strip()


def tf32_statement(framework, runner):
    """What this worker's framework runs its float32 GPU products in, read from the framework
    itself: PyTorch's cuDNN convolutions take TF32 by default, so a comparison must say."""
    if framework == "minidl":
        allowed = runner.minidl.backend.tf32_allowed()
        return (f"minidl TF32 {'allowed' if allowed else 'off'} (backend.tf32_allowed()={allowed}; "
                "CuPy's strided-batched products -- Winograd's, grouped im2col's -- are float32 "
                "either way)")
    torch = runner.torch
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    return (f"PyTorch TF32 {'allowed' if matmul or cudnn else 'off'} "
            f"(backends.cuda.matmul.allow_tf32={matmul}, backends.cudnn.allow_tf32={cudnn})")


def synchronize(device):
    if device == "cuda":
        import cupy
        cupy.cuda.Device().synchronize()


# -- PyTorch reference (same networks, same shapes) -----------------------------------------
def torch_available():
    """Whether PyTorch imports (asked of a child: this process never imports it)."""
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


class TorchCase:
    def __init__(self, model_name, batch, train, device, tf32):
        import torch
        from torch import nn
        torch.manual_seed(0)
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cudnn.benchmark = True
        self.torch, self.device, self.train_mode = torch, device, train
        if model_name == "alexnet":
            lrn = lambda: nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)  # paper form
            self.model = nn.Sequential(
                nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
                nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
                nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
                nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 1000))
            self.x = torch.randn(batch, 3, 227, 227)
            self.targets = torch.randint(0, 1000, (batch,))
            self.loss_fn = nn.CrossEntropyLoss()
        else:
            conv = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()]
            self.model = nn.Sequential(
                *conv(13, 28), *conv(28, 28), nn.MaxPool2d(2), *conv(28, 56), *conv(56, 56),
                nn.MaxPool2d(2), *conv(56, 112), *conv(112, 112), nn.MaxPool2d(2), nn.Flatten(),
                nn.Linear(7168, 784), nn.ReLU(), nn.Dropout(0.5), nn.Linear(784, 10))
            self.x = torch.randn(batch, 13, 64, 64)
            self.targets = (torch.rand(batch, 10) < 0.1).float()
            self.loss_fn = nn.BCEWithLogitsLoss()
        self.model.to(device)
        self.x, self.targets = self.x.to(device), self.targets.to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9,
                                         weight_decay=5e-4)
        self.model.train(train)

    def step(self):
        torch = self.torch
        if self.train_mode:
            loss = self.loss_fn(self.model(self.x), self.targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        else:
            with torch.no_grad():
                self.model(self.x)
        if self.device == "cuda":
            torch.cuda.synchronize()


# -- measuring ------------------------------------------------------------------------------
def timed(step):
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def matmul_peak_gflops(device, n=2048, repeats=5):
    if device == "cuda":
        import cupy as xp
    else:
        xp = np
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    b = a.copy()
    a @ b
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


def cpu_description():
    """The CPU model and the widest vector ISA it has, from /proc/cpuinfo (Linux)."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    isa = next((name for name, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"))
                if flag in flags), "SSE")
    return f"{model}, {isa}, {os.cpu_count()} cores"


def peak_memory_bytes(framework, runner, device):
    if device != "cuda":
        return peak_rss_bytes()
    if framework == "minidl":
        return runner.pool_peak.peak
    return runner.torch.cuda.max_memory_allocated()


def pool_peak_hook():
    """A CuPy memory hook counting the bytes handed out by the memory pool and not yet given
    back, and their maximum: the counterpart of PyTorch's max_memory_allocated (the pool's
    total_bytes() also counts freed blocks it keeps). Hooks are per thread; CuPy allocates on
    the thread that runs the step."""
    import cupy

    class PoolPeak(cupy.cuda.MemoryHook):
        name = "minidl-bench-pool-peak"

        def __init__(self):
            self.in_use = self.peak = 0

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
            self.in_use += mem_size
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
            self.in_use -= mem_size

    return PoolPeak()


def peak_rss_bytes():
    """This process's peak resident size. On Linux, VmHWM of /proc/self/status: ru_maxrss
    is not reset by exec, so a probe started from the (large) benchmark process would report
    the parent's peak instead of its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(framework, case, device, tf32, channel):
    """Run one framework on one case, doing what the parent asks, one JSON line per answer."""
    model_name, batch, train = CASES[case]
    pool_peak = None
    if device == "cuda" and framework == "minidl":
        pool_peak = pool_peak_hook()
        pool_peak.__enter__()  # before the model is built, for the life of the worker
    runner = (MinidlCase(model_name, batch, train, device, tf32) if framework == "minidl"
              else TorchCase(model_name, batch, train, device, tf32))
    runner.pool_peak = pool_peak
    ready = {"ready": True}
    if device == "cuda":
        ready["tf32"] = tf32_statement(framework, runner)
    print(json.dumps(ready), file=channel, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            answer = {"seconds": timed(runner.step)}
        elif command == "peak":
            answer = {"peak_gib": peak_memory_bytes(framework, runner, device) / 2 ** 30}
        elif command == "breakdown":
            prof = runner.breakdown()
            answer = {"breakdown": [list(key) + [seconds] for key, seconds in prof.seconds.items()]}
        else:
            return
        print(json.dumps(answer), file=channel, flush=True)


class Worker:
    """The parent's end of one worker process: ``framework`` ("minidl" or "pytorch") from this
    checkout, or from ``checkout``'s ``benchmarks/bench.py`` (same protocol), with ``env``."""

    def __init__(self, label, framework, case, args, env=None, checkout=None):
        self.label = label
        self.name = f"{label} worker for {case}"
        script = os.path.abspath(__file__) if checkout is None else os.path.join(
            checkout, "benchmarks", "bench.py")
        command = [sys.executable, script, "--worker", framework, case, "--device", args.device]
        command += ["--tf32"] if args.tf32 else []
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"bench: the {self.name} exited early (its error is above)")
        return json.loads(line)

    def ask(self, command):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()


def parse_variant(text):
    """"NAME:VAR=VALUE,VAR2=-" -> (name, {VAR: VALUE, VAR2: None})."""
    name, _, assignments = text.partition(":")
    changes = {}
    for item in filter(None, assignments.split(",")):
        variable, _, value = item.partition("=")
        changes[variable] = None if value == "-" else value
    if not name or not changes:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME:VAR=VALUE[,...]")
    return name, changes


def environment(changes, cold_cache=None):
    env = dict(os.environ)
    for variable, value in changes.items():
        if value is None:
            env.pop(variable, None)
        else:
            env[variable] = value
    if cold_cache is not None:
        env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-", dir=cold_cache)
    return env


def start_workers(case, args, with_torch, cold_cache):
    workers = [Worker("minidl", "minidl", case, args, environment({}, cold_cache))]
    for name, changes in args.variant:
        workers.append(Worker(f"minidl {name}", "minidl", case, args,
                              environment(changes, cold_cache)))
    if args.baseline:
        workers.append(Worker("baseline", "minidl", case, args, environment({}, cold_cache),
                              checkout=args.baseline))
    if with_torch:
        workers.append(Worker("pytorch", "pytorch", case, args))
    return {w.label: w for w in workers}


def run_case(case, args, with_torch, cold_cache):
    batch = CASES[case][1]
    workers = start_workers(case, args, with_torch, cold_cache)
    try:
        for name, w in workers.items():
            ready = w.read()  # ready: model built
            if args.device == "cuda":
                print(f"{case}: {name}: {ready.get('tf32', 'TF32 setting not reported')}", flush=True)
        first = {name: w.ask("step")["seconds"] for name, w in workers.items()}  # JIT, caches
        for w in workers.values():
            w.ask("step")  # warm-up
        peaks = {name: w.ask("peak")["peak_gib"] for name, w in workers.items()}  # two steps
        samples = {name: [] for name in workers}
        for _ in range(args.repeats):
            for name, w in workers.items():  # alternate, so all see the same machine
                samples[name].append(w.ask("step")["seconds"])
        breakdown = {(op, tuple(shape), direction): seconds for op, shape, direction, seconds
                     in workers["minidl"].ask("breakdown")["breakdown"]}
    finally:
        for w in workers.values():
            w.close()
    return batch, first, samples, peaks, breakdown


def format_breakdown(seconds, top=14):
    rows = sorted(seconds.items(), key=lambda kv: -kv[1])
    total = sum(seconds.values())
    lines = [f"  {'op':<24} {'input shape':<22} {'pass':<9} {'ms':>8} {'share':>6}"]
    for (name, shape, direction), seconds in rows[:top]:
        lines.append(f"  {name:<24} {str(shape):<22} {direction:<9} {1e3 * seconds:8.1f} "
                     f"{100 * seconds / total:5.1f}%")
    lines.append(f"  {'all ops':<56} {1e3 * total:8.1f}")
    return "\n".join(lines)


def burn(stop):
    """Keep one core busy until ``stop`` is set: the other work of a shared machine."""
    x = 0
    while not stop.is_set():
        for _ in range(100000):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch128", action="store_true", help="also AlexNet training at batch 128")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES))
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--tf32", action="store_true", help="GPU: allow TF32 matrix products in both")
    parser.add_argument("--busy", action="store_true",
                        help="keep one core busy with a burner process for the whole run")
    parser.add_argument("--cold", action="store_true",
                        help="minidl's workers start from an empty Numba cache: the first step "
                             "is a fresh install's, compilation included")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        metavar="NAME:VAR=VALUE,...",
                        help="add a row: minidl with these environment variables (VAR=- unsets)")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="add a row: the minidl of another checkout (e.g. a git worktree of an "
                             "earlier commit)")
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        # The answers go out on a copy of stdout; stdout itself then points at stderr, so
        # that nothing else printed in the worker can garble them.
        channel = os.fdopen(os.dup(sys.stdout.fileno()), "w")
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        worker(*args.worker, args.device, args.tf32, channel)
        return
    if args.device == "cuda":
        problem = gpu_problem()
        if problem:
            sys.exit(f"bench: --device cuda needs a usable GPU: {problem}")
    cases = args.only or [c for c in CASES if c != "alexnet-train-128" or args.batch128]
    with_torch = not args.no_torch and torch_available()
    peak = matmul_peak_gflops(args.device)
    print(f"device {args.device}; {cpu_description()}; NumPy {np.__version__}; float32 matmul "
          f"2048^3: {peak:.0f} GFLOP/s; "
          + (f"PyTorch {subprocess.check_output([sys.executable, '-c', 'import torch; print(torch.__version__)'], text=True).strip()}"
             if with_torch else "PyTorch not installed")
          + ("; TF32 allowed" if args.tf32 else "; TF32 off")
          + ("; one core kept busy by a burner" if args.busy else "; no other load started")
          + ("; minidl from an empty Numba cache" if args.cold else "")
          + "; each framework with its defaults, one worker process per framework and case")
    stop = multiprocessing.Event()
    burner = multiprocessing.Process(target=burn, args=(stop,), daemon=True) if args.busy else None
    cold_cache = tempfile.mkdtemp(prefix="minidl-bench-") if args.cold else None
    if burner:
        burner.start()
    table, details = [], []
    try:
        for case in cases:
            batch, first, samples, peaks, breakdown = run_case(case, args, with_torch, cold_cache)
            rates = {}
            for name, times in samples.items():
                median = statistics.median(times)
                rates[name] = batch / median
                share = ""
                if case.startswith("alexnet-train"):
                    share = f"{100 * rates[name] * ALEXNET_TRAIN_GFLOP / peak:5.1f}%"
                table.append(f"| {case} | {name} | {batch / median:7.1f} | {1e3 * median:8.0f} "
                             f"({1e3 * min(times):.0f}-{1e3 * max(times):.0f}) | "
                             f"{1e3 * first[name]:7.0f} | {peaks[name]:5.2f} | {share} |")
            for other in rates:
                if other != "minidl":
                    table.append(f"| {case} | **minidl / {other}** | "
                                 f"**{rates['minidl'] / rates[other]:.2f}x** | | | | |")
            details.append(f"\n{case}: minidl per-op breakdown of one step\n"
                           f"{format_breakdown(breakdown)}")
    finally:
        if burner:
            stop.set()
            burner.join()
        if cold_cache:
            shutil.rmtree(cold_cache, ignore_errors=True)
    print("\n| case | framework | img/s | step ms median (min-max) | first step ms | peak GiB "
          "| of matmul peak |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(table))
    print("\n".join(details))


if __name__ == "__main__":
    main()
