"""Benchmark one full AlignDistil distillation step on CPU: official style vs ours live vs ours cached.

Student: SmolLM2-135M-Instruct (fp32, trainable). Teachers: the DPO and reverse-DPO models (fp32,
frozen). One step = loss forward -> ``(loss_sum / n_seq).backward()`` -> grad-norm clip 1.0 -> AdamW
step -> zero_grad, on one batch of the first ``--sequences`` chosen sequences of the real data.

Variants (each in a fresh subprocess, so peak RSS is honest; every one starts from the same weights):

- ``official``: transcription of the official off-policy trainer (method.md section 3): the three
  models' full [B, L, V] fp32 logits from ``model(input_ids, attention_mask).logits``, softmaxes over
  the whole batch, ``tvd = sum_v |p_dpo - p_rev|`` (no 1/2), ``alpha = beta2 * tvd + 1e-3`` (beta2 = 10),
  ``log pi* = log_softmax(alpha (z_dpo - z_rev) + z_dpo)``, per token
  ``beta / alpha * sum_v p_theta (log p_theta - log pi*)`` (beta = 0.1), per-sequence token mean, mean
  over sequences, autograd backward. POSITIONS: the official code skips the distribution predicting
  the first response token and trains the one after EOS instead (method.md 8.7); here the formula is
  evaluated on OUR positions (the output at position i - 1 predicting response token i, EOS
  included), so that its loss can be compared with ours. Same number of positions per sequence and
  the same [B, L, V] work either way, so the timing is unaffected.
- ``live``: ``LiveTask.micro_step`` (the three models live, teacher composed per chunk from the heads,
  fused chunked loss, plus the live diagnostics the real step logs);
- ``cache``: ``CacheTask.micro_step`` from a top-``--top-k`` cache built first with the real
  ``aligndistil build-teacher`` command over the same sequences (the build time is printed apart).

Columns: ``resp tok/s`` = response tokens of the batch / median step seconds; ``peak MiB`` = the
process's peak resident set at the end (models + optimizer state + activations); ``step MiB`` = its
growth from just before the first step. Check: |loss official - loss live| at step 1 <= 1e-5.

Usage: ``python benchmarks/bench_distill_step.py [--sequences 8] [--steps 3] [--top-k 64]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as C  # noqa: E402

VARIANTS = ("official", "live", "cache")
BETA, BETA2 = 0.1, 10.0  # official --beta / --beta2 (off-policy script)


def official_loss(z_s, z_d, z_r, mask):
    """The official aligndistil branch on full [B, L, V] fp32 logits; ``mask`` [B, L] float."""
    import torch

    lp_s, p_s = torch.log_softmax(z_s, -1), torch.softmax(z_s, -1)
    with torch.no_grad():
        lp_d, lp_r = torch.log_softmax(z_d, -1), torch.log_softmax(z_r, -1)
        tvd = (lp_d.exp() - lp_r.exp()).abs().sum(-1)
        alpha = BETA2 * tvd + 1e-3
        lp_star = torch.log_softmax(alpha[..., None] * (z_d - z_r) + z_d, -1)
    per_token = (BETA / alpha) * (p_s * (lp_s - lp_star)).sum(-1)
    seq_loss = (per_token * mask).sum(-1) / mask.sum(-1)  # --reward_len_norm
    return seq_loss.mean()


def worker(args) -> None:
    import torch

    from aligndistil_cli.batching import make_batch
    from aligndistil_cli.models import load_model, load_tokenizer, shared_vocab_size
    from aligndistil_cli.stages.distill import CacheTask, DistillConfig, LiveTask
    from aligndistil_cli.stages.teacher import select_sequences

    torch.manual_seed(0)
    dev = torch.device("cpu")
    tok = load_tokenizer(args.student)
    base_cfg = dict(model=args.student, output="unused", max_length=args.max_length,
                    max_prompt_length=args.max_prompt_length, max_examples=args.sequences,
                    batch_size=args.sequences, micro_batch_size=args.sequences, chunk_tokens=args.chunk_tokens,
                    lr=args.lr, device="cpu", dtype="float32")
    live_cfg = DistillConfig(dpo=args.dpo, reverse_dpo=args.reverse_dpo, data=args.data, **base_cfg)
    seqs, _ = select_sequences(live_cfg, tok)
    student = load_model(args.student, dtype="float32", device="cpu", train=True)
    dpo = neg = None
    if args.worker != "cache":
        dpo = load_model(args.dpo, dtype="float32", device="cpu").requires_grad_(False)
        neg = load_model(args.reverse_dpo, dtype="float32", device="cpu").requires_grad_(False)
    vocab, _ = shared_vocab_size({k: m for k, m in (("student", student), ("dpo", dpo), ("neg", neg)) if m}, tok)
    indices = list(range(len(seqs)))
    batch = make_batch([s.prompt_ids for s in seqs], [s.response_ids for s in seqs], tok.pad_token_id)

    if args.worker == "official":
        pos_mask = torch.zeros(batch.response_mask.shape, dtype=torch.float32)
        pos_mask[:, :-1] = batch.response_mask[:, 1:].float()  # output at i - 1 predicts token i

        def step_loss():
            z_s = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
            with torch.no_grad():
                z_d = dpo(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
                z_r = neg(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
            return official_loss(z_s[..., :vocab], z_d[..., :vocab], z_r[..., :vocab], pos_mask)
    else:
        if args.worker == "live":
            task = LiveTask(seqs, dpo, neg, live_cfg, tok.pad_token_id, vocab, dev)
        else:
            from aligndistil_cli.teacher.cache import TeacherCache

            cache = TeacherCache(args.worker_cache, verify=True)
            cache_cfg = DistillConfig(teacher=args.worker_cache, **base_cfg)
            task = CacheTask(cache, cache_cfg, tok.pad_token_id, cache.vocab_size, dev)
            ids = [cache[i].input_ids.tolist() for i in indices]
            if ids != [s.prompt_ids + s.response_ids for s in seqs]:
                raise SystemExit("the cache does not hold the benchmark's sequences")

        def step_loss():
            return task.micro_step(student, indices).loss_sum / len(indices)

    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    base = C.peak_rss()
    times, losses = [], []
    for step in range(args.steps + 1):  # step 0 is the warm-up
        t0 = time.perf_counter()
        loss = step_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(float(loss.detach()))
        if step:
            times.append(dt)
    peak = C.peak_rss()
    print(json.dumps({"time": statistics.median(times), "times": times, "peak": peak, "step_peak": peak - base,
                      "first_loss": losses[0], "losses": losses, "response_tokens": int(batch.response_mask.sum()),
                      "shape": list(batch.input_ids.shape)}))


def build_cache(args, folder: str) -> float:
    """The real build-teacher command over the same sequences; returns its wall time."""
    exe = Path(sys.executable).with_name("aligndistil")
    cmd = [str(exe) if exe.exists() else "aligndistil", "build-teacher", "--dpo", args.dpo,
           "--reverse-dpo", args.reverse_dpo, "--data", args.data, "--output", folder, "--top-k", str(args.top_k),
           "--max-examples", str(args.sequences), "--max-length", str(args.max_length),
           "--max-prompt-length", str(args.max_prompt_length), "--device", "cpu", "--dtype", "float32",
           "--batch-size", str(args.sequences)]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"build-teacher failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default=C.REFERENCE, help="student start (the reference model)")
    ap.add_argument("--dpo", default=C.DPO)
    ap.add_argument("--reverse-dpo", default=C.REVERSE_DPO)
    ap.add_argument("--wait", type=float, default=1200, help="seconds to wait for the DPO models")
    ap.add_argument("--data", default=C.DATA)
    ap.add_argument("--sequences", type=int, default=8, help="sequences per step (first N valid chosen)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-prompt-length", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=64, help="k of the cache variant")
    ap.add_argument("--chunk-tokens", type=int, default=1024, help="our loss chunk (distill --chunk-tokens)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median), after 1 warm-up step")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1: on a shared "
                    "2-core machine 2 OpenMP threads oversubscribe; 0 = torch default)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--worker-cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)

    args.dpo, args.reverse_dpo, note = C.resolve_teachers(args.dpo, args.reverse_dpo, args.student, args.wait)
    print(f"distill step: student={args.student} dpo={args.dpo} reverse_dpo={args.reverse_dpo} "
          f"sequences={args.sequences} (chosen) max_length={args.max_length} top-k={args.top_k} "
          f"chunk={args.chunk_tokens} steps={args.steps} (median, after 1 warm-up) AdamW lr={args.lr} clip=1.0 "
          f"beta={BETA} beta2={BETA2} (ours: alpha_max=20) fp32 cpu threads={torch.get_num_threads()}")
    print(note)
    print(C.machine_line())
    print("official style is evaluated on OUR positions (output at i-1 predicts response token i); the official "
          "code's off-by-one positions (method.md 8.7) would cost the same")
    common = [a for k in ("student", "dpo", "reverse_dpo", "data", "sequences", "max_length", "max_prompt_length",
                          "top_k", "chunk_tokens", "steps", "lr", "threads")
              for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = str(Path(tmp) / "cache")
        build_s = None
        if "cache" in args.variants:
            build_s = build_cache(args, cache_dir)
        for v in args.variants:
            results[v] = C.run_worker(__file__, common + ["--worker", v, "--worker-cache", cache_dir])
    report(args, results, build_s)


def report(args, results, build_s) -> None:
    ref_name = "official" if "official" in results else next(iter(results))
    ref = results[ref_name]
    print(f"batch: {args.sequences} sequences, padded shape {ref['shape']}, {ref['response_tokens']} response tokens")
    print(f"{'variant':<9} {'s/step':>8} {'resp tok/s':>11} {'x ' + ref_name[:4]:>7} {'peak MiB':>9} "
          f"{'x ' + ref_name[:4]:>7} {'step MiB':>9} {'loss(step 1)':>14}")
    for v, r in results.items():
        tps = r["response_tokens"] / r["time"]
        print(f"{v:<9} {r['time']:>8.3f} {tps:>11.1f} {ref['time'] / r['time']:>7.2f} {C.mib(r['peak']):>9.1f} "
              f"{r['peak'] / ref['peak']:>7.3f} {C.mib(r['step_peak']):>9.1f} {r['first_loss']:>14.8f}")
    for v, r in results.items():
        print(f"  {v} per-step seconds: " + " ".join(f"{t:.3f}" for t in r["times"]) +
              "; losses: " + " ".join(f"{x:.6f}" for x in r["losses"]))
    if build_s is not None:
        print(f"cache build (aligndistil build-teacher, top-{args.top_k}, {args.sequences} sequences, "
              f"separate process incl. model loading): {build_s:.1f} s, not part of the step")
    if "official" in results and "live" in results:
        a, b = results["official"]["first_loss"], results["live"]["first_loss"]
        diff = abs(a - b)
        print(f"check: |loss official - loss live| at step 1 = {diff:.2e} (relative {diff / max(abs(a), 1e-30):.2e})"
              f" -> {C.verdict(diff <= 1e-5)} at 1e-5 (official formula on our positions)")
    if "cache" in results:
        c = results["cache"]["time"]
        for live in ("live", "official"):
            if live in results:
                ratio = results[live]["time"] / c
                print(f"target cached step >= 2x the {live} three-model step's tokens/sec: {ratio:.2f}x -> "
                      f"{C.verdict(ratio >= 2.0)}")


if __name__ == "__main__":
    main()
