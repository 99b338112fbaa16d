"""Judges: gold rewards for (prompt, response) pairs.

Every judge has a ``name`` and ``score(prompts, responses) -> list[float]`` (higher is better),
one score per pair, deterministic for the same input.

- ``SentimentJudge``: the VADER compound score in [-1, 1] of the response alone (the DPO paper's
  controlled-sentiment task: the prompt is the opening of a review that every policy shares, the
  response is what the policy wrote);
- ``RewardModelJudge``: a Hugging Face ``AutoModelForSequenceClassification`` folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from aligndistil_cli.errors import AlignDistilError

SENTIMENT_SPEC = "sentiment"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


class Judge(Protocol):
    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response) pair; higher is better."""
        ...


def _check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


class SentimentJudge:
    """VADER compound sentiment (rule-based, deterministic, CPU only)."""

    name = "sentiment-vader"

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as exc:
            raise AlignDistilError("the sentiment judge needs the vaderSentiment package",
                                   "pip install vaderSentiment==3.3.2") from exc
        self._analyzer = SentimentIntensityAnalyzer()

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """VADER compound score in [-1, 1] of each text."""
        return [float(self._analyzer.polarity_scores(t)["compound"]) for t in texts]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Sentiment of each response; the prompts are ignored (see the module docstring)."""
        _check_pairs(prompts, responses)
        return self.score_texts(responses)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise AlignDistilError(f"unknown dtype {dtype!r}", f"use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _load_reward_model(path: Path, device: str | torch.device, dtype: torch.dtype
                       ) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not path.is_dir():
        raise AlignDistilError(f"judge folder {path} does not exist",
                               f"give '{SENTIMENT_SPEC}' or a reward-model folder")
    if not any(path.glob("*.safetensors")):
        raise AlignDistilError(f"{path} has no .safetensors weights",
                               "convert the reward model to safetensors (pickled weights are "
                               "not loaded for safety)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, trust_remote_code=False, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise AlignDistilError(f"cannot load a sequence-classification model from {path}: {exc}",
                               "give a Hugging Face reward-model folder (config.json, "
                               "*.safetensors, tokenizer files)") from exc
    return tokenizer, model.to(device).eval()


class RewardModelJudge:
    """A sequence-classification reward model.

    Input text: the judge tokenizer's chat template over ``[user: prompt, assistant: response]``
    when it has one, else ``prompt + response`` (with the tokenizer's special tokens).
    Score: ``num_labels == 1`` -> the single logit; ``num_labels == 2`` -> ``logit[1] - logit[0]``
    (the log-odds of label 1, "good"); more labels are rejected. Inputs are right-padded, and the
    model reads the last non-pad token, so a score does not depend on the batch it was in. Inputs
    are not truncated: a pair longer than the model's context fails loudly.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = torch.float32, batch_size: int = 8) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tokenizer, self.model = _load_reward_model(self.path, self.device, parse_dtype(dtype))
        self.num_labels = int(self.model.config.num_labels)
        if self.num_labels not in (1, 2):
            raise AlignDistilError(f"{self.path} has {self.num_labels} labels",
                                   "use a reward model with 1 (scalar) or 2 (bad/good) labels")
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise AlignDistilError(f"the tokenizer of {self.path} has neither pad nor eos",
                                       "add a pad_token to the judge's tokenizer_config.json")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            # Needed by *ForSequenceClassification to find the last real token of each row.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def format_pair(self, prompt: str, response: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt},
                        {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + response

    @torch.no_grad()
    def _score_batch(self, texts: list[str]) -> list[float]:
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        enc = self.tokenizer(texts, padding=True, return_tensors="pt",
                             add_special_tokens=not templated)  # the template has its own
        logits = self.model(input_ids=enc["input_ids"].to(self.device),
                            attention_mask=enc["attention_mask"].to(self.device)).logits.float()
        # logits: [B, num_labels]
        scores = logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]
        return scores.cpu().tolist()

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        _check_pairs(prompts, responses)
        texts = [self.format_pair(p, r) for p, r in zip(prompts, responses)]
        # Similar lengths together waste less padding; the order is restored below.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        scores = [0.0] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            for i, s in zip(idx, self._score_batch([texts[i] for i in idx])):
                scores[i] = s
        return scores


def make_judge(spec: str, device: str | torch.device = "cpu", *,
               dtype: str | torch.dtype = torch.float32, batch_size: int = 8) -> Judge:
    """``"sentiment"`` -> :class:`SentimentJudge`; anything else is a reward-model folder."""
    if spec == SENTIMENT_SPEC:
        return SentimentJudge()
    return RewardModelJudge(spec, device=device, dtype=dtype, batch_size=batch_size)
