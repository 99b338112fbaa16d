"""Shared helpers of the benchmark scripts: asset paths, waiting for the teacher models,
fresh-subprocess workers and peak-memory readings. Not a benchmark itself."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RUN = Path("/tmp/qs/run")
REFERENCE = str(RUN / "smollm2-135m-instruct")
DPO = str(RUN / "dpo")
REVERSE_DPO = str(RUN / "reverse-dpo")
DATA = str(RUN / "data" / "train-split.jsonl")


def peak_rss() -> int:
    """Peak resident set of this process so far, bytes (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def model_complete(path: str) -> bool:
    """True when ``path`` is a finished aligndistil model folder (run record says complete)."""
    record = Path(path) / "aligndistil.json"
    try:
        status = json.loads(record.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        return False
    return status == "complete" and any(Path(path).glob("*.safetensors"))


def resolve_teachers(dpo: str, reverse_dpo: str, reference: str, wait_s: float, poll_s: float = 30.0
                     ) -> tuple[str, str, str]:
    """Wait up to ``wait_s`` for both teacher folders; fall back to the reference model for both.

    Returns (dpo path, reverse-DPO path, a note for the output)."""
    deadline = time.time() + wait_s
    announced = False
    while True:
        if model_complete(dpo) and model_complete(reverse_dpo):
            if Path(dpo).resolve() == Path(reverse_dpo).resolve():
                return dpo, reverse_dpo, (f"teachers: the SAME model {dpo} as DPO and reverse-DPO teacher "
                                          "(as given; TVD = 0, alpha = eps everywhere)")
            return dpo, reverse_dpo, "teachers: DPO and reverse-DPO models (complete)"
        if time.time() >= deadline:
            break
        if not announced:
            print(f"waiting up to {wait_s:.0f} s for {dpo} and {reverse_dpo} to be complete "
                  f"(polling every {poll_s:.0f} s) ...", flush=True)
            announced = True
        time.sleep(min(poll_s, max(0.0, deadline - time.time())))
    return reference, reference, ("teachers: FALLBACK - the DPO / reverse-DPO models were not complete, the "
                                  "REFERENCE model is used as both teachers (TVD = 0, alpha = eps everywhere)")


def machine_line() -> str:
    load = os.getloadavg()
    return (f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
            "(shared machine: compare ratios within this run, not absolute numbers)")


def run_worker(script: str, args: list[str]) -> dict:
    """Run ``script --worker ...`` in a fresh interpreter; return the JSON of its last stdout line."""
    cmd = [sys.executable, script] + args
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(n: float) -> float:
    return n / 2 ** 20


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
