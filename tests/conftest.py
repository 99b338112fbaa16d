"""Shared fixtures: a tokenizer trained here and tiny random Llama models (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "the movie was great and the acting was wonderful",
    "the film was terrible and the plot was boring",
    "I loved this story, a truly delightful experience",
    "what a waste of time, awful and dull",
    "Human: what is the capital of France? Assistant: Paris is the capital.",
    "a good answer is short and helpful; a bad answer rambles on and on",
    "numbers 0 1 2 3 4 5 6 7 8 9 and punctuation . , ! ? : ; ' \" ( )",
] * 20


def build_tokenizer(chat_template: str | None = CHATML):
    """A byte-level BPE tokenizer (~300 tokens) with ChatML specials, trained on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_model(tokenizer, seed: int = 0, vocab_size: int | None = None, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    cfg.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def save_model(path: Path, tokenizer, seed: int = 0, **overrides) -> Path:
    model = build_model(tokenizer, seed=seed, **overrides)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny random Llama folder (the 'reference model' of the tests)."""
    return save_model(tmp_path_factory.mktemp("models") / "ref", tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, tokenizer):
    """Call with a seed to get another saved tiny model folder sharing the tokenizer."""
    root = tmp_path_factory.mktemp("more-models")

    def make(seed: int, **overrides) -> Path:
        path = root / f"model-{seed}-{abs(hash(tuple(sorted(overrides.items())))) % 10**8}"
        if not path.exists():
            save_model(path, tokenizer, seed=seed, **overrides)
        return path

    return make


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep every test away from the user's caches."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    torch.manual_seed(0)
