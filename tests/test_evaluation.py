"""Judges, statistics against hand-computed numbers, sequence log-probs/KL, and plots."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.evaluation.judges import RewardModelJudge, SentimentJudge, make_judge
from aligndistil_cli.evaluation.kl import reward_scores, sequence_kl, sequence_logps
from aligndistil_cli.evaluation.plots import plot_frontier, plot_training_curves
from aligndistil_cli.evaluation.stats import (
    distinct_n,
    mean_ci95,
    reward_accuracy,
    reward_ties,
    t_quantile,
    win_rate,
)
from conftest import build_model, build_tokenizer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------------- judges


def test_vader_sign_on_known_sentences():
    judge = SentimentJudge()
    pos, neutral, neg = judge.score_texts(
        ["This movie was wonderful, I loved it!", "The film is ninety minutes long.",
         "A terrible, boring and awful film."])
    assert pos > 0.5 and neg < -0.5 and neutral == 0.0
    assert judge.score(["prompt a", "prompt b"], ["great fun", "awful mess"]) == \
        judge.score_texts(["great fun", "awful mess"])  # the prompt is not scored


def test_missing_vader_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    with pytest.raises(AlignDistilError) as err:
        make_judge("sentiment", "cpu")
    assert err.value.hint == "pip install vaderSentiment==3.3.2"


def _save_classifier(path, tokenizer, num_labels: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, num_labels=num_labels,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=None)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # the score head starts near zero; make scores clearly distinct
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


PROMPTS = ["what is the capital of France?", "say something nice", "tell a story"]
RESPONSES = ["Paris is the capital.", "the movie was great and the acting was wonderful",
             "a good answer is short"]


@pytest.mark.parametrize("chat_template", [True, False])
def test_reward_model_judge_plumbing(tmp_path, tokenizer, chat_template):
    tok = tokenizer if chat_template else build_tokenizer(chat_template=None)
    path = _save_classifier(tmp_path / "rm", tok, num_labels=1)
    judge = make_judge(str(path), "cpu", batch_size=2)
    assert isinstance(judge, RewardModelJudge) and judge.name == "rm"
    scores = judge.score(PROMPTS, RESPONSES)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    assert judge.score(PROMPTS, RESPONSES) == scores  # deterministic
    one_by_one = [judge.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert one_by_one == pytest.approx(scores, abs=1e-5)  # padding does not change a score
    changed = judge.score(PROMPTS[:1], ["Paris is the capital. awful and dull"])[0]
    assert abs(changed - scores[0]) > 1e-4


def test_reward_model_two_labels_is_logit_difference(tmp_path, tokenizer):
    path = _save_classifier(tmp_path / "rm2", tokenizer, num_labels=2, seed=1)
    judge = RewardModelJudge(path, "cpu", batch_size=4)
    text = judge.format_pair(PROMPTS[0], RESPONSES[0])
    assert text.startswith("<|im_start|>user\n") and RESPONSES[0] in text
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = judge.model(input_ids=ids).logits[0]
    assert judge.score(PROMPTS[:1], RESPONSES[:1])[0] == pytest.approx(
        float(logits[1] - logits[0]), abs=1e-5)


def test_reward_model_folder_errors(tmp_path, tokenizer):
    with pytest.raises(AlignDistilError):
        make_judge(str(tmp_path / "missing"), "cpu")
    (tmp_path / "nosafe").mkdir()
    (tmp_path / "nosafe" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(AlignDistilError):
        make_judge(str(tmp_path / "nosafe"), "cpu")
    path = _save_classifier(tmp_path / "rm3", tokenizer, num_labels=3)
    with pytest.raises(AlignDistilError):
        make_judge(str(path), "cpu")


# ----------------------------------------------------------------------------------- stats


def test_win_rate_ties_count_half():
    """[1, 0, 0.5] vs [0, 0, 0.5]: win, tie, tie -> (1 + 0.5 + 0.5) / 3."""
    assert win_rate([1, 0, 0.5], [0, 0, 0.5]) == pytest.approx(2 / 3)
    assert win_rate([0, 0], [1, 1]) == 0.0
    with pytest.raises(ValueError):
        win_rate([1], [1, 2])


def test_mean_ci95_by_hand():
    """x = [1, 2, 3, 4]: mean 2.5, s = sqrt(5/3) = 1.29099, t_{0.975,3} = 3.18245,
    half width = 3.18245 * 1.29099 / 2 = 2.05426 -> (2.5, 0.44574, 4.55426)."""
    mean, low, high = mean_ci95([1, 2, 3, 4])
    assert mean == 2.5
    assert low == pytest.approx(0.44574, abs=1e-4) and high == pytest.approx(4.55426, abs=1e-4)
    m1, l1, h1 = mean_ci95([0.7])
    assert m1 == 0.7 and math.isnan(l1) and math.isnan(h1)
    assert mean_ci95([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (10, 2.2281),
                                         (30, 2.0423), (1000, 1.9623)])
def test_t_quantile_table(df, expected):
    """Values from the standard two-sided 95 % t table."""
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)


def test_distinct_2_by_hand():
    """'a b a b' -> ab, ba, ab; 'a b c' -> ab, bc; 'x' -> none. Unique {ab, ba, bc} = 3 of 5."""
    assert distinct_n(["a b a b", "a b c", "x"], n=2) == pytest.approx(3 / 5)
    assert distinct_n(["a b c"], n=1) == 1.0
    assert distinct_n(["x"], n=2) == 0.0


def test_reward_accuracy_strict_with_ties_reported():
    """Pairs: 2>1 yes, 0>1 no, 3=3 tie (no), 5>-1 yes -> 2/4 accurate, 1 tie."""
    chosen, rejected = [2.0, 0.0, 3.0, 5.0], [1.0, 1.0, 3.0, -1.0]
    assert reward_accuracy(chosen, rejected) == 0.5
    assert reward_ties(chosen, rejected) == 1


# -------------------------------------------------------------------------------------- kl


def manual_logp(model, prompt, response, vocab_size=None) -> float:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    if vocab_size is not None:
        logits = logits[:, :vocab_size]
    logp = torch.log_softmax(logits.float(), -1)
    return sum(float(logp[len(prompt) + t - 1, tok]) for t, tok in enumerate(response))


@pytest.mark.parametrize("pad_head", [False, True])
def test_sequence_logps_matches_manual(tokenizer, pad_head):
    n = len(tokenizer)
    model = build_model(tokenizer, seed=4, vocab_size=n + 8 if pad_head else None)
    vocab = n if pad_head else None
    eos = tokenizer.eos_token_id
    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [enc("Human: hi"), enc("the movie was great and the acting"), enc("a")]
    responses = [enc(" Paris") + [eos], enc(" was wonderful") + [eos], [eos]]
    got = sequence_logps(model, prompts, responses, batch_size=2, vocab_size=vocab, device="cpu")
    assert got.shape == (3,) and got.dtype == torch.float32
    want = [manual_logp(model, p, r, vocab) for p, r in zip(prompts, responses)]
    assert got.tolist() == pytest.approx(want, abs=1e-4)


def test_sequence_kl_and_reward_scores_by_hand():
    """log pi = [-1, -2, -3], log pi_ref = [-2, -2, -5] -> differences [1, 0, 2], mean 1."""
    pol, ref = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -2.0, -5.0])
    assert sequence_kl(pol, ref) == pytest.approx(1.0)
    assert sequence_kl(pol, pol) == 0.0
    assert reward_scores(pol, ref, beta=0.1).tolist() == pytest.approx([0.1, 0.0, 0.2])


# ----------------------------------------------------------------------------------- plots


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1024
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporaries left


def test_plot_frontier_writes_png(tmp_path):
    points = [
        {"name": "reference", "kl": 0.0, "reward": 0.2, "reward_low": 0.1, "reward_high": 0.3},
        {"name": "dpo", "kl": 3.0, "reward": 0.4, "reward_low": 0.3, "reward_high": 0.5,
         "group": "dpo"},
        {"name": "aligndistil b=0.5", "kl": 1.0, "reward": 0.35, "reward_low": math.nan,
         "reward_high": math.nan, "group": "aligndistil"},
        {"name": "aligndistil b=2", "kl": 2.0, "reward": 0.5, "reward_low": 0.4,
         "reward_high": 0.6, "group": "aligndistil"},
    ]
    path = tmp_path / "plots" / "frontier.png"
    plot_frontier(points, path)
    _assert_png(path)
    with pytest.raises(AlignDistilError):
        plot_frontier([], tmp_path / "empty.png")


def test_plot_training_curves_only_present_metrics(tmp_path):
    runs = {
        "dpo": [{"step": s, "loss": 0.7 - 0.01 * s, "rewards/margin": 0.1 * s, "lr": 1e-6}
                for s in range(1, 11)],
        "distill": [{"step": s, "loss": 1.0 / s, "kl_student_to_teacher": 0.5 / s,
                     "note": "text"} for s in range(1, 6)],
    }
    path = tmp_path / "curves" / "training.png"
    plotted = plot_training_curves(runs, path)
    assert plotted == ["loss", "rewards/margin", "kl_student_to_teacher"]
    _assert_png(path)
    assert plot_training_curves(runs, tmp_path / "c2" / "t.png", keys=("loss", "missing")) == \
        ["loss"]
    with pytest.raises(AlignDistilError):
        plot_training_curves(runs, tmp_path / "t3.png", keys=("missing",))
