"""Teacher composition for AlignDistil (contrastive, token-adaptive logit extrapolation)."""

from aligndistil_cli.teacher.compose import (
    OFFICIAL_NAMES,
    VARIANTS,
    HeadLogits,
    TeacherRows,
    TeacherSpec,
    compose_chunked,
    compose_teacher,
    expected_reward,
    logit_rows,
    token_reward,
    topk_rows,
)

__all__ = [
    "OFFICIAL_NAMES", "VARIANTS", "HeadLogits", "TeacherRows", "TeacherSpec", "compose_chunked",
    "compose_teacher", "expected_reward", "logit_rows", "token_reward", "topk_rows",
]
