"""Option groups shared by several stages (dataclass mixins of the stage configs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aligndistil_cli.config import StageConfig, option
from aligndistil_cli.errors import AlignDistilError

ON_INVALID = ("skip", "error")
MIXED_PRECISION = ("auto", "bf16", "no")


@dataclass(frozen=True)
class ModelOptions(StageConfig):
    dtype: str = option("auto", "Weights dtype of frozen models; trained models keep fp32 master weights "
                        "and follow --mixed-precision.", choices=("auto", "float32", "bfloat16"), group="Model")
    device: str = option("auto", "cpu, cuda, cuda:N or auto.", group="Model")
    trust_remote_code: bool = option(False, "Allow model code from the Hub (needs --revision COMMIT).",
                                     group="Model")
    revision: str | None = option(None, "Hub revision (a commit hash) for hub model ids.", group="Model")


@dataclass(frozen=True)
class DataKeys(StageConfig):
    """Where the columns are and how long sequences may be: every stage that reads data."""

    split: str = option("train", "Split of a dataset folder or hub dataset.", group="Data")
    prompt_key: str = option("prompt", "Column holding the prompt (string or message list).", group="Data")
    chosen_key: str = option("chosen", "Column holding the preferred response.", group="Data")
    rejected_key: str = option("rejected", "Column holding the dispreferred response.", group="Data")
    max_length: int = option(2048, "Longest prompt+response in tokens (response cut from the right).",
                             group="Data")
    max_prompt_length: int = option(1024, "Longest prompt in tokens (cut from the left).", group="Data")


@dataclass(frozen=True)
class DataOptions(DataKeys):
    data: str = option(help="Preference data: JSON/JSONL/Parquet/CSV file, save_to_disk folder or hub name.",
                       group="Data")
    on_invalid: str = option("skip", "What to do with invalid rows.", choices=ON_INVALID, group="Data")
    max_examples: int | None = option(None, "Use only the first N valid examples.", group="Data")


@dataclass(frozen=True)
class TrainOptions(StageConfig):
    batch_size: int = option(128, "Global batch = micro-batch x accumulation x processes.", group="Training")
    micro_batch_size: int = option(1, "Examples per forward/backward on each process.", group="Training")
    epochs: float = option(1.0, "Passes over the data (fractions allowed).", group="Training")
    max_steps: int | None = option(None, "Stop after this many optimizer steps (overrides --epochs).",
                                   group="Training")
    lr: float = option(1e-6, "Peak learning rate (AdamW).", group="Training")
    lr_scheduler: str = option("cosine", "Decay after warmup.", choices=("cosine", "linear", "constant"),
                               group="Training")
    warmup_ratio: float = option(0.1, "Fraction of steps with linear warmup.", group="Training")
    min_lr_ratio: float = option(0.1, "Final lr as a fraction of the peak.", group="Training")
    weight_decay: float = option(0.0, "AdamW weight decay.", group="Training")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.", group="Training")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward to save memory.",
                                          group="Training")
    fsdp: bool = option(False, "Shard the trained model with FSDP2 across processes (each decoder layer, "
                        "then the root); frozen models stay replicated. Needs several processes.",
                        group="Training")
    mixed_precision: str = option("auto", "bf16 autocast of forward passes (fp32 master weights and "
                                  "losses): auto = on CUDA; bf16 = also on CPU (about 1.7x faster on "
                                  "CPUs with AVX512-BF16/AMX, see `aligndistil env`; elsewhere emulated and "
                                  "many times slower); no = fp32.",
                                  choices=MIXED_PRECISION, group="Training")
    seed: int = option(42, "Seed of data order, sampling and initialisation.", group="Training")
    deterministic: bool = option(False, "Use deterministic CUDA kernels (slower).", group="Training")
    logging_steps: int = option(1, "Log metrics every N optimizer steps.", group="Training")
    save_steps: int = option(0, "Write checkpoint-N every N steps (0 = only at the end).", group="Training")
    save_total_limit: int | None = option(None, "Keep only the newest N checkpoints.", group="Training")
    on_nonfinite: str = option("error", "NaN/inf loss or gradient: stop, or skip the batch.",
                               choices=("error", "skip"), group="Training")
    resume: bool = option(False, "Continue from the newest complete checkpoint in --output.", group="Run")
    resume_from: str | None = option(None, "Continue from this checkpoint folder.", group="Run")
    overwrite: bool = option(False, "Replace an output folder that holds a finished run.", group="Run")
    dry_run: bool = option(False, "Validate the config and inputs, load no model, write nothing.",
                           group="Run")
    nproc_per_node: int = option(1, "Re-launch under torchrun with N processes.", group="Run")

    def validate(self) -> None:
        for name in ("batch_size", "micro_batch_size", "logging_steps"):
            if getattr(self, name) < 1:
                raise AlignDistilError(f"--{name.replace('_', '-')} must be at least 1",
                                       f"pass --{name.replace('_', '-')} 1 or more")
        if not 0 <= self.warmup_ratio <= 1:
            raise AlignDistilError("--warmup-ratio must lie in [0, 1]", "pass e.g. --warmup-ratio 0.1")
        if self.lr <= 0:
            raise AlignDistilError("--lr must be positive", "pass e.g. --lr 1e-6")


def require_path(path: str, what: str, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise AlignDistilError(f"{what} {path} does not exist", f"check {flag}")
    return p


@dataclass(frozen=True)
class TeacherOptions(StageConfig):
    """How the synthetic teacher is composed (shared by build-teacher, live distill, inspect)."""

    variant: str | None = option(None, "Named combination of --contrast and --alpha "
                                 "(aligndistil = reverse + adaptive).",
                                 choices=("aligndistil", "contrastive", "adaptive", "theorem1"), group="Teacher")
    contrast: str | None = option(None, "reverse: z* = z_dpo + a(z_dpo - z_rev) (Eq. 15); reference: "
                                  "z* = z_ref + a(z_dpo - z_ref) (Eq. 11). Default reverse.",
                                  choices=("reverse", "reference"), group="Teacher")
    alpha: str = option("adaptive", "adaptive (alpha_t = alpha_max * TVD_t + eps, Eq. 16) or a constant "
                        "such as 1.0.", group="Teacher")
    alpha_max: float = option(20.0, "r of Eq. 16 with TVD in [0, 1]; 20 = the official --beta2 10.",
                              group="Teacher")
    beta: float = option(0.1, "beta0 of the DPO models; the token weight is beta / alpha_t.", group="Teacher")

    def teacher_spec(self):
        """The :class:`TeacherSpec` these options describe, or a one-line error."""
        from aligndistil_cli.teacher.compose import VARIANTS, TeacherSpec

        constant = None
        if self.alpha != "adaptive":
            try:
                constant = float(self.alpha)
            except ValueError:
                raise AlignDistilError(f"--alpha must be 'adaptive' or a number, got {self.alpha!r}",
                                       "pass --alpha adaptive or e.g. --alpha 1.0") from None
        contrast, mode = VARIANTS[self.variant] if self.variant else (self.contrast or "reverse", None)
        if self.variant and self.contrast and self.contrast != contrast:
            raise AlignDistilError(f"--variant {self.variant} uses --contrast {contrast}, not {self.contrast}",
                                   "drop one of the two options")
        if mode == "adaptive" and constant is not None:
            raise AlignDistilError(f"--variant {self.variant} is adaptive but --alpha {self.alpha} is constant",
                                   f"drop --alpha, or use --variant {'contrastive' if contrast == 'reverse' else 'theorem1'}")
        if mode == "constant" and constant is None:
            constant = 1.0
        return TeacherSpec(contrast=contrast, alpha=constant, alpha_max=self.alpha_max, beta=self.beta)

    def variant_name(self) -> str:
        from aligndistil_cli.teacher.compose import VARIANTS

        spec = self.teacher_spec()
        mode = "adaptive" if spec.adaptive else "constant"
        return next(k for k, v in VARIANTS.items() if v == (spec.contrast, mode))
