"""Data-parallel scaling on one machine: 1 process x 2 threads against 2 processes x 1 thread.

    python benchmarks/scaling.py [--steps 5] [--models alexnet,euronet]

For AlexNet (batch 32) and EuroNet (batch 50) a training step -- forward, backward, gradients
averaged, SGD update -- is timed at the same global batch in three layouts:

* 1 process x 1 thread (the unit the efficiencies are measured against),
* 1 process x 2 threads (minidl's threads: MINIDL_NUM_THREADS; BLAS: OPENBLAS_NUM_THREADS),
* 2 processes x 1 thread (``mpiexec -n 2``, minidl.distributed, each process half the batch).

The table gives images per second (median step), and two efficiencies: against two
single-thread processes' worth of work (throughput / (2 x the 1x1 throughput)), and
2 processes x 1 thread against 1 process x 2 threads.

    python benchmarks/scaling.py --overlap [--models alexnet]

times the 2 x 1 layout twice instead, with DistributedDataParallel's default buckets (sent as
backward produces them) and with one bucket larger than the model (sent after backward): the
time the overlap saves. Needs the mpi extra
(``pip install -e ".[mpi]"``). Each layout runs in fresh processes on synthetic data; the
first steps (compilation, first touch of memory) are not timed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCH = {"alexnet": 32, "euronet": 50}


def worker(model_name, steps, warmup, bucket_mb):
    """One process of a layout: time ``steps`` training steps after ``warmup``; rank 0 prints
    a JSON line with the step times."""
    import numpy as np

    import minidl
    from minidl import distributed, ops
    from minidl.metrics import with_one_hot
    from minidl.models import alexnet, euronet
    from minidl.optim import SGD

    distributed.init()
    world, rank = distributed.world_size(), distributed.rank()
    minidl.manual_seed(0)
    if model_name == "alexnet":
        model, loss_fn, classes = alexnet(num_classes=1000), ops.softmax_cross_entropy, 1000
    else:
        model = euronet()
        loss_fn, classes = with_one_hot(ops.binary_cross_entropy_with_logits), 10
    batch = BATCH[model_name]
    share = batch // world + (1 if rank < batch % world else 0)
    rng = np.random.default_rng(rank)
    x = rng.normal(0, 1, (share,) + model.input_shape).astype(np.float32)
    y = rng.integers(0, classes, share)
    trained = distributed.DistributedDataParallel(model, bucket_mb=bucket_mb) if world > 1 else model
    optimizer = SGD(model.parameters(), lr=0.001)
    times = []
    for step in range(warmup + steps):
        distributed.barrier()
        start = time.perf_counter()
        loss = loss_fn(trained(minidl.Tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        if world > 1:
            trained.synchronize()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    times = distributed.allreduce(np.array(times), op="max")  # a step lasts as long as its slowest rank
    if rank == 0:
        print(json.dumps({"times": times.tolist()}), flush=True)


def run_layout(model_name, processes, threads, steps, warmup, bucket_mb=None):
    env = {**os.environ, "MINIDL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "PYTHONPATH": ROOT}
    command = [sys.executable, __file__, "--worker", model_name, "--steps", str(steps),
               "--warmup", str(warmup)]
    if bucket_mb is not None:
        command += ["--bucket-mb", str(bucket_mb)]
    if processes > 1:
        command = ["mpiexec", "-n", str(processes)] + command
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"scaling.py: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    line = [l for l in done.stdout.splitlines() if l.startswith("{")][-1]
    return statistics.median(json.loads(line)["times"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", default="alexnet,euronet")
    parser.add_argument("--overlap", action="store_true",
                        help="2 x 1 with the default buckets against one bucket sent after backward")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bucket-mb", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        from minidl.distributed import DEFAULT_BUCKET_MB
        worker(args.worker, args.steps, args.warmup,
               DEFAULT_BUCKET_MB if args.bucket_mb is None else args.bucket_mb)
        return
    if args.overlap:
        overlap(args)
        return
    layouts = [(1, 1), (1, 2), (2, 1)]
    print("| model | global batch | layout | step ms (median) | img/s | efficiency vs 2 x (1x1) | "
          "2x1 vs 1x2 |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        seconds = {layout: run_layout(name, *layout, args.steps, args.warmup) for layout in layouts}
        batch = BATCH[name]
        unit = batch / seconds[(1, 1)]
        for processes, threads in layouts:
            rate = batch / seconds[(processes, threads)]
            versus = f"{rate * seconds[(1, 2)] / batch:.2f}" if (processes, threads) == (2, 1) else ""
            print(f"| {name} | {batch} | {processes} process(es) x {threads} thread(s) | "
                  f"{1000 * seconds[(processes, threads)]:.0f} | {rate:.1f} | "
                  f"{rate / (processes * threads * unit):.2f} | {versus} |", flush=True)


def overlap(args):
    """2 processes x 1 thread, buckets sent during backward against one sent after it."""
    print("| model | global batch | buckets | step ms (median) | img/s |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        during = run_layout(name, 2, 1, args.steps, args.warmup)
        after = run_layout(name, 2, 1, args.steps, args.warmup, bucket_mb=1e6)
        batch = BATCH[name]
        for label, seconds in (("25 MB, sent during backward", during), ("one, sent after backward", after)):
            print(f"| {name} | {batch} | {label} | {1000 * seconds:.0f} | {batch / seconds:.1f} |", flush=True)
        print(f"| {name} | | **overlap saves** | **{1000 * (after - during):.0f}** | |", flush=True)


if __name__ == "__main__":
    main()
