"""Batched sampling from a causal LM, and a resumable JSONL writer for the ``generate`` command.

Contract of every response returned here: a list of token ids that ends with exactly one EOS.
Generation is cut at the first EOS; a response that reached ``max_new_tokens`` without one gets
EOS appended. The official AlignDistil on-policy code does the same (``EOS appended if generation
was truncated``), and our off-policy preference data always ends with EOS too, so every response
the toolkit scores (log-probs, KL, teacher logits) has the same shape at its end.

Reproducibility: prompts are expanded to ``samples_per_prompt`` copies, sorted by length, and cut
into batches; batch ``k`` is sampled under the RNG seed ``derive_seed(seed, k)``. A batch's samples
therefore do not depend on how much randomness earlier batches consumed (e.g. how early they hit
EOS), but they do depend on ``batch_size`` and on the set of prompts (both decide which prompts
share batch ``k``). On CPU a fixed (seed, batch_size, prompts) gives identical output; on GPU
kernels may be non-deterministic. The global torch RNG state is restored after sampling.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from aligndistil_cli.batching import left_pad
from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import write_bytes_atomic, write_json_atomic

RowId = str | int


def derive_seed(seed: int, index: int) -> int:
    """A seed for batch/chunk ``index`` that is stable across runs and Python versions."""
    # Large odd multiplier so that (seed, index) pairs do not collide for small values.
    return (seed * 1_000_003 + index * 7_919 + 12_345) % (2**63 - 1)


class _SuppressBeyondVocab:
    """Logits processor setting -inf on ids >= ``vocab_size`` (rows of a padded LM head).

    Models whose heads are padded (e.g. to a multiple of 64) have output rows that no tokenizer
    id maps to; sampling one of them would produce an undecodable token.
    """

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # scores: [B, V_head]
        if scores.shape[-1] > self.vocab_size:
            scores = scores.clone()
            scores[:, self.vocab_size:] = -float("inf")
        return scores


def _logits_processors(vocab_size: int | None) -> Any:
    from transformers import LogitsProcessor, LogitsProcessorList

    if vocab_size is None:
        return LogitsProcessorList()
    # Subclass at call time so that importing this module does not import transformers.
    cls = type("SuppressBeyondVocab", (_SuppressBeyondVocab, LogitsProcessor), {})
    return LogitsProcessorList([cls(vocab_size)])


def _generation_config(*, max_new_tokens: int, temperature: float, top_p: float,
                       eos_token_id: int, pad_token_id: int) -> Any:
    """A fully explicit GenerationConfig.

    transformers 5 fills every field left ``None`` from the model folder's
    ``generation_config.json`` and then from global defaults (``top_k=50``!). We set the sampling
    fields explicitly and also swap the model's own config for a blank one during ``generate``
    (see :func:`_blank_generation_config`), so a folder's repetition penalty, top_k or
    min_new_tokens never changes our sampling. ``top_k=0`` disables top-k filtering.
    """
    from transformers import GenerationConfig

    fields: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, min_new_tokens=0, num_beams=1, num_return_sequences=1,
        repetition_penalty=1.0, use_cache=True, eos_token_id=eos_token_id,
        pad_token_id=pad_token_id, bos_token_id=None)
    if temperature == 0:
        # Greedy: sampling warpers are not built; setting top_k here would only log a warning.
        fields.update(do_sample=False, temperature=1.0, top_p=1.0)
    else:
        fields.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    return GenerationConfig(**fields)


@contextlib.contextmanager
def _blank_generation_config(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily replace ``model.generation_config`` and put the model in eval mode."""
    from transformers import GenerationConfig

    saved, was_training = getattr(model, "generation_config", None), model.training
    model.generation_config = GenerationConfig()
    model.eval()  # dropout must be off while sampling; restored below
    try:
        yield
    finally:
        model.generation_config = saved
        model.train(was_training)


def _finish_response(generated: list[int], eos_token_id: int) -> list[int]:
    """Cut at the first EOS (keeping it); append EOS when generation was truncated."""
    if eos_token_id in generated:
        return generated[: generated.index(eos_token_id) + 1]
    return generated + [eos_token_id]


def _check_sampling_args(prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                         temperature: float, top_p: float, samples_per_prompt: int,
                         batch_size: int) -> None:
    if max_new_tokens < 1 or samples_per_prompt < 1 or batch_size < 1:
        raise ValueError("max_new_tokens, samples_per_prompt and batch_size must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if any(len(p) == 0 for p in prompt_ids):
        raise AlignDistilError("a prompt has no tokens", "drop empty prompts from the input")


def _fork_rng(device: torch.device) -> contextlib.AbstractContextManager:
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


@torch.no_grad()
def sample_responses(model: torch.nn.Module, tokenizer: Any, prompt_ids: list[list[int]], *,
                     max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                     samples_per_prompt: int = 1, batch_size: int = 16, seed: int = 0,
                     vocab_size: int | None = None, eos_token_id: int | None = None
                     ) -> list[list[list[int]]]:
    """Sample responses with KV cache, left-padded batches and full-vocabulary sampling (no top-k).

    Args:
        prompt_ids: N prompts as token ids (chat template already applied).
        temperature: 0 means greedy decoding.
        vocab_size: shared vocabulary size; head rows at or beyond it are never sampled.
        eos_token_id: defaults to ``tokenizer.eos_token_id``.
    Returns:
        ``out[i][s]``: token ids of sample ``s`` of prompt ``i``, ending with exactly one EOS.
    """
    _check_sampling_args(prompt_ids, max_new_tokens, temperature, top_p, samples_per_prompt,
                         batch_size)
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    if eos is None:
        raise AlignDistilError("the tokenizer has no EOS token", "use a tokenizer with eos_token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = _generation_config(max_new_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p, eos_token_id=eos, pad_token_id=pad)
    processors = _logits_processors(vocab_size)
    device = next(model.parameters()).device
    # Longest first: the first batch shows an out-of-memory problem early; equal lengths
    # in a batch waste little padding. Stable sort keeps sample order within a prompt.
    items = [(i, s) for i in range(len(prompt_ids)) for s in range(samples_per_prompt)]
    items.sort(key=lambda item: -len(prompt_ids[item[0]]))
    out: list[list[list[int]]] = [[[] for _ in range(samples_per_prompt)] for _ in prompt_ids]
    with _blank_generation_config(model), _fork_rng(device):
        for k, start in enumerate(range(0, len(items), batch_size)):
            chunk = items[start: start + batch_size]
            ids, mask = left_pad([prompt_ids[i] for i, _ in chunk], pad)  # [B, P]
            torch.manual_seed(derive_seed(seed, k))
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  generation_config=config, logits_processor=processors)
            new_tokens = seqs[:, ids.shape[1]:].tolist()  # [B, <= max_new_tokens]
            for (i, s), generated in zip(chunk, new_tokens):
                out[i][s] = _finish_response(generated, eos)
    return out


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Response text without EOS or other special tokens."""
    return tokenizer.decode(list(ids), skip_special_tokens=True)


# --------------------------------------------------------------------------------------------
# Resumable JSONL output


def _read_complete_records(path: Path) -> list[dict]:
    """Records of every complete, parseable line; a torn last line (crash mid-write) is dropped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            break  # anything after a corrupt line is not trusted either
    return records


def _load_finished(path: Path, samples_per_prompt: int, generator_name: str
                   ) -> dict[RowId, list[dict]]:
    """Rows with all their samples present in ``path``; rewrites the file to exactly those.

    A crash can leave a half-written line or a row with only some of its samples; both are
    removed (atomically) so that the rerun appends them once, without duplicates. Records from
    other settings are an error rather than something to delete.
    """
    by_row: dict[RowId, list[dict]] = {}
    for rec in _read_complete_records(path):
        if rec.get("generator") != generator_name or not 0 <= rec["sample"] < samples_per_prompt:
            raise AlignDistilError(
                f"{path} holds records of generator {rec.get('generator')!r} / sample "
                f"{rec['sample']}, not of this run ({generator_name!r}, {samples_per_prompt} "
                "samples per prompt)",
                "rerun with the same settings to resume, or choose another output file")
        by_row.setdefault(rec["row_id"], []).append(rec)
    finished = {r: recs for r, recs in by_row.items()
                if sorted(x["sample"] for x in recs) == list(range(samples_per_prompt))}
    kept = _jsonl([rec for recs in finished.values() for rec in recs]).encode("utf-8")
    if path.exists() and path.read_bytes() != kept:
        write_bytes_atomic(path, kept)
    return finished


def _jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)


def _append(path: Path, records: Sequence[dict]) -> None:
    # One write per chunk, then fsync: after a crash the file holds whole chunks plus at most
    # one torn tail, which _load_finished repairs.
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(_jsonl(records))
        fh.flush()
        os.fsync(fh.fileno())


def generate_to_jsonl(model: torch.nn.Module, tokenizer: Any,
                      prompts: Sequence[tuple[RowId, str, list[int]]], out_path: str | os.PathLike,
                      *, generator_name: str, max_new_tokens: int, temperature: float = 1.0,
                      top_p: float = 1.0, samples_per_prompt: int = 1, batch_size: int = 16,
                      seed: int = 0, vocab_size: int | None = None,
                      eos_token_id: int | None = None, chunk_prompts: int = 64) -> int:
    """Sample responses for ``prompts`` and append them to ``out_path``, resumably.

    Writes one JSON object per sample: ``{"row_id", "prompt", "response", "sample",
    "generator"}`` (``response`` is decoded text without special tokens). Prompts are processed in
    fixed chunks of ``chunk_prompts`` (by position in ``prompts``), chunk ``c`` sampled with seed
    ``derive_seed(seed, c)``. On restart, rows already complete in ``out_path`` are skipped; a
    chunk with missing rows is regenerated whole with its own seed and only the missing rows are
    written, so on CPU a resumed file holds the same samples as an uninterrupted run (the caller
    must rerun with the same settings). Row ids must be unique str or int.

    Returns:
        Number of records appended by this call.
    """
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row_ids = [row_id for row_id, _, _ in prompts]
    if len(set(row_ids)) != len(row_ids):
        raise AlignDistilError("duplicate row ids in the prompts", "give every prompt a unique id")
    finished = _load_finished(path, samples_per_prompt, generator_name)
    written = 0
    for c, start in enumerate(range(0, len(prompts), chunk_prompts)):
        chunk = prompts[start: start + chunk_prompts]
        if all(row_id in finished for row_id, _, _ in chunk):
            continue
        responses = sample_responses(
            model, tokenizer, [ids for _, _, ids in chunk], max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, samples_per_prompt=samples_per_prompt,
            batch_size=batch_size, seed=derive_seed(seed, c), vocab_size=vocab_size,
            eos_token_id=eos_token_id)
        records = [
            {"row_id": row_id, "prompt": text, "response": decode(tokenizer, sample),
             "sample": s, "generator": generator_name}
            for (row_id, text, _), samples in zip(chunk, responses) if row_id not in finished
            for s, sample in enumerate(samples)
        ]
        _append(path, records)
        written += len(records)
    return written


def write_alpaca_eval(records: Sequence[dict], path: str | os.PathLike) -> None:
    """Write AlpacaEval's model-outputs file: a JSON list of {instruction, output, generator}.

    ``records`` are :func:`generate_to_jsonl` records; AlpacaEval expects one output per
    instruction, so pass records of a single sample index.
    """
    outputs = [{"instruction": r["prompt"], "output": r["response"], "generator": r["generator"]}
               for r in records]
    write_json_atomic(path, outputs)
