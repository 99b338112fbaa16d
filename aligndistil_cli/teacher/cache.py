"""Teacher-distribution cache: on-disk format, resumable multi-rank writer, lazy reader, verifier.

Format ``aligndistil-teacher-cache``, version 1
===============================================

A cache is one folder::

    manifest.json                 written last, atomically: its presence means "complete"
    shard-00000.safetensors       sequences [0, shard_size)
    shard-00001.safetensors       sequences [shard_size, 2 * shard_size)
    ...

Every shard holds exactly these tensors (``n_seq`` sequences, ``n`` response tokens in all):

==================  =========  ==================  =====================================================
name                dtype      shape               meaning
==================  =========  ==================  =====================================================
``input_ids``       int32      [sum of L]          the sequences' token ids (prompt + response), concatenated
``seq_offsets``     int64      [n_seq + 1]         sequence i is ``input_ids[seq_offsets[i]:seq_offsets[i+1]]``
``response_start``  int64      [n_seq]             index of the first response token inside its sequence
``example_ids``     int64      [n_seq]             dataset row index each sequence came from
``topk_ids``        int32      [n, k]              top-k token ids of the teacher (top-k caches)
``topk_logprobs``   cache      [n, k]              their teacher log-probabilities (top-k caches)
``logprobs``        cache      [n, V]              full teacher log-probabilities (dense caches, top_k 0)
``alpha``           float32    [n]                 adaptive token weight alpha_t
``tvd``             float32    [n]                 total variation distance behind alpha_t, in [0, 1]
``reward``          float32    [n]                 token-level reward
==================  =========  ==================  =====================================================

Rows: the response tokens of the shard's sequences, in sequence order. Response token ``j`` of a
sequence (``j = 0 .. L - response_start - 1``, the final EOS included) is one row; that row holds
the teacher distribution *predicting* token ``j``, i.e. computed from the logits at position
``response_start + j - 1``. Hence ``response_start >= 1`` and a sequence has
``L - response_start >= 1`` rows. "cache" dtype is float16, bfloat16 or float32 (the user's
choice); log-probabilities below the dtype's smallest finite value are clamped to it (the
probability is 0 either way) so that every stored value is finite.

The manifest records the format name and version, the teacher configuration (``teacher``: variant
and every hyper-parameter), ``top_k`` (0 = dense), ``cache_dtype``, ``vocab_size``, the tokenizer
fingerprint, the model fingerprints, the data fingerprint and selection, ``counts`` (sequences,
response tokens), ``shard_size`` and, per shard, ``{index, file, sha256, bytes, first_sequence,
sequences, tokens}``, plus a free-form ``summary``.

Resume and multi-rank
---------------------
After each shard is renamed into place, a sidecar ``shard-NNNNN.safetensors.progress.json``
(written atomically) records its sha256 and a key over the whole configuration. A re-run skips a
shard whose sidecar key matches and whose bytes hash to the recorded sha256
(:meth:`CacheWriter.shard_done`); any other shard is recomputed. Rank ``r`` of ``world_size``
writes the shards ``s`` with ``s % world_size == r``; rank 0 gathers every shard's info from the
sidecars (:func:`collect_shard_infos`) and calls :meth:`CacheWriter.finalize`, which writes the
manifest and then removes the sidecars, stale temporaries and leftover shard files of an earlier,
larger partial build. A complete cache therefore holds only ``manifest.json`` and its shards.
Shard bytes depend only on the tensors (the safetensors header is deterministic: one metadata
key, tensors ordered by the library), so a resumed or multi-rank build equals an uninterrupted one
byte for byte. Only safetensors is used: nothing here ever unpickles.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import (
    atomic_path,
    clean_stale_temporaries,
    sha256_file,
    sha256_text,
    write_json_atomic,
)

FORMAT_NAME = "aligndistil-teacher-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIDECAR_SUFFIX = ".progress.json"
CACHE_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
}
# safetensors dtype tags as reported by ``get_slice(...).get_dtype()``.
_ST_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
META_KEYS = ("teacher", "tokenizer_fingerprint", "model_fingerprints", "data_fingerprint", "selection")
TOPK_TENSORS = ("topk_ids", "topk_logprobs")
COMMON_TENSORS = ("input_ids", "seq_offsets", "response_start", "example_ids", "alpha", "tvd", "reward")
TOKEN_FLOATS = ("alpha", "tvd", "reward")
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")
_REBUILD = "rebuild the teacher cache with --overwrite"


def shard_name(index: int) -> str:
    """File name of shard ``index`` (``shard-00003.safetensors``)."""
    return f"shard-{index:05d}.safetensors"


def _sidecar(folder: Path, index: int) -> Path:
    return folder / (shard_name(index) + SIDECAR_SUFFIX)


@dataclass
class SequenceRecord:
    """One sequence's cached teacher signal.

    ``n = len(input_ids) - response_start`` rows, one per response token (final EOS included);
    row ``j`` predicts response token ``j``. Top-k records set ``topk_ids``/``topk_logprobs``
    ([n, k]); dense records set ``logprobs`` ([n, V]). Ids read back from a cache are int64.
    """

    example_id: int
    input_ids: torch.Tensor          # [L]
    response_start: int
    alpha: torch.Tensor              # [n]
    tvd: torch.Tensor                # [n]
    reward: torch.Tensor             # [n]
    topk_ids: torch.Tensor | None = None       # [n, k]
    topk_logprobs: torch.Tensor | None = None  # [n, k]
    logprobs: torch.Tensor | None = None       # [n, V]

    @property
    def n_response(self) -> int:
        """Number of response tokens (= rows)."""
        return int(self.input_ids.numel()) - int(self.response_start)


# --------------------------------------------------------------------------------------------
# identity of a cache: what must match for a cache (or a partial build) to be reused
# --------------------------------------------------------------------------------------------

def _canonical(obj: Any) -> Any:
    """JSON round trip, so that tuples/paths compare equal to what a manifest reads back."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def cache_identity(meta: dict, *, top_k: int, vocab_size: int, cache_dtype: str) -> dict:
    """The manifest's header: every field that decides the cached values."""
    missing = [k for k in META_KEYS if k not in meta]
    unknown = sorted(set(meta) - set(META_KEYS))
    if missing or unknown:
        raise ValueError(f"meta must hold exactly {META_KEYS}; missing {missing}, unknown {unknown}")
    identity = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "teacher": meta["teacher"], "top_k": int(top_k), "cache_dtype": cache_dtype,
                "vocab_size": int(vocab_size)}
    identity.update({k: meta[k] for k in META_KEYS[1:]})
    return _canonical(identity)


def _diff(path: str, have: Any, want: Any, out: list[str]) -> None:
    """Collect ``path: cache has X, requested Y`` for every differing leaf."""
    if isinstance(have, dict) and isinstance(want, dict):
        for key in sorted(set(have) | set(want), key=str):
            _diff(f"{path}.{key}", have.get(key, "<absent>"), want.get(key, "<absent>"), out)
    elif have != want:
        out.append(f"{path}: cache has {_short(have)}, requested {_short(want)}")


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AlignDistilError(f"{path} cannot be read as JSON ({type(exc).__name__})", _REBUILD) from exc
    if not isinstance(data, dict):
        raise AlignDistilError(f"{path} does not hold a JSON object", _REBUILD)
    return data


def check_compatible(folder: str | os.PathLike, meta: dict, *, top_k: int | None = None,
                     vocab_size: int | None = None, cache_dtype: str | None = None) -> None:
    """Refuse ``folder`` if it holds a complete cache built with a different configuration.

    Compares the format, ``meta`` (teacher config, fingerprints, selection) and whichever of
    ``top_k``/``vocab_size``/``cache_dtype`` are given. A folder without a manifest passes
    (partial shards of another configuration are recomputed by the writer, never reused).
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return
    manifest = _read_json(path)
    want = cache_identity(meta, top_k=top_k or 0, vocab_size=vocab_size or 0,
                          cache_dtype=cache_dtype or "")
    skip = {k for k, v in (("top_k", top_k), ("vocab_size", vocab_size),
                           ("cache_dtype", cache_dtype)) if v is None}
    differences: list[str] = []
    for key, value in want.items():
        if key not in skip:
            _diff(key, manifest.get(key, "<absent>"), value, differences)
    if differences:
        more = f" (+{len(differences) - 3} more)" if len(differences) > 3 else ""
        raise AlignDistilError(
            f"{folder} already holds a teacher cache built differently: "
            f"{'; '.join(differences[:3])}{more}",
            "pass --overwrite to replace it, or choose another output folder",
        )


def is_complete(folder: str | os.PathLike, meta: dict, *, top_k: int | None = None,
                vocab_size: int | None = None, cache_dtype: str | None = None) -> bool:
    """True if ``folder`` holds a complete cache of this configuration with all shards present.

    Raises like :func:`check_compatible` for a cache of another configuration. Shards are
    checked for presence and size only; :func:`verify_teacher` re-hashes them.
    """
    folder = Path(folder)
    check_compatible(folder, meta, top_k=top_k, vocab_size=vocab_size, cache_dtype=cache_dtype)
    if not (folder / MANIFEST).is_file():
        return False
    shards = _read_json(folder / MANIFEST).get("shards", [])
    return all((folder / s["file"]).is_file() and (folder / s["file"]).stat().st_size == s["bytes"]
               for s in shards)


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------

class CacheWriter:
    """Writes one cache folder shard by shard; resumable and shareable between ranks.

    Args:
        folder: the cache folder (created if needed).
        meta: ``teacher`` (dict), ``tokenizer_fingerprint``, ``model_fingerprints``,
            ``data_fingerprint``, ``selection``: exactly these keys, JSON-serialisable.
        top_k: distributions kept per row; 0 stores the dense ``logprobs``.
        vocab_size: the teacher's output dimension V.
        cache_dtype: float16, bfloat16 or float32 for the stored log-probabilities.
        shard_size: sequences per shard.
        rank, world_size: this process writes the shards ``s % world_size == rank``.
    """

    def __init__(self, folder: str | os.PathLike, *, meta: dict, top_k: int, vocab_size: int,
                 cache_dtype: str, shard_size: int = 256, rank: int = 0, world_size: int = 1) -> None:
        if cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {sorted(CACHE_DTYPES)}, got {cache_dtype!r}")
        if not 0 <= top_k <= vocab_size or vocab_size < 1:
            raise ValueError(f"need 0 <= top_k <= vocab_size, got top_k={top_k}, vocab_size={vocab_size}")
        if shard_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad shard_size={shard_size} / rank={rank} / world_size={world_size}")
        self.folder = Path(folder)
        self.top_k, self.vocab_size, self.cache_dtype = int(top_k), int(vocab_size), cache_dtype
        self.shard_size, self.rank, self.world_size = int(shard_size), int(rank), int(world_size)
        self.identity = cache_identity(meta, top_k=top_k, vocab_size=vocab_size, cache_dtype=cache_dtype)
        # The resume key also covers shard_size: the same shard index means other sequences.
        self.key = sha256_text(json.dumps([self.identity, self.shard_size], sort_keys=True))
        self.plan: list[range] | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        if world_size == 1:
            # With several ranks another process may be writing a temporary right now;
            # finalize cleans up once all ranks are done.
            clean_stale_temporaries(self.folder)

    def is_complete(self) -> bool:
        """:func:`is_complete` for this writer's configuration (raises if another one is there)."""
        meta = {k: self.identity[k] for k in META_KEYS}
        return is_complete(self.folder, meta, top_k=self.top_k, vocab_size=self.vocab_size,
                           cache_dtype=self.cache_dtype)

    def shard_plan(self, n_sequences: int) -> list[range]:
        """Shard ``s`` covers sequences ``[s * shard_size, min((s + 1) * shard_size, n))``."""
        if n_sequences < 1:
            raise AlignDistilError("no sequences to cache", "check the data selection")
        self.plan = [range(a, min(a + self.shard_size, n_sequences))
                     for a in range(0, n_sequences, self.shard_size)]
        return self.plan

    def my_shards(self) -> list[int]:
        """Indices of the planned shards this rank writes."""
        if self.plan is None:
            raise RuntimeError("call shard_plan() first")
        return [s for s in range(len(self.plan)) if s % self.world_size == self.rank]

    def shard_done(self, shard_index: int) -> bool:
        """True if the shard was completed by a build of this configuration and still verifies."""
        path = self.folder / shard_name(shard_index)
        sidecar = _sidecar(self.folder, shard_index)
        if not (sidecar.is_file() and path.is_file()):
            return False
        try:
            info = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if info.get("key") != self.key or info.get("bytes") != path.stat().st_size:
            return False
        return sha256_file(path) == info.get("sha256")

    def write_shard(self, shard_index: int, records: list[SequenceRecord]) -> dict:
        """Write shard ``shard_index`` atomically, then its sidecar; return its info.

        ``records`` are the shard's planned sequences in order. Raises AlignDistilError naming
        the example if a record holds a non-finite value.
        """
        if self.plan is None or not 0 <= shard_index < len(self.plan):
            raise ValueError(f"shard {shard_index} is not in the plan (call shard_plan() first)")
        if shard_index % self.world_size != self.rank:
            raise ValueError(f"rank {self.rank}/{self.world_size} does not own shard {shard_index}")
        if len(records) != len(self.plan[shard_index]):
            raise ValueError(f"shard {shard_index} needs {len(self.plan[shard_index])} records, "
                             f"got {len(records)}")
        tensors = pack_records(records, top_k=self.top_k, vocab_size=self.vocab_size,
                               dtype=CACHE_DTYPES[self.cache_dtype])
        path = self.folder / shard_name(shard_index)
        sha, size = _save_shard(tensors, path)
        info = {"index": shard_index, "file": path.name, "sha256": sha, "bytes": size,
                "first_sequence": self.plan[shard_index].start, "sequences": len(records),
                "tokens": int(tensors["alpha"].numel())}
        write_json_atomic(_sidecar(self.folder, shard_index), {"key": self.key, **info})
        return info

    def collect_shard_infos(self, n_shards: int) -> list[dict]:
        """:func:`collect_shard_infos` restricted to sidecars of this configuration."""
        return collect_shard_infos(self.folder, n_shards, key=self.key)

    def finalize(self, shard_infos: list[dict], summary: dict | None = None) -> Path:
        """Check coverage, write ``manifest.json`` (last, atomically), then tidy the folder."""
        infos = sorted(shard_infos, key=lambda s: s["index"])
        _check_coverage(self.folder, infos, self.shard_size, self.plan)
        manifest = dict(self.identity)
        manifest.update({
            "counts": {"sequences": sum(s["sequences"] for s in infos),
                       "response_tokens": sum(s["tokens"] for s in infos)},
            "shard_size": self.shard_size,
            "shards": [{k: s[k] for k in ("index", "file", "sha256", "bytes", "first_sequence",
                                          "sequences", "tokens")} for s in infos],
            "summary": _canonical(summary or {}),
        })
        path = self.folder / MANIFEST
        write_json_atomic(path, manifest)
        _tidy(self.folder, {s["file"] for s in infos})
        return path


def _check_coverage(folder: Path, infos: list[dict], shard_size: int, plan: list[range] | None) -> None:
    """Every planned sequence is in exactly one present shard (bugs, not user errors: ValueError)."""
    if [s["index"] for s in infos] != list(range(len(infos))) or not infos:
        raise ValueError(f"shard infos must cover shards 0..n-1, got {[s['index'] for s in infos]}")
    if plan is not None and len(infos) != len(plan):
        raise ValueError(f"plan has {len(plan)} shards, got infos for {len(infos)}")
    for s in infos:
        full = s["index"] < len(infos) - 1
        if s["first_sequence"] != s["index"] * shard_size or \
                (full and s["sequences"] != shard_size) or not 1 <= s["sequences"] <= shard_size:
            raise ValueError(f"shard {s['index']} does not cover its planned sequences: {s}")
        path = folder / s["file"]
        if not path.is_file() or path.stat().st_size != s["bytes"]:
            raise AlignDistilError(f"{path} is missing or has changed since it was written",
                                   "re-run the build: the shard will be recomputed")


def _tidy(folder: Path, keep: set[str]) -> None:
    """Remove sidecars, temporaries and shard files that the manifest does not list."""
    clean_stale_temporaries(folder)
    for child in folder.iterdir():
        if child.name.endswith(SIDECAR_SUFFIX) or (_SHARD_RE.match(child.name) and child.name not in keep):
            child.unlink(missing_ok=True)


def collect_shard_infos(folder: str | os.PathLike, n_shards: int, key: str | None = None) -> list[dict]:
    """Shard infos of shards ``0 .. n_shards-1`` read from their sidecars (rank 0 gathers this way).

    Raises AlignDistilError naming the first shard that has no (matching) sidecar.
    """
    folder = Path(folder)
    infos = []
    for index in range(n_shards):
        path = _sidecar(folder, index)
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = None
        if info is None or (key is not None and info.get("key") != key):
            raise AlignDistilError(f"shard {shard_name(index)} in {folder} has not been completed",
                                   "re-run the build (all ranks) to finish the missing shards")
        info.pop("key", None)
        infos.append(info)
    return infos


def _check_record(rec: SequenceRecord, top_k: int, vocab_size: int) -> int:
    """Shape checks of one record (programming errors); returns its row count."""
    length, start = int(rec.input_ids.numel()), int(rec.response_start)
    n = length - start
    if rec.input_ids.dim() != 1 or not 1 <= start < length:
        raise ValueError(f"example {rec.example_id}: need 1 <= response_start < len(input_ids), "
                         f"got {start} and {length}")
    shapes = {name: [n] for name in TOKEN_FLOATS}
    if top_k:
        shapes.update(topk_ids=[n, top_k], topk_logprobs=[n, top_k])
    else:
        shapes["logprobs"] = [n, vocab_size]
    for name, shape in shapes.items():
        value = getattr(rec, name)
        if value is None or list(value.shape) != shape:
            got = None if value is None else list(value.shape)
            raise ValueError(f"example {rec.example_id}: {name} must have shape {shape}, got {got}")
    for name in ("input_ids", "topk_ids") if top_k else ("input_ids",):
        ids = getattr(rec, name)
        if ids.is_floating_point() or (ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size)):
            raise ValueError(f"example {rec.example_id}: {name} must be integer ids in [0, {vocab_size})")
    return n


def _check_finite(rec: SequenceRecord, top_k: int) -> None:
    names = TOKEN_FLOATS + (("topk_logprobs",) if top_k else ("logprobs",))
    bad = [name for name in names if not torch.isfinite(getattr(rec, name)).all()]
    if bad:
        raise AlignDistilError(
            f"the teacher produced non-finite values for example {rec.example_id} ({', '.join(bad)})",
            "check the teacher models and the --cache-dtype; drop or fix this example and re-run",
        )


def pack_records(records: list[SequenceRecord], *, top_k: int, vocab_size: int,
                 dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Concatenate records into the tensors of one shard (see the module docstring)."""
    lengths, starts = [], []
    for rec in records:
        _check_record(rec, top_k, vocab_size)
        _check_finite(rec, top_k)
        lengths.append(int(rec.input_ids.numel()))
        starts.append(int(rec.response_start))
    offsets = torch.zeros(len(records) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    tensors = {
        "input_ids": torch.cat([r.input_ids.reshape(-1).to(torch.int32) for r in records]),
        "seq_offsets": offsets,
        "response_start": torch.tensor(starts, dtype=torch.int64),
        "example_ids": torch.tensor([int(r.example_id) for r in records], dtype=torch.int64),
    }
    for name in TOKEN_FLOATS:
        tensors[name] = torch.cat([getattr(r, name).detach().to(torch.float32).cpu() for r in records])
    floor = torch.finfo(dtype).min
    lp_name = "topk_logprobs" if top_k else "logprobs"
    # Clamp before the cast: -1e5 is finite in float32 but -inf in float16 (both mean p = 0).
    tensors[lp_name] = torch.cat([getattr(r, lp_name).detach().cpu().float().clamp(min=floor).to(dtype)
                                  for r in records])
    if top_k:
        tensors["topk_ids"] = torch.cat([r.topk_ids.detach().cpu().to(torch.int32) for r in records])
    return {k: v.contiguous() for k, v in tensors.items()}


def _save_shard(tensors: dict[str, torch.Tensor], path: Path) -> tuple[str, int]:
    """Atomic save; returns (sha256, bytes). One metadata key keeps the header deterministic
    (safetensors serialises a multi-key metadata map in hash order, which varies per run)."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": f"{FORMAT_NAME}/{FORMAT_VERSION}"})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        sha, size = sha256_file(tmp), tmp.stat().st_size
    return sha, size


# --------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------

def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a complete cache, with format name and version checked."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        partial = folder.is_dir() and any(_SHARD_RE.match(p.name) for p in folder.iterdir())
        raise AlignDistilError(
            f"no complete teacher cache at {folder} ({MANIFEST} missing"
            f"{'; the build was interrupted' if partial else ''})",
            "run the teacher build (an interrupted build resumes from its finished shards)",
        )
    manifest = _read_json(path)
    if manifest.get("format") != FORMAT_NAME:
        raise AlignDistilError(f"{path} is not an aligndistil teacher cache "
                               f"(format {manifest.get('format')!r})", "check the cache path")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise AlignDistilError(
            f"teacher cache {folder} has format version {manifest.get('format_version')!r}; "
            f"this aligndistil reads version {FORMAT_VERSION}",
            "rebuild the cache with this aligndistil version (--overwrite)",
        )
    return manifest


def _check_shards_present(folder: Path, manifest: dict, verify: bool) -> None:
    shards = manifest["shards"]
    missing = [s["file"] for s in shards if not (folder / s["file"]).is_file()]
    if missing:
        raise AlignDistilError(f"teacher cache {folder} is missing {missing[0]}"
                               f" ({len(missing)} of {len(shards)} shards missing)", _REBUILD)
    for s in shards if verify else []:
        if sha256_file(folder / s["file"]) != s["sha256"]:
            raise AlignDistilError(f"teacher cache shard {folder / s['file']} is corrupt "
                                   "(sha256 differs from the manifest)", _REBUILD)


@dataclass
class _ShardIndex:
    handle: Any
    seq_offsets: list[int]
    response_start: list[int]
    row_offsets: list[int]
    example_ids: list[int]


class TeacherCache:
    """Lazy reader: ``cache[i]`` is a :class:`SequenceRecord`, read by slicing one shard.

    Args:
        folder: the cache folder.
        verify: re-hash every shard against the manifest first (slow for big caches).
    """

    def __init__(self, folder: str | os.PathLike, *, verify: bool = False) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        _check_shards_present(self.folder, self.manifest, verify)
        self.top_k: int = int(self.manifest["top_k"])
        self.vocab_size: int = int(self.manifest["vocab_size"])
        self.cache_dtype: str = self.manifest["cache_dtype"]
        self.tokenizer_fingerprint: str = self.manifest["tokenizer_fingerprint"]
        self._starts = [s["first_sequence"] for s in self.manifest["shards"]]
        self._shards: dict[int, _ShardIndex] = {}

    @property
    def dense(self) -> bool:
        return self.top_k == 0

    def __len__(self) -> int:
        return int(self.manifest["counts"]["sequences"])

    def _shard(self, s: int) -> _ShardIndex:
        """Open shard ``s`` once and keep its small per-sequence tables."""
        if s not in self._shards:
            handle = safe_open(str(self.folder / self.manifest["shards"][s]["file"]), framework="pt")
            offsets = handle.get_tensor("seq_offsets").tolist()
            starts = handle.get_tensor("response_start").tolist()
            rows = [0]
            for i, start in enumerate(starts):
                rows.append(rows[-1] + offsets[i + 1] - offsets[i] - start)
            self._shards[s] = _ShardIndex(handle, offsets, starts, rows,
                                          handle.get_tensor("example_ids").tolist())
        return self._shards[s]

    def __getitem__(self, i: int) -> SequenceRecord:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for a cache of {n}")
        i %= n
        s = bisect.bisect_right(self._starts, i) - 1
        shard, local = self._shard(s), i - self._starts[s]
        a, b = shard.seq_offsets[local], shard.seq_offsets[local + 1]
        r0, r1 = shard.row_offsets[local], shard.row_offsets[local + 1]

        def rows(name: str) -> torch.Tensor:
            return shard.handle.get_slice(name)[r0:r1]

        record = SequenceRecord(
            example_id=shard.example_ids[local],
            input_ids=shard.handle.get_slice("input_ids")[a:b].long(),
            response_start=shard.response_start[local],
            alpha=rows("alpha"), tvd=rows("tvd"), reward=rows("reward"),
        )
        if self.dense:
            record.logprobs = rows("logprobs")
        else:
            record.topk_ids, record.topk_logprobs = rows("topk_ids").long(), rows("topk_logprobs")
        return record

    def example_ids(self) -> list[int]:
        """Dataset row index of every cached sequence, in cache order."""
        return [e for s in range(len(self._starts)) for e in self._shard(s).example_ids]


def check_tokenizer(cache: TeacherCache | str | os.PathLike, tokenizer_fingerprint: str,
                    what: str = "student") -> None:
    """Refuse a cache whose token ids come from another tokenizer than the ``what`` model's."""
    if not isinstance(cache, TeacherCache):
        cache = TeacherCache(cache)
    if cache.tokenizer_fingerprint != tokenizer_fingerprint:
        raise AlignDistilError(
            f"the teacher cache at {cache.folder} was built with another tokenizer than the {what} "
            f"(cache {str(cache.tokenizer_fingerprint)[:12]}, {what} {str(tokenizer_fingerprint)[:12]})",
            f"use a {what} that shares the teacher's tokenizer, or rebuild the cache",
        )


# --------------------------------------------------------------------------------------------
# verifier
# --------------------------------------------------------------------------------------------

# Allowed excess of a top-k probability mass over 1 (rounding of the stored log-probabilities).
MASS_TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}
_ROW_BUDGET = 1 << 24  # values per chunk: keeps verification memory bounded for dense caches


@dataclass
class VerifyReport:
    """Result of :func:`verify_teacher`: ``problems`` empty means the cache is sound."""

    folder: Path
    problems: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_teacher(folder: str | os.PathLike) -> VerifyReport:
    """Check a cache end to end: format, shard presence and sha256, layout, coverage, values."""
    report = VerifyReport(Path(folder))
    try:
        manifest = read_manifest(folder)
    except AlignDistilError as exc:
        report.problems.append(str(exc))
        return report
    shards = manifest.get("shards", [])
    stats = {"shards": len(shards), "sequences": 0, "response_tokens": 0, "bytes": 0,
             "min_mass": math.inf, "mass_sum": 0.0}
    example_ids: list[int] = []
    for info in shards:
        _verify_shard(report, manifest, info, stats, example_ids)
    _check_totals(report, manifest)
    tokens = stats["response_tokens"]
    mass_sum, min_mass = stats.pop("mass_sum"), stats.pop("min_mass")
    stats["mean_mass"] = mass_sum / tokens if tokens else None
    stats["min_mass"] = min_mass if tokens else None
    stats["duplicate_example_ids"] = len(example_ids) - len(set(example_ids))
    report.stats = stats
    return report


def _check_totals(report: VerifyReport, manifest: dict) -> None:
    """The manifest's totals and shard list agree and tile the sequences (shards are checked
    against their own entries by :func:`_verify_shard`)."""
    counts, size = manifest.get("counts", {}), manifest.get("shard_size", 0)
    shards = manifest.get("shards", [])
    for key, per_shard in (("sequences", "sequences"), ("response_tokens", "tokens")):
        listed = sum(s.get(per_shard, 0) for s in shards)
        if counts.get(key) != listed:
            report.problems.append(f"manifest counts {counts.get(key)} {key}, its shards list {listed}")
    for k, s in enumerate(shards):
        if s.get("index") != k or s.get("first_sequence") != k * size or \
                (k < len(shards) - 1 and s.get("sequences") != size):
            report.problems.append(f"{s.get('file')}: does not cover sequences from {k * size} "
                                   f"in shards of {size}")


def _verify_shard(report: VerifyReport, manifest: dict, info: dict, stats: dict,
                  example_ids: list[int]) -> None:
    """Hash, then read one shard; every problem found is appended to the report."""
    path = report.folder / info["file"]
    if not path.is_file():
        report.problems.append(f"{info['file']}: missing")
        return
    stats["bytes"] += path.stat().st_size
    if sha256_file(path) != info["sha256"]:
        report.problems.append(f"{info['file']}: sha256 differs from the manifest (corrupt or replaced)")
    try:
        handle = safe_open(str(path), framework="pt")
        problems, rows = _check_layout(handle, manifest, info)
        if rows is not None:  # internally consistent: count it and look at the values
            if rows != info["tokens"]:
                problems.append(f"{rows} response tokens, manifest says {info['tokens']}")
            stats["sequences"] += info["sequences"]
            stats["response_tokens"] += rows
            example_ids.extend(handle.get_tensor("example_ids").tolist())
            _accumulate_mass(handle, manifest, stats, rows)
            problems += _check_values(handle, manifest)
    except Exception as exc:  # a corrupt header makes safetensors raise arbitrary errors
        problems = [f"cannot be read ({type(exc).__name__}: {str(exc)[:80]})"]
    report.problems.extend(f"{info['file']}: {p}" for p in problems)


def _expected_tensors(manifest: dict) -> dict[str, str]:
    """Tensor name -> safetensors dtype tag for this manifest's kind of cache."""
    lp = _ST_DTYPES.get(manifest["cache_dtype"], "?")
    names = {"input_ids": "I32", "seq_offsets": "I64", "response_start": "I64",
             "example_ids": "I64", "alpha": "F32", "tvd": "F32", "reward": "F32"}
    names.update({"topk_ids": "I32", "topk_logprobs": lp} if manifest["top_k"] else {"logprobs": lp})
    return names


def _check_layout(handle: Any, manifest: dict, info: dict) -> tuple[list[str], int | None]:
    """Names, dtypes, shapes and coverage of one shard; returns (problems, response rows).

    Rows is None when the shard is not internally consistent (its values are then not read).
    """
    expected = _expected_tensors(manifest)
    if set(handle.keys()) != set(expected):
        return [f"tensors {sorted(handle.keys())}, expected {sorted(expected)}"], None
    wrong = [f"{n} is {handle.get_slice(n).get_dtype()}, expected {d}"
             for n, d in expected.items() if handle.get_slice(n).get_dtype() != d]
    if wrong:
        return wrong, None
    offsets, starts = handle.get_tensor("seq_offsets"), handle.get_tensor("response_start")
    n_seq, n_ids = info["sequences"], handle.get_slice("input_ids").get_shape()[0]
    lengths = offsets[1:] - offsets[:-1]
    if offsets.shape != (n_seq + 1,) or starts.shape != (n_seq,) or offsets[0] != 0 \
            or offsets[-1] != n_ids or (lengths < 2).any():
        return [f"seq_offsets/response_start do not describe {n_seq} sequences "
                f"over {n_ids} tokens"], None
    if ((starts < 1) | (starts >= lengths)).any():
        return ["a response_start lies outside [1, sequence length)"], None
    rows = int((lengths - starts).sum())
    width = manifest["top_k"] or manifest["vocab_size"]
    problems = []
    for name in expected:
        shape = handle.get_slice(name).get_shape()
        want = {"input_ids": [n_ids], "seq_offsets": [n_seq + 1], "response_start": [n_seq],
                "example_ids": [n_seq]}.get(name, [rows] if name in TOKEN_FLOATS else [rows, width])
        if shape != want:
            problems.append(f"{name} has shape {shape}, expected {want}")
    return problems, None if problems else rows


def _row_chunks(handle: Any, name: str, rows: int, width: int):
    step = max(1, _ROW_BUDGET // max(width, 1))
    for a in range(0, rows, step):
        yield handle.get_slice(name)[a:a + step]


def _accumulate_mass(handle: Any, manifest: dict, stats: dict, rows: int) -> None:
    """Probability mass per row kept by the cache (1 for dense; the top-k coverage otherwise)."""
    name = "topk_logprobs" if manifest["top_k"] else "logprobs"
    width = manifest["top_k"] or manifest["vocab_size"]
    for chunk in _row_chunks(handle, name, rows, width):
        mass = chunk.float().exp().sum(-1)
        if mass.numel():
            stats["min_mass"] = min(stats["min_mass"], float(mass.min()))
            stats["mass_sum"] += float(mass.sum())


def _check_values(handle: Any, manifest: dict) -> list[str]:
    """Finite floats, log-probabilities <= 0 with mass <= 1 + tol, ids inside the vocabulary."""
    problems: list[str] = []
    vocab, top_k = manifest["vocab_size"], manifest["top_k"]
    tol = MASS_TOLERANCE.get(manifest["cache_dtype"], 1e-4)
    for name in TOKEN_FLOATS:
        values = handle.get_tensor(name)
        if not torch.isfinite(values).all():
            problems.append(f"{name} has non-finite values")
    tvd = handle.get_tensor("tvd")
    if torch.isfinite(tvd).all() and tvd.numel() and (tvd.min() < -tol or tvd.max() > 1 + tol):
        problems.append("tvd outside [0, 1]")
    for name in ("input_ids", "topk_ids") if top_k else ("input_ids",):
        ids = handle.get_tensor(name)
        if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
            problems.append(f"{name} outside [0, {vocab})")
    name = "topk_logprobs" if top_k else "logprobs"
    rows = handle.get_slice(name).get_shape()[0]
    for chunk in _row_chunks(handle, name, rows, top_k or vocab):
        chunk = chunk.float()
        if not torch.isfinite(chunk).all():
            problems.append(f"{name} has non-finite values")
            break
        if (chunk > tol).any() or (chunk.exp().sum(-1) > 1 + tol).any():
            problems.append(f"{name} exceed 0 or sum to more than 1 + {tol} probability")
            break
    return problems
