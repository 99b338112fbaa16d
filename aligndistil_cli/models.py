"""Loading, saving and fingerprinting causal language models and their tokenizers.

Rules every stage relies on:
- weights are read from and written to safetensors only; aligndistil never unpickles a
  ``.bin``/``.pt`` file, because unpickling runs code (reliability notes B.6);
- ``trust_remote_code`` on a hub id needs a revision pinned to a full 40-hex commit, so the code
  that runs is the code that was reviewed (B.7);
- a saved model is a plain Hugging Face folder (standard file names, no custom code) so that
  transformers and vLLM load it as is.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import atomic_path, sha256_file

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# "owner/name" as the Hub spells it; anything else that does not exist locally is a typo'd path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_OFFLINE_HINT = ("this machine cannot reach the Hugging Face Hub: download the model elsewhere "
                 "(e.g. `hf download OWNER/NAME --local-dir DIR`) and pass the local folder")


# --------------------------------------------------------------------------- device and dtype


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; explicit devices are checked for existence."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise AlignDistilError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AlignDistilError(f"device {device!r} requested but CUDA is not available",
                                   "use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AlignDistilError(f"device {device!r} does not exist "
                                   f"({torch.cuda.device_count()} CUDA device(s) visible)",
                                   "pick an index below the device count")
    return dev


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32. Linux only (reads /proc/cpuinfo); False when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision_enabled(mode: str, device: torch.device) -> bool:
    """bf16 autocast for the trained model: ``auto`` on CUDA only, ``bf16`` on any device, ``no``
    never. ``auto`` leaves CPUs in fp32 so that results do not depend on the CPU's instruction set."""
    return mode == "bf16" or (mode == "auto" and device.type == "cuda")


def autocast(device: torch.device, mode: str = "auto") -> torch.autocast:
    """bf16 autocast of the trained model's forward per ``--mixed-precision`` (losses upcast to fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision_enabled(mode, device))


def resolve_dtype(dtype: str, device: torch.device | str) -> torch.dtype:
    """Map a dtype name to a torch dtype; ``auto`` is bfloat16 on CUDA with native bf16, else fp32."""
    device = torch.device(device)
    name = (dtype or "auto").strip().lower()
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        # fp16 without a loss scaler is not safe for training, so anything else gets fp32.
        return torch.float32
    if name not in _DTYPES:
        raise AlignDistilError(f"unknown dtype {dtype!r}",
                               "use auto, float32, bfloat16 or float16")
    return _DTYPES[name]


# --------------------------------------------------------------------------- locating models


def _is_hub_id(path: str) -> bool:
    """True for ``OWNER/NAME`` that is not a local path (``runs/dpo`` with ``runs/`` present is local)."""
    local = Path(path).expanduser()
    return bool(_HUB_ID.match(path)) and not local.exists() and not local.parent.is_dir()


def _check_local_weights(folder: Path) -> None:
    """Refuse folders whose weights are missing or pickle-only, before transformers looks at them."""
    if not (folder / "config.json").is_file():
        raise AlignDistilError(f"{folder} has no config.json, so it is not a Hugging Face model folder",
                               "pass a folder written by save_pretrained or by aligndistil")
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files):
        return
    pickles = sorted(p.name for p in files if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise AlignDistilError(
            f"{folder} holds only pickle weights (.bin/.pt: {', '.join(pickles[:3])}), "
            "which aligndistil never unpickles",
            "convert to safetensors with `AutoModelForCausalLM.from_pretrained(dir)"
            ".save_pretrained(out)` in a trusted environment",
        )
    if any(p.suffix == ".gguf" for p in files):
        raise AlignDistilError(f"{folder} holds a GGUF file, not safetensors weights",
                               "convert it first with aligndistil_cli.gguf_import.import_gguf(FILE, OUT_DIR)")
    raise AlignDistilError(f"{folder} contains no model weights (*.safetensors)",
                           "point at a complete model folder")


def _check_source(path: str, trust_remote_code: bool, revision: str | None) -> bool:
    """Validate ``path`` and the remote-code policy; return True when it is a hub id."""
    local = Path(path).expanduser()
    if local.is_dir():
        if trust_remote_code:
            log.warning("trust_remote_code=True: running Python code from local folder %s", local)
        return False
    if local.exists():
        raise AlignDistilError(f"{path} is a file, not a model folder", "pass the folder that holds config.json")
    if not _is_hub_id(path):
        raise AlignDistilError(f"model folder {path} does not exist",
                               "check the path; an OWNER/NAME hub id is tried only when no local folder OWNER exists")
    if trust_remote_code and not (revision and _COMMIT.match(revision)):
        raise AlignDistilError(
            f"trust_remote_code for hub model {path} needs a revision pinned to a full commit hash",
            "pass --revision with the 40-hex commit you reviewed",
        )
    if trust_remote_code:
        log.warning("trust_remote_code=True: running code from %s at commit %s", path, revision)
    return True


def _hub_failure(path: str, exc: Exception) -> AlignDistilError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return AlignDistilError(f"no local folder {path}, and loading it from the Hugging Face Hub failed: "
                            f"{first}", _OFFLINE_HINT)


# --------------------------------------------------------------------------- loading


def load_model(path: str, *, dtype: str = "auto", device: str = "auto",
               trust_remote_code: bool = False, revision: str | None = None,
               train: bool = False):
    """Load a causal LM from a local folder or a hub id, from safetensors only.

    Returns the model on ``device`` in ``dtype``, in eval mode unless ``train``.
    """
    from transformers import AutoModelForCausalLM

    path = str(path)
    hub = _check_source(path, trust_remote_code, revision)
    if not hub:
        _check_local_weights(Path(path).expanduser())
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(Path(path).expanduser()) if not hub else path,
            dtype=torch_dtype, use_safetensors=True,
            trust_remote_code=trust_remote_code, revision=revision if hub else None,
        )
    except OSError as exc:
        if hub:
            raise _hub_failure(path, exc) from exc
        raise AlignDistilError(f"could not load model {path}: {exc}".splitlines()[0],
                               "check that the folder is complete") from exc
    except ValueError as exc:
        # Unknown architectures and custom-code configs surface as ValueError.
        raise AlignDistilError(f"could not load model {path}: {str(exc).splitlines()[0]}",
                               "use a standard causal-LM architecture, or --trust-remote-code "
                               "with a pinned --revision") from exc
    model.to(dev)
    model.train(train)
    return model


def load_tokenizer(path: str, *, trust_remote_code: bool = False, revision: str | None = None):
    """Load a tokenizer; set ``pad_token`` to EOS when the tokenizer has none."""
    from transformers import AutoTokenizer

    path = str(path)
    hub = _check_source(path, trust_remote_code, revision)
    try:
        tok = AutoTokenizer.from_pretrained(
            str(Path(path).expanduser()) if not hub else path,
            trust_remote_code=trust_remote_code, revision=revision if hub else None,
        )
    except (OSError, ValueError) as exc:
        if hub and isinstance(exc, OSError):
            raise _hub_failure(path, exc) from exc
        raise AlignDistilError(f"could not load the tokenizer of {path}: {str(exc).splitlines()[0]}",
                               "the folder needs tokenizer files (tokenizer.json or vocab files)") from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise AlignDistilError(f"the tokenizer of {path} has neither a pad nor an EOS token",
                                   "add an eos_token to its tokenizer_config.json")
        # Padding is always masked out, so reusing EOS as pad changes no loss.
        tok.pad_token = tok.eos_token
    return tok


# --------------------------------------------------------------------------- saving


def _generation_config(model, tokenizer):
    """The model's generation config with EOS and pad ids that match the tokenizer."""
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    gen = copy.deepcopy(base) if base is not None else GenerationConfig.from_model_config(model.config)
    eos = gen.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        # The tokenizer's EOS ends every response we train on, so generation must stop on it.
        eos_ids.insert(0, tokenizer.eos_token_id)
    gen.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None)
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return gen


def _portable_tokenizer_class(folder: Path) -> None:
    """Name the tokenizer class ``PreTrainedTokenizerFast`` instead of v5's ``TokenizersBackend``.

    transformers 5 treats the two names as one class, but transformers 4 (which vLLM may pin)
    only knows the first; both load ``tokenizer.json`` unchanged.
    """
    cfg_path = folder / "tokenizer_config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("tokenizer_class") == "TokenizersBackend" and (folder / "tokenizer.json").is_file():
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_output_dir(out: Path) -> None:
    """Refuse to replace a file or a non-empty folder that is not a model folder (user data)."""
    if out.exists() and not out.is_dir():
        raise AlignDistilError(f"{out} exists and is a file", "choose a folder path for the output")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise AlignDistilError(f"refusing to replace {out}: a non-empty folder that is not a model folder",
                               "choose a new or empty output folder")


def save_model_folder(model, tokenizer, out_dir: str | os.PathLike, *,
                      extra_files: Mapping[str, bytes] | None = None) -> None:
    """Write ``model`` and ``tokenizer`` as a plain Hugging Face folder, atomically.

    The folder holds config.json, model.safetensors (in the model's dtype), tokenizer files and a
    generation_config.json whose EOS/pad ids match the tokenizer; ``extra_files`` (name -> bytes)
    are written next to them. A crash leaves the previous folder (or nothing) in place.
    """
    out = Path(out_dir)
    _check_output_dir(out)
    for name in extra_files or {}:
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"extra file name must be a plain file name, got {name!r}")
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        _generation_config(model, tokenizer).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _portable_tokenizer_class(tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        if not any(p.suffix == ".safetensors" for p in tmp.iterdir()):
            raise RuntimeError(f"save_pretrained wrote no safetensors file into {tmp}")


# --------------------------------------------------------------------------- tokenizers


def _tokenizer_parts(tokenizer) -> dict[str, str]:
    """Hashes of the parts of a tokenizer that decide ids (vocab, merges) and of the rest."""
    vocab = sorted(tokenizer.get_vocab().items())
    merges: Any = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Same vocabulary with different merges still splits text differently.
        merges = json.loads(backend.to_str()).get("model", {}).get("merges")
    specials = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    template = tokenizer.chat_template

    def digest(obj: Any) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    return {"vocab": digest([vocab, merges]), "specials": digest(specials), "chat_template": digest(template)}


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the vocabulary (sorted token->id map, merges), special tokens and chat template."""
    parts = _tokenizer_parts(tokenizer)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def check_same_tokenizer(named: Mapping[str, Any]) -> list[str]:
    """Refuse tokenizers that map text to different ids; return notes for milder differences.

    A different vocabulary (or merges) raises :class:`AlignDistilError` naming the two models;
    a different chat template or special-token map only yields a note, because ids still agree.
    """
    items = list(named.items())
    if len(items) < 2:
        return []
    first_name, first_tok = items[0]
    first = _tokenizer_parts(first_tok)
    notes = []
    for name, tok in items[1:]:
        parts = _tokenizer_parts(tok)
        if parts["vocab"] != first["vocab"]:
            raise AlignDistilError(
                f"{first_name} and {name} use different tokenizers "
                f"({len(first_tok)} vs {len(tok)} tokens, different vocabularies)",
                "all models must share one tokenizer; pick models from the same family",
            )
        for part, what in (("chat_template", "chat templates"), ("specials", "special tokens")):
            if parts[part] != first[part]:
                notes.append(f"{first_name} and {name} share the vocabulary but have different {what}; "
                             f"using {first_name}'s")
    for note in notes:
        log.warning(note)
    return notes


def _head_rows(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def shared_vocab_size(models: Mapping[str, Any], tokenizer) -> tuple[int, list[str]]:
    """Number of logit rows all ``models`` share, checked against the tokenizer.

    Families such as Qwen pad output heads to different widths (151,936 and 152,064 rows) for one
    151,665-token tokenizer; rows past the tokenizer never match a real token, so comparing the
    first ``min(head rows)`` rows is exact.
    """
    rows = {name: _head_rows(m) for name, m in models.items()}
    if not rows:
        raise ValueError("shared_vocab_size needs at least one model")
    smallest = min(rows, key=rows.get)
    size = rows[smallest]
    n_tok = len(tokenizer)
    if n_tok > size:
        raise AlignDistilError(
            f"the tokenizer has {n_tok} tokens but {smallest}'s output head has only {size} rows",
            "use the tokenizer that belongs to these models",
        )
    notes = []
    if len(set(rows.values())) > 1:
        names = list(rows)
        desc = f"{names[0]} head has {rows[names[0]]} rows, " + ", ".join(f"{n} {rows[n]}" for n in names[1:])
        notes.append(f"{desc}: using the {size} shared rows (tokenizer has {n_tok} tokens)")
    return size, notes


# --------------------------------------------------------------------------- weights


def _folder_fingerprint(path: Path) -> str:
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or any(f.suffix != ".safetensors" for f in files):
        raise AlignDistilError(f"{path} holds no safetensors weights to fingerprint",
                               "pass a model folder or a .safetensors file")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def _model_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}\0{t.dtype}\0{tuple(tensor.shape)}\n".encode())
        # A uint8 view hashes the raw bytes of any dtype, bfloat16 included (numpy has no bf16).
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_fingerprint(path_or_model: str | os.PathLike | torch.nn.Module) -> str:
    """sha256 of a model's weights.

    For a folder (or .safetensors file) it hashes the file names and file hashes; for an
    in-memory model it hashes every tensor's name, dtype, shape and bytes. The two kinds of
    fingerprint are not comparable with each other.
    """
    if isinstance(path_or_model, torch.nn.Module):
        return _model_fingerprint(path_or_model)
    path = Path(path_or_model)
    if not path.exists():
        raise AlignDistilError(f"{path} does not exist", "pass a model folder or a .safetensors file")
    return _folder_fingerprint(path)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
