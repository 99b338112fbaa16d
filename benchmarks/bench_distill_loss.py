"""Benchmark the AlignDistil loss alone (forward + backward): official style vs ours.

Methods, for one sequence of T response tokens, hidden size H, shared vocabulary V:

- ``official``: the official code's way (method.md §3, off-policy trainer lines 189-243): full
  [T, V] fp32 logits of the student, DPO and reverse-DPO models from hidden @ W, softmaxes, TVD,
  teacher log_softmax, KL, autograd backward;
- ``live``: ``distill_loss`` with LiveTargets from the three models' hidden states + heads
  (HeadLogits), fused student head, chunked;
- ``topk``: ``distill_loss`` from a top-64 teacher cache (precomputed before measuring), fused
  student head.

Each (method, V) runs in a fresh subprocess. Memory is the *extra* peak over the inputs:
CUDA: ``torch.cuda.max_memory_allocated()`` minus the allocated bytes before the loss; CPU: the
growth of the process's peak resident set (``ru_maxrss``) from just before the first loss call to
the end, i.e. the high-water mark of everything the loss allocates (allocator caching included).

Usage: ``python benchmarks/bench_distill_loss.py [--T 512] [--V 49152 151936] [--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aligndistil_cli.losses.distill import LiveTargets, TopKTargets, distill_loss  # noqa: E402
from aligndistil_cli.teacher.compose import HeadLogits, TeacherSpec, compose_chunked, topk_rows  # noqa: E402

BETA, BETA2 = 0.1, 10.0  # official --beta / --beta2 (off-policy script)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_inputs(T: int, V: int, H: int, dtype: torch.dtype, device: str):
    """Student/DPO/reverse-DPO hidden states [T, H] and heads [V, H]; the teachers are perturbed
    copies of the student so that TVD and KL have realistic sizes."""
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    h_s, w_s = rnd(T, H), rnd(V, H) * (2.0 / H ** 0.5)
    h_d, w_d = h_s + 0.3 * rnd(T, H), w_s + 0.3 * rnd(V, H) / H ** 0.5
    h_r, w_r = h_s + 0.3 * rnd(T, H), w_s + 0.3 * rnd(V, H) / H ** 0.5
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return [cast(t) for t in (h_s, w_s, h_d, w_d, h_r, w_r)]


def official_loss(h_s, w_s, h_d, w_d, h_r, w_r):
    """Transcription of the official aligndistil branch (full-vocabulary fp32 tensors)."""
    z_s = (h_s @ w_s.t()).float()
    with torch.no_grad():
        z_d, z_r = (h_d @ w_d.t()).float(), (h_r @ w_r.t()).float()
        lp_d, lp_r = torch.log_softmax(z_d, -1), torch.log_softmax(z_r, -1)
        tvd = (lp_d.exp() - lp_r.exp()).abs().sum(-1)
        alpha = BETA2 * tvd + 1e-3
        lp_star = torch.log_softmax(alpha[:, None] * (z_d - z_r) + z_d, -1)
    p_s, lp_s = torch.softmax(z_s, -1), torch.log_softmax(z_s, -1)
    per_token = (BETA / alpha) * (p_s * (lp_s - lp_star)).sum(-1)
    mask = torch.ones_like(per_token)
    return (per_token * mask).sum() / mask.sum()  # --reward_len_norm, one sequence


def spec() -> TeacherSpec:
    return TeacherSpec(alpha_max=2 * BETA2, beta=BETA)


def build_case(method: str, inputs, chunk: int, topk: int):
    """A zero-argument callable returning the loss (student tensors need grad)."""
    h_s, w_s, h_d, w_d, h_r, w_r = inputs
    T = h_s.shape[0]
    seq = torch.zeros(T, dtype=torch.long, device=h_s.device)
    if method == "official":
        return lambda: official_loss(h_s, w_s, h_d, w_d, h_r, w_r)
    if method == "live":
        targets = LiveTargets(HeadLogits(h_d, w_d), HeadLogits(h_r, w_r), spec())
        return lambda: distill_loss(h_s, targets, None, seq, 1, head_weight=w_s, chunk_tokens=chunk)[0]
    # the cache is built before measuring, in small chunks so it does not raise the baseline peak
    parts = list(compose_chunked(HeadLogits(h_d, w_d), HeadLogits(h_r, w_r), spec(), chunk_tokens=64,
                                 fn=lambda rows, zd, zn: (*topk_rows(rows.logprobs, topk), rows.weight)))
    ids, vals, weight = (torch.cat([p[i] for _, p in parts]) for i in range(3))
    targets = TopKTargets(ids, vals)
    return lambda: distill_loss(h_s, targets, weight, seq, 1, head_weight=w_s, chunk_tokens=chunk)[0]


def worker(args) -> None:
    """One (method, V) measurement; prints one JSON line."""
    device, dtype = args.device, DTYPES[args.dtype]
    inputs = make_inputs(args.T, args.worker_V, args.H, dtype, device)
    inputs[0].requires_grad_(), inputs[1].requires_grad_()
    run = build_case(args.worker, inputs, args.chunk, args.topk)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, loss = [], None
    for rep in range(args.reps + 1):  # rep 0 is a warm-up
        for t in inputs[:2]:
            t.grad = None
        sync()
        t0 = time.perf_counter()
        loss = run()
        loss.backward()
        sync()
        if rep:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    print(json.dumps({"time": statistics.median(times), "peak": peak, "loss": loss.item(),
                      "grad_norm": inputs[0].grad.float().norm().item()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=512, help="response tokens (2048 in the paper setting)")
    ap.add_argument("--V", type=int, nargs="+", default=[49152, 151936])
    ap.add_argument("--H", type=int, default=576)
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--worker", choices=["official", "live", "topk"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-V", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    print(f"T={args.T} H={args.H} dtype={args.dtype} device={args.device} chunk={args.chunk} "
          f"top-k={args.topk} reps={args.reps} (median) threads={torch.get_num_threads()}")
    print("peak = extra peak " + ("CUDA allocated bytes" if args.device.startswith("cuda")
                                  else "resident set (ru_maxrss growth)") + " over the inputs")
    results = {}
    for V in args.V:
        for method in ("official", "live", "topk"):
            cmd = [sys.executable, __file__, "--worker", method, "--worker-V", str(V)] + [
                a for k in ("T", "H", "dtype", "device", "reps", "chunk", "topk", "threads")
                for a in (f"--{k}", str(getattr(args, k)))]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[V, method] = json.loads(out.strip().splitlines()[-1])
    report(args, results)


def report(args, results) -> None:
    print(f"{'V':>7} {'method':<9} {'time s':>8} {'x off.':>7} {'peak MiB':>9} {'x off.':>7} {'loss':>12}")
    for V in args.V:
        off = results[V, "official"]
        for method in ("official", "live", "topk"):
            r = results[V, method]
            print(f"{V:>7} {method:<9} {r['time']:>8.3f} {r['time'] / off['time']:>7.2f} "
                  f"{r['peak'] / 2**20:>9.1f} {r['peak'] / max(off['peak'], 1):>7.3f} {r['loss']:>12.7f}")
        live = results[V, "live"]
        diff = abs(live["loss"] - off["loss"])
        ok = diff <= 1e-5 * max(1.0, abs(off["loss"]))
        print(f"        V={V}: |live - official| = {diff:.2e} ({'OK' if ok else 'MISMATCH'} at 1e-5), "
              f"student-hidden grad norm official {off['grad_norm']:.6f} live {live['grad_norm']:.6f}")


if __name__ == "__main__":
    main()
