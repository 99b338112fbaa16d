"""Benchmark the teacher cache: size and kept teacher mass per top-k, and build-teacher throughput.

(a) Size / quality. The first ``--sequences`` chosen sequences of the real data are scored once
    with the real ``TeacherScorer`` (DPO and reverse-DPO models, the aligndistil teacher, top-k =
    max(--ks)); for every k the records are cut to their first k entries (``topk_rows`` returns the
    top-k sorted descending, so this is exactly the top-k a build with that k stores) and written
    with the real ``CacheWriter`` (``write_shard`` + ``finalize``, ``--cache-dtype``) into a temporary
    folder. ``bytes/token`` = all shard files' bytes / response tokens (ids, offsets, alpha, tvd
    and reward included; manifest excluded). ``kept mass`` = sum of the stored top-k probabilities
    per response token, read back from the shards (``cache_summary``): mean, 5th percentile,
    median. The dense row is MEASURED: a real dense cache (``--top-k 0``) of the first
    ``--dense-sequences`` sequences written by the same writer; the analytic number 2 * V bytes
    (16-bit log-probs) is printed next to it.

(b) Throughput. Response tokens per second of the build-teacher work (``score_shard`` with
    ``TeacherScorer``: one decoder forward of each model, head + teacher + top-k per chunk of
    positions, then ``CacheWriter.write_shard``) against a bare forward pass of the two models over
    the same length-sorted batches (``model(input_ids, attention_mask)``, full logits, no teacher
    math). Each in a fresh subprocess; median of ``--reps`` full passes after a one-batch warm-up.

Usage: ``python benchmarks/bench_teacher_cache.py [--sequences 64] [--ks 16 64 256] [--reps 2]``
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


def setup(args):
    """Tokenizer, the selected sequences, both teacher models, the shared vocabulary and spec."""
    import torch

    from aligndistil_cli.models import load_model, load_tokenizer, shared_vocab_size
    from aligndistil_cli.stages.teacher import BuildTeacherConfig, select_sequences

    cfg = BuildTeacherConfig(dpo=args.dpo, reverse_dpo=args.reverse_dpo, data=args.data, output="unused",
                             max_examples=args.sequences, max_length=args.max_length,
                             max_prompt_length=args.max_prompt_length, top_k=64, cache_dtype=args.cache_dtype,
                             chunk_tokens=args.chunk_tokens, batch_size=args.batch_size, shard_size=args.shard_size,
                             device="cpu", dtype="float32")
    tok = load_tokenizer(args.dpo)
    seqs, data_fp = select_sequences(cfg, tok)
    dpo = load_model(args.dpo, dtype="float32", device="cpu").requires_grad_(False)
    neg = load_model(args.reverse_dpo, dtype="float32", device="cpu").requires_grad_(False)
    vocab, _ = shared_vocab_size({"dpo": dpo, "negative": neg}, tok)
    spec = cfg.teacher_spec()
    meta = {"teacher": {"variant": "aligndistil", **spec.to_dict()}, "tokenizer_fingerprint": "bench",
            "model_fingerprints": {"dpo": args.dpo, "negative": args.reverse_dpo}, "data_fingerprint": data_fp,
            "selection": {"responses": "chosen", "sequences": len(seqs)}}
    return cfg, tok, seqs, dpo, neg, vocab, spec, meta, torch.device("cpu")


def write_cache(folder: Path, records: list, meta: dict, top_k: int, vocab: int, cache_dtype: str,
                shard_size: int) -> dict:
    """Write ``records`` as a complete cache with the real writer; returns the finalize summary."""
    from aligndistil_cli.stages.teacher import cache_summary
    from aligndistil_cli.teacher.cache import CacheWriter

    writer = CacheWriter(folder, meta=meta, top_k=top_k, vocab_size=vocab, cache_dtype=cache_dtype,
                         shard_size=shard_size)
    plan = writer.shard_plan(len(records))
    for s in writer.my_shards():
        writer.write_shard(s, [records[i] for i in plan[s]])
    infos = writer.collect_shard_infos(len(plan))
    summary = cache_summary(folder, infos, top_k)
    writer.finalize(infos, summary)
    summary["shard_bytes"] = sum(i["bytes"] for i in infos)
    return summary


def quality_worker(args) -> None:
    import dataclasses

    from aligndistil_cli.stages.teacher import TeacherScorer, score_shard

    cfg, tok, seqs, dpo, neg, vocab, spec, meta, dev = setup(args)
    kmax = max(args.ks)
    scorer = TeacherScorer(dpo, neg, spec, vocab, kmax, args.chunk_tokens, tok.pad_token_id, dev)
    records = score_shard(scorer, seqs, args.batch_size)
    out = {"vocab": vocab, "sequences": len(seqs), "tokens": sum(r.n_response for r in records), "ks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for k in sorted(args.ks):
            cut = [dataclasses.replace(r, topk_ids=r.topk_ids[:, :k].contiguous(),
                                       topk_logprobs=r.topk_logprobs[:, :k].contiguous()) for r in records]
            s = write_cache(Path(tmp) / f"k{k}", cut, meta, k, vocab, args.cache_dtype, args.shard_size)
            out["ks"][k] = {"bytes": s["shard_bytes"], "tokens": s["tokens"], "mass_mean": s["kept_mass_mean"],
                            "mass_p5": s["kept_mass_p5"], "mass_median": s["kept_mass_median"]}
        dense_seqs = seqs[: args.dense_sequences]
        dscorer = TeacherScorer(dpo, neg, spec, vocab, 0, args.chunk_tokens, tok.pad_token_id, dev)
        drecs = score_shard(dscorer, dense_seqs, args.batch_size)
        s = write_cache(Path(tmp) / "dense", drecs, meta, 0, vocab, args.cache_dtype, args.shard_size)
        out["dense"] = {"bytes": s["shard_bytes"], "tokens": s["tokens"], "sequences": len(dense_seqs)}
    out["alpha_mean"] = float(sum(float(r.alpha.sum()) for r in records) / out["tokens"])
    out["tvd_mean"] = float(sum(float(r.tvd.sum()) for r in records) / out["tokens"])
    print(json.dumps(out))


def batches(seqs: list, batch_size: int, shard_size: int) -> list[list]:
    """The batches ``score_shard`` forms: per shard, sequences sorted by length (longest first)."""
    out = []
    for a in range(0, len(seqs), shard_size):
        shard = seqs[a: a + shard_size]
        order = sorted(range(len(shard)), key=lambda i: -(len(shard[i].prompt_ids) + len(shard[i].response_ids)))
        out += [[shard[i] for i in order[b: b + batch_size]] for b in range(0, len(order), batch_size)]
    return out


def speed_worker(args) -> None:
    import torch

    from aligndistil_cli.batching import make_batch
    from aligndistil_cli.stages.teacher import TeacherScorer, score_shard

    cfg, tok, seqs, dpo, neg, vocab, spec, meta, dev = setup(args)
    n_tokens = sum(len(s.response_ids) for s in seqs)
    if args.worker == "build":
        from aligndistil_cli.teacher.cache import CacheWriter

        scorer = TeacherScorer(dpo, neg, spec, vocab, args.top_k, args.chunk_tokens, tok.pad_token_id, dev)
        tmp = tempfile.TemporaryDirectory()

        def one_pass(subset, rep):
            writer = CacheWriter(Path(tmp.name) / f"rep{rep}", meta=meta, top_k=args.top_k, vocab_size=vocab,
                                 cache_dtype=args.cache_dtype, shard_size=args.shard_size)
            plan = writer.shard_plan(len(subset))
            for s in writer.my_shards():
                writer.write_shard(s, score_shard(scorer, [subset[i] for i in plan[s]], args.batch_size))
    else:
        groups = batches(seqs, args.batch_size, args.shard_size)

        @torch.no_grad()
        def one_pass(subset, rep):
            for group in (groups if subset is seqs else batches(subset, args.batch_size, args.shard_size)):
                b = make_batch([s.prompt_ids for s in group], [s.response_ids for s in group], tok.pad_token_id)
                for m in (dpo, neg):
                    m(input_ids=b.input_ids, attention_mask=b.attention_mask).logits

    base = C.peak_rss()
    one_pass(seqs[: args.batch_size], -1)  # warm-up: one batch
    times = []
    for rep in range(args.reps):
        t0 = time.perf_counter()
        one_pass(seqs, rep)
        times.append(time.perf_counter() - t0)
    peak = C.peak_rss()
    print(json.dumps({"time": statistics.median(times), "times": times, "tokens": n_tokens,
                      "peak": peak, "extra_peak": peak - base}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dpo", default=C.DPO)
    ap.add_argument("--reverse-dpo", default=C.REVERSE_DPO)
    ap.add_argument("--reference", default=C.REFERENCE, help="fallback teacher when the DPO models are missing")
    ap.add_argument("--wait", type=float, default=1200, help="seconds to wait for the DPO models")
    ap.add_argument("--data", default=C.DATA)
    ap.add_argument("--sequences", type=int, default=64, help="first N valid chosen sequences")
    ap.add_argument("--dense-sequences", type=int, default=4, help="sequences in the measured dense cache")
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--top-k", type=int, default=64, help="k of the throughput measurement (b)")
    ap.add_argument("--cache-dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--max-prompt-length", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--chunk-tokens", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=2, help="timed full passes (median), after a one-batch warm-up")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1: on a shared "
                    "2-core machine 2 OpenMP threads oversubscribe; 0 = torch default)")
    ap.add_argument("--skip-quality", action="store_true", help="only part (b)")
    ap.add_argument("--skip-speed", action="store_true", help="only part (a)")
    ap.add_argument("--worker", choices=("quality", "build", "bare"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker == "quality":
        return quality_worker(args)
    if args.worker:
        return speed_worker(args)

    args.dpo, args.reverse_dpo, note = C.resolve_teachers(args.dpo, args.reverse_dpo, args.reference, args.wait)
    print(f"teacher cache: dpo={args.dpo} reverse_dpo={args.reverse_dpo} data={args.data} "
          f"sequences={args.sequences} (chosen) ks={args.ks} cache_dtype={args.cache_dtype} "
          f"batch={args.batch_size} chunk={args.chunk_tokens} reps={args.reps} (median) fp32 cpu "
          f"threads={torch.get_num_threads()}")
    print(note)
    print(C.machine_line())
    common = [a for k in ("dpo", "reverse_dpo", "data", "sequences", "dense_sequences", "top_k", "cache_dtype",
                          "max_length", "max_prompt_length", "batch_size", "shard_size", "chunk_tokens", "reps",
                          "threads") for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    common += ["--ks"] + [str(k) for k in args.ks]
    if not args.skip_quality:
        q = C.run_worker(__file__, common + ["--worker", "quality"])
        report_quality(args, q)
    if not args.skip_speed:
        r = {w: C.run_worker(__file__, common + ["--worker", w]) for w in ("bare", "build")}
        report_speed(args, r)


def report_quality(args, q) -> None:
    V = q["vocab"]
    print(f"\n(a) size and kept teacher mass: {q['sequences']} sequences, {q['tokens']} response tokens, V={V}, "
          f"mean alpha {q['alpha_mean']:.4f}, mean TVD {q['tvd_mean']:.4f}")
    print(f"{'cache':<8} {'bytes/token':>12} {'x dense':>8} {'mass mean':>10} {'mass p5':>9} {'mass median':>12}")
    d = q["dense"]
    dense_bpt = d["bytes"] / d["tokens"]
    for k in sorted(q["ks"], key=int):
        r = q["ks"][k]
        bpt = r["bytes"] / r["tokens"]
        print(f"{'top-' + str(k):<8} {bpt:>12.1f} {bpt / dense_bpt:>8.4f} {r['mass_mean']:>10.5f} "
              f"{r['mass_p5']:>9.5f} {r['mass_median']:>12.5f}")
    print(f"{'dense':<8} {dense_bpt:>12.1f} {1.0:>8.4f} {1.0:>10.5f} {1.0:>9.5f} {1.0:>12.5f}   "
          f"(measured: a real dense {args.cache_dtype} cache of {d['sequences']} sequences / {d['tokens']} "
          f"tokens; analytic 2*V = {2 * V:,} bytes/token for the log-probs alone)")
    r = q["ks"].get("64") or q["ks"].get(64)
    if r:
        bpt = r["bytes"] / r["tokens"]
        print(f"target k=64 at most 400 bytes/token: {bpt:.1f} -> {C.verdict(bpt <= 400)}")
        print(f"target k=64 median kept mass >= 0.99: {r['mass_median']:.5f} -> {C.verdict(r['mass_median'] >= 0.99)}")


def report_speed(args, r) -> None:
    bare, build = r["bare"], r["build"]
    print(f"\n(b) throughput over the same {args.sequences} sequences ({bare['tokens']} response tokens), "
          f"batches of {args.batch_size}, length-sorted")
    print(f"{'method':<34} {'s/pass':>8} {'resp tok/s':>11} {'x bare':>7} {'peak MiB':>9} {'extra MiB':>10}")
    for name, x in (("bare forward of 2 models (logits)", bare),
                    (f"build-teacher top-{args.top_k} + shard write", build)):
        print(f"{name:<34} {x['time']:>8.2f} {x['tokens'] / x['time']:>11.1f} {bare['time'] / x['time']:>7.2f} "
              f"{C.mib(x['peak']):>9.1f} {C.mib(x['extra_peak']):>10.1f}")
    for name, x in (("bare", bare), ("build", build)):
        print(f"  {name} per-pass seconds: " + " ".join(f"{t:.2f}" for t in x["times"]))
    ratio = bare["time"] / build["time"]
    print(f"ratio build/bare throughput: {ratio:.3f}x")
    print(f"target build-teacher throughput >= 0.9x bare forward: {ratio:.3f}x -> {C.verdict(ratio >= 0.9)}")


if __name__ == "__main__":
    main()
