"""Scaling efficiency of a training stage from 1 to N processes on one machine.

Runs the same `aligndistil distill --teacher CACHE` job (same global batch, same steps) once
with 1 process and once under torchrun with N processes, and prints the median tokens per
second of each (from metrics.jsonl, first step excluded) and their ratio. On a CPU machine the
cores are split between the processes (OMP threads = cores / N), so the ratio measures the
cost of the data-parallel machinery, not extra hardware.

    python benchmarks/bench_scaling.py --model runs/sentiment-quick/smollm2-135m-instruct \
        --teacher runs/sentiment-quick/teacher --nproc 2 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(nproc: int, args: argparse.Namespace, out: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cli = ["-m", "aligndistil_cli", "distill", "--model", args.model, "--teacher", args.teacher,
           "--output", str(out), "--batch-size", str(args.batch_size), "--micro-batch-size", "1",
           "--max-steps", str(args.steps), "--lr", "1e-6", "--overwrite"]
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    subprocess.run(launcher + cli, env=env, check=True, capture_output=True, text=True)
    rates = [json.loads(ln)["tokens_per_sec"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[1:] or rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args, Path(tmp) / "one", threads=cores)
        many = run(args.nproc, args, Path(tmp) / "many", threads=max(1, cores // args.nproc))
    print(f"distill from {args.teacher}: global batch {args.batch_size}, {args.steps} steps, {cores} cores")
    print(f"{'processes':>10} {'tokens/s (median)':>18} {'ratio':>7}")
    print(f"{1:>10} {one:>18.1f} {1.0:>7.2f}")
    print(f"{args.nproc:>10} {many:>18.1f} {many / one:>7.2f}")
    print(f"scaling efficiency 1 -> {args.nproc} processes on the same cores: {many / one:.2f}")


if __name__ == "__main__":
    main()
