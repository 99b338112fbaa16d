"""Benchmark one DPO optimizer step on CPU: reference model live vs precomputed reference log-probs.

One step = ``DPOTask.micro_step`` (policy forward over chosen + rejected, and for ``live`` the frozen
reference forward) -> ``(loss_sum / n_pairs).backward()`` -> grad-norm clip 1.0 -> AdamW step ->
zero_grad, exactly what ``TrainLoop`` does for one micro-batch = one global batch.

Variants (each in a fresh subprocess, so peak RSS is honest):

- ``live``: the reference model is loaded and run every step (``aligndistil train-dpo`` default);
- ``precomputed``: the reference log-probs are given (``--precompute-reference`` style); they are
  computed once by a separate ``prep`` subprocess and handed over in a safetensors file, so the
  measured process never holds the reference model (the one-time precompute cost is printed too);
- ``live-bf16``: ``live`` with ``--mixed-precision bf16`` (bf16 autocast of both forwards, fp32 master
  weights, fp32 losses): what the sentiment recipes use on a CPU that has native bf16 (AVX512-BF16 or
  AMX, ``cpu_bf16_native`` in ``aligndistil env``); on a CPU without it, expect it to be slower.

Data: the first ``--pairs`` valid pairs of the real preference data, tokenized with
``--max-length`` / ``--max-prompt-length`` (default 64 / 32: every sequence is cut to at most 64
tokens, the batch is right-padded to 64). Model: SmolLM2-135M-Instruct, fp32, as policy and reference.

Memory columns: ``peak MiB`` = the process's peak resident set at the end (ru_maxrss, models +
optimizer state + activations); ``step MiB`` = its growth from just before the first step.

Usage: ``python benchmarks/bench_dpo_step.py [--pairs 8] [--max-length 64] [--steps 5]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as C  # noqa: E402

VARIANTS = ("live", "precomputed", "live-bf16")


def load_pairs(args, tokenizer):
    from aligndistil_cli.data import load_rows, prepare_pairs

    rows = load_rows(args.data, split="train")
    pairs, _ = prepare_pairs(rows, tokenizer, max_length=args.max_length,
                             max_prompt_length=args.max_prompt_length, on_invalid="skip")
    if len(pairs) < args.pairs:
        raise SystemExit(f"only {len(pairs)} valid pairs in {args.data}, need {args.pairs}")
    return pairs[: args.pairs]


def prep(args) -> None:
    """Reference log-probs [n, 2] of the pairs, as ``reference_logps_cache`` computes them."""
    import torch
    from safetensors.torch import save_file

    from aligndistil_cli.batching import make_batch, response_logps
    from aligndistil_cli.models import load_model, load_tokenizer

    tok = load_tokenizer(args.model)
    pairs = load_pairs(args, tok)
    t0 = time.perf_counter()
    ref = load_model(args.model, dtype="float32", device="cpu", train=False).requires_grad_(False)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        batch = make_batch([p.prompt_ids for p in pairs] * 2,
                           [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs], tok.pad_token_id)
        lp = response_logps(ref, batch, len(tok)).float().view(2, len(pairs)).T.contiguous()
    t_fwd = time.perf_counter() - t0
    save_file({"logps": lp}, args.worker_file)
    print(json.dumps({"load_s": t_load, "forward_s": t_fwd, "peak": C.peak_rss()}))


def worker(args) -> None:
    import torch
    from safetensors.torch import load_file

    from aligndistil_cli.models import load_model, load_tokenizer, shared_vocab_size
    from aligndistil_cli.stages.dpo import DPOConfig, DPOTask

    torch.manual_seed(0)
    tok = load_tokenizer(args.model)
    pairs = load_pairs(args, tok)
    policy = load_model(args.model, dtype="float32", device="cpu", train=True)
    reference, ref_logps = None, None
    if args.worker.startswith("live"):
        reference = load_model(args.model, dtype="float32", device="cpu", train=False).requires_grad_(False)
    else:
        ref_logps = load_file(args.worker_file)["logps"]
    vocab, _ = shared_vocab_size({"policy": policy}, tok)
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(model=args.model, output=out, data=args.data, batch_size=args.pairs,
                        micro_batch_size=args.pairs, lr=args.lr, device="cpu",
                        mixed_precision="bf16" if args.worker == "live-bf16" else "no")
    task = DPOTask(pairs, cfg, tok.pad_token_id, vocab, torch.device("cpu"), reference, ref_logps)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    indices = list(range(len(pairs)))
    batch = task.batch(indices)
    base = C.peak_rss()
    times, losses = [], []
    for step in range(args.steps + 1):  # step 0 is the warm-up
        t0 = time.perf_counter()
        out = task.micro_step(policy, indices)
        (out.loss_sum / len(indices)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(float(out.loss_sum) / len(indices))
        if step:
            times.append(dt)
    peak = C.peak_rss()
    print(json.dumps({"time": statistics.median(times), "times": times, "peak": peak, "step_peak": peak - base,
                      "first_loss": losses[0], "tokens": int(batch.attention_mask.sum()),
                      "response_tokens": int(batch.response_mask.sum()), "shape": list(batch.input_ids.shape)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=C.REFERENCE, help="policy and reference model folder")
    ap.add_argument("--data", default=C.DATA, help="preference data (prompt, chosen, rejected)")
    ap.add_argument("--pairs", type=int, default=8, help="preference pairs per step (batch = 2x sequences)")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per sequence (prompt + response)")
    ap.add_argument("--max-prompt-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median), after 1 warm-up step")
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1: on a shared "
                    "2-core machine 2 OpenMP threads oversubscribe and run 2-5x slower; 0 = torch default)")
    ap.add_argument("--worker", choices=VARIANTS + ("prep",), help=argparse.SUPPRESS)
    ap.add_argument("--worker-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    from aligndistil_cli.models import cpu_bf16_native

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker == "prep":
        return prep(args)
    if args.worker:
        return worker(args)

    print(f"DPO step: model={args.model} pairs={args.pairs} max_length={args.max_length} "
          f"max_prompt_length={args.max_prompt_length} steps={args.steps} (median, after 1 warm-up) "
          f"optimizer=AdamW lr={args.lr} clip=1.0 weights=fp32 device=cpu threads={torch.get_num_threads()}")
    print(C.machine_line())
    common = [a for k in ("model", "data", "pairs", "max_length", "max_prompt_length", "steps", "lr", "threads")
              for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    with tempfile.TemporaryDirectory() as tmp:
        ref_file = str(Path(tmp) / "ref_logps.safetensors")
        pre = C.run_worker(__file__, common + ["--worker", "prep", "--worker-file", ref_file])
        results = {v: C.run_worker(__file__, common + ["--worker", v, "--worker-file", ref_file])
                   for v in VARIANTS}
    r0 = results["live"]
    print(f"batch: {2 * args.pairs} sequences (chosen + rejected), padded shape {r0['shape']}, "
          f"{r0['tokens']} real tokens, {r0['response_tokens']} response tokens")
    print(f"{'variant':<12} {'s/step':>8} {'x live':>7} {'tok/s':>8} {'peak MiB':>9} {'x live':>7} "
          f"{'step MiB':>9} {'loss(step 1)':>13}")
    for v in VARIANTS:
        r = results[v]
        print(f"{v:<12} {r['time']:>8.3f} {r['time'] / r0['time']:>7.2f} {r['tokens'] / r['time']:>8.1f} "
              f"{C.mib(r['peak']):>9.1f} {r['peak'] / r0['peak']:>7.3f} {C.mib(r['step_peak']):>9.1f} "
              f"{r['first_loss']:>13.7f}")
    for v in VARIANTS:
        print(f"  {v} per-step seconds: " + " ".join(f"{t:.3f}" for t in results[v]["times"]))
    p = results["precomputed"]
    print(f"ratios: precomputed/live time {p['time'] / r0['time']:.3f} (speed-up {r0['time'] / p['time']:.2f}x), "
          f"peak RSS {p['peak'] / r0['peak']:.3f}")
    b = results["live-bf16"]
    print(f"ratios: live-bf16/live time {b['time'] / r0['time']:.3f} (speed-up {r0['time'] / b['time']:.2f}x) "
          f"on a CPU with cpu_bf16_native={cpu_bf16_native()}")
    print(f"one-time precompute (prep subprocess): reference load {pre['load_s']:.2f} s + forward over the "
          f"{2 * args.pairs} sequences {pre['forward_s']:.3f} s, peak {C.mib(pre['peak']):.1f} MiB")
    diff = abs(p["first_loss"] - r0["first_loss"])
    print(f"check: |loss live - loss precomputed| at step 1 = {diff:.2e} "
          f"({C.verdict(diff <= 1e-5)} at 1e-5; same weights, same reference values)")
    print(f"target (informational): precomputed step faster than live: "
          f"{C.verdict(p['time'] < r0['time'])}; lower peak RSS: {C.verdict(p['peak'] < r0['peak'])}")


if __name__ == "__main__":
    main()
