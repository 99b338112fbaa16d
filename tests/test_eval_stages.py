"""generate, evaluate and inspect-rewards end to end on tiny random models (no downloads)."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aligndistil_cli.cli.app import app
from aligndistil_cli.cli.eval_commands import register

if "generate" not in [c.name for c in app.registered_commands]:
    register(app)

PROMPTS = ["the movie was", "I loved this story", "what a waste of"]
CANDIDATES = ["the film was great", "awful and dull", "a truly delightful experience",
              "numbers 0 1 2 3", "the plot was boring", "what is the capital of France?"]
BETA = 0.1


def invoke(*args, ok: bool = True):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])


def _encode(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    from aligndistil_cli.data import prepare_responses

    (ex,), _ = prepare_responses([{"prompt": prompt, "response": response}], tokenizer)
    return ex.prompt_ids, ex.response_ids


@functools.lru_cache(maxsize=4)
def _plain_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


@torch.no_grad()
def _direct_logp(model_dir: Path, prompt_ids: list[int], response_ids: list[int]) -> float:
    """log pi(response | prompt) with a plain forward: the test's independent oracle."""
    model = _plain_model(Path(model_dir))
    ids = torch.tensor([prompt_ids + response_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
    return float(picked[len(prompt_ids) - 1:].sum())


def _save_reward_model(path: Path, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------- generate


def test_generate_jsonl_is_resumable_without_duplicates(tmp_path, tiny_model_dir, tokenizer):
    messages = [{"role": "user", "content": "the film was"}]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": PROMPTS[0]}, {"prompt": messages}, {"prompt": PROMPTS[2]}])
    out = tmp_path / "gens" / "g.jsonl"
    args = ["generate", "--model", tiny_model_dir, "--prompts", prompts, "--output", out, "--samples-per-prompt", 2,
            "--max-new-tokens", 6, "--seed", 3, "--device", "cpu"]
    invoke(*args)
    rows = read_jsonl(out)
    assert len(rows) == 6 and {(r["row_id"], r["sample"]) for r in rows} == {(i, s) for i in range(3) for s in (0, 1)}
    assert all(r["generator"] == Path(tiny_model_dir).name and isinstance(r["response"], str) for r in rows)
    assert [r["prompt"] for r in rows if r["row_id"] == 1][0] == messages  # messages kept for re-templating
    full = out.read_bytes()

    invoke(*args)  # complete: nothing appended
    assert out.read_bytes() == full
    lines = full.decode().splitlines(keepends=True)
    out.write_text("".join(lines[:-3]) + lines[-3][:10])  # a lost prompt, a half sample, a torn line
    invoke(*args)
    assert sorted(read_jsonl(out), key=lambda r: (r["row_id"], r["sample"])) == \
        sorted(rows, key=lambda r: (r["row_id"], r["sample"]))  # same samples, no duplicates

    from aligndistil_cli.data import encode_prompt, prepare_responses

    examples, _ = prepare_responses(rows, tokenizer)  # what build-teacher --responses generations reads
    assert len(examples) == 6
    assert examples[2].prompt_ids == encode_prompt(tokenizer, messages)


def test_generate_alpaca_eval_format(tmp_path, tiny_model_dir, prompts_file):
    out = tmp_path / "dpo.jsonl"
    invoke("generate", "--model", tiny_model_dir, "--prompts", prompts_file, "--output", out, "--format",
           "alpaca-eval", "--generator", "my-dpo", "--max-new-tokens", 5, "--max-examples", 2, "--device", "cpu")
    alpaca = json.loads((tmp_path / "dpo.alpaca_eval.json").read_text())
    assert isinstance(alpaca, list) and len(alpaca) == 2
    assert [a["instruction"] for a in alpaca] == PROMPTS[:2]
    assert all(set(a) == {"instruction", "output", "generator"} and a["generator"] == "my-dpo" for a in alpaca)
    assert [a["output"] for a in alpaca] == [r["response"] for r in read_jsonl(out)]


# ------------------------------------------------------------------------------- reward accuracy


def test_reward_accuracy_is_zero_with_all_ties_when_dpo_equals_reference(tmp_path, tiny_model_dir,
                                                                         tiny_model_factory, tokenizer):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": CANDIDATES[i], "rejected": CANDIDATES[i + 3]}
                                                   for i, p in enumerate(PROMPTS)])
    rm = _save_reward_model(tmp_path / "rm", tokenizer)
    out = tmp_path / "eval"
    result = invoke("evaluate", "--pairs", pairs, "--dpo", tiny_model_dir, "--reference", tiny_model_dir,
                    "--reverse-dpo", tiny_model_factory(1), "--reward-model", rm, "--output", out, "--format", "json",
                    "--device", "cpu")
    acc = json.loads(result.stdout)["reward_accuracy"]
    assert acc["dpo_reward"]["accuracy"] == 0.0 and acc["dpo_reward"]["ties"] == 3
    assert acc["dpo_reward"]["margin_mean"] == 0.0
    assert acc["contrastive_reward"]["pairs"] == 3 and acc["contrastive_reward"]["ties"] == 0
    assert acc["reward_model"]["pairs"] == 3 and 0.0 <= acc["reward_model"]["accuracy"] <= 1.0
    saved = json.loads((out / "eval.json").read_text())
    assert saved["reward_accuracy"] == acc and saved["config"]["beta"] == BETA
    assert json.loads((out / "aligndistil.json").read_text())["status"] == "complete"
    again = invoke("evaluate", "--pairs", pairs, "--reward-model", rm, "--output", out, "--device", "cpu", ok=False)
    assert again.exit_code == 2 and "--overwrite" in again.output  # a complete evaluation is not clobbered


def test_reward_accuracy_is_one_on_pairs_built_from_the_dpo_reward(tmp_path, tiny_model_factory, tokenizer):
    dpo, ref = tiny_model_factory(1), tiny_model_factory(2)
    rows, margins = [], []
    for p in PROMPTS:  # chosen = the candidate the DPO reward likes most, rejected = least (oracle)
        scored = []
        for c in CANDIDATES:
            ids = _encode(tokenizer, p, c)
            scored.append((BETA * (_direct_logp(dpo, *ids) - _direct_logp(ref, *ids)), c))
        scored.sort()
        rows.append({"prompt": p, "chosen": scored[-1][1], "rejected": scored[0][1]})
        margins.append(scored[-1][0] - scored[0][0])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    invoke("evaluate", "--pairs", pairs, "--dpo", dpo, "--reference", ref, "--output", tmp_path / "e1",
           "--device", "cpu")
    acc = json.loads((tmp_path / "e1" / "eval.json").read_text())["reward_accuracy"]["dpo_reward"]
    assert acc["accuracy"] == 1.0 and acc["ties"] == 0
    assert acc["margin_mean"] == pytest.approx(sum(margins) / 3, rel=1e-4)
    swapped = write_jsonl(tmp_path / "swapped.jsonl", [{**r, "chosen": r["rejected"], "rejected": r["chosen"]}
                                                       for r in rows])
    invoke("evaluate", "--pairs", swapped, "--dpo", dpo, "--reference", ref, "--output", tmp_path / "e2",
           "--device", "cpu")
    assert json.loads((tmp_path / "e2" / "eval.json").read_text())["reward_accuracy"]["dpo_reward"]["accuracy"] == 0.0


# -------------------------------------------------------------------------------- policy quality


def _fake_run(folder: Path) -> Path:
    folder.mkdir()
    write_jsonl(folder / "metrics.jsonl", [{"step": s, "loss": 1.0 / s, "rewards/accuracies": 0.5 + 0.1 * s}
                                           for s in (1, 2, 3)])
    return folder


def test_policy_quality_with_sentiment_judge(tmp_path, tiny_model_dir, tiny_model_factory, prompts_file):
    other, out = tiny_model_factory(3), tmp_path / "eval"
    result = invoke("evaluate", "--model", tiny_model_dir, "--model", other, "--name", "ref", "--name", "other",
                    "--group", "base", "--group", "base", "--reference", tiny_model_dir, "--prompts", prompts_file,
                    "--judge", "sentiment", "--samples-per-prompt", 2, "--max-new-tokens", 8,
                    "--runs", _fake_run(tmp_path / "run-a"), "--output", out, "--format", "json", "--device", "cpu")
    printed = json.loads(result.stdout)
    saved = json.loads((out / "eval.json").read_text())
    assert printed["policy_quality"] == saved["policy_quality"]
    pq = saved["policy_quality"]
    assert pq["judge"] == "sentiment-vader" and pq["baseline"] == "ref" and pq["prompts"] == 3
    ref, pol = pq["policies"]
    assert ref["win_rate"] == 0.5 and ref["kl"] == 0.0 and ref["kl_low"] == 0.0
    assert [p["group"] for p in pq["policies"]] == ["base", "base"]
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 12 and {s["model"] for s in samples} == {"ref", "other"}
    for p in (ref, pol):
        mine = [s for s in samples if s["model"] == p["name"]]
        assert p["reward"] == pytest.approx(sum(s["score"] for s in mine) / 6)
        assert p["reward_low"] <= p["reward"] <= p["reward_high"]
        assert p["kl"] == pytest.approx(sum(s["logp"] - s["ref_logp"] for s in mine) / 6, abs=1e-5)
        assert 0 < p["length"] <= 8 and 0.0 <= p["distinct_2"] <= 1.0 and 0.0 <= p["win_rate"] <= 1.0
        assert all(-1.0 <= s["score"] <= 1.0 for s in mine)
    ref_scores = [s["score"] for s in samples if s["model"] == "ref"]
    pol_scores = [s["score"] for s in samples if s["model"] == "other"]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(pol_scores, ref_scores)) / 6
    assert pol["win_rate"] == pytest.approx(wins)
    assert math.isfinite(pol["kl"]) and pol["kl"] != 0.0
    for png in ("frontier.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["curves"]["metrics"] == ["loss", "rewards/accuracies"]


def test_policy_quality_with_reward_model_judge(tmp_path, tiny_model_dir, tiny_model_factory, prompts_file,
                                                tokenizer):
    rm = _save_reward_model(tmp_path / "rm", tokenizer)
    out = tmp_path / "eval"
    invoke("evaluate", "--model", tiny_model_factory(3), "--reference", tiny_model_dir, "--prompts", prompts_file,
           "--judge", rm, "--samples-per-prompt", 2, "--max-new-tokens", 6, "--max-prompts", 2, "--output", out,
           "--device", "cpu")
    pq = json.loads((out / "eval.json").read_text())["policy_quality"]
    assert pq["judge"] == "rm" and pq["prompts"] == 2 and pq["baseline"] == "reference"
    (pol,) = pq["policies"]
    samples = read_jsonl(out / "samples.jsonl")
    baseline = [s for s in samples if s["model"] == "reference"]
    assert len(baseline) == 4 and all(s["logp"] == s["ref_logp"] for s in baseline)
    assert 0.0 <= pol["win_rate"] <= 1.0 and math.isfinite(pol["reward"])
    assert (out / "frontier.png").stat().st_size > 0 and not (out / "curves.png").exists()


def test_evaluate_config_errors(tmp_path, tiny_model_dir):
    assert invoke("evaluate", "--output", tmp_path / "e", ok=False).exit_code == 2
    r = invoke("evaluate", "--model", tiny_model_dir, "--prompts", "p.jsonl", "--output", tmp_path / "e", ok=False)
    assert r.exit_code == 2 and "--reference" in r.output
    r = invoke("evaluate", "--pairs", "p.jsonl", "--dpo", tiny_model_dir, "--output", tmp_path / "e", ok=False)
    assert r.exit_code == 2


# ------------------------------------------------------------------------------ inspect-rewards


def _check_tokens(tokens: list[dict], n: int, alpha_max: float = 20.0, eps: float = 1e-3) -> None:
    assert len(tokens) == n and [t["index"] for t in tokens] == list(range(n))
    for t in tokens:
        assert eps - 1e-6 <= t["alpha"] <= alpha_max + eps + 1e-5
        probs = [x["prob"] for x in t["teacher_top"]]
        assert len(probs) == 3 and all(0 < p <= 1 for p in probs) and probs == sorted(probs, reverse=True)


def test_inspect_rewards_live(tmp_path, tiny_model_dir, tiny_model_factory, tokenizer):
    dpo, rev = tiny_model_factory(1), tiny_model_factory(2)
    prompt, response = PROMPTS[1], "a truly delightful experience"
    result = invoke("inspect-rewards", "--dpo", dpo, "--reverse-dpo", rev, "--reference", tiny_model_dir,
                    "--prompt", prompt, "--response", response, "--format", "json", "--device", "cpu")
    tokens = json.loads(result.stdout)
    p_ids, r_ids = _encode(tokenizer, prompt, response)
    _check_tokens(tokens, len(r_ids))
    assert [t["token_id"] for t in tokens] == r_ids and tokens[0]["position"] == len(p_ids)
    contrast = BETA * (_direct_logp(dpo, p_ids, r_ids) - _direct_logp(rev, p_ids, r_ids))
    dpo_r = BETA * (_direct_logp(dpo, p_ids, r_ids) - _direct_logp(tiny_model_dir, p_ids, r_ids))
    assert sum(t["contrastive_reward"] for t in tokens) == pytest.approx(contrast, abs=1e-4)
    assert sum(t["dpo_reward"] for t in tokens) == pytest.approx(dpo_r, abs=1e-4)

    table = invoke("inspect-rewards", "--dpo", dpo, "--reverse-dpo", rev, "--prompt", prompt, "--response", response,
                   "--alpha", "2.0", "--device", "cpu").output
    assert "contrastive_reward" in table and "dpo_reward" not in table and "2.000" in table
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": CANDIDATES[i], "rejected": CANDIDATES[i + 3]}
                                                   for i, p in enumerate(PROMPTS)])
    rej = json.loads(invoke("inspect-rewards", "--dpo", dpo, "--reverse-dpo", rev, "--data", pairs, "--index", 1,
                            "--responses", "rejected", "--format", "json", "--device", "cpu").stdout)
    _check_tokens(rej, len(_encode(tokenizer, PROMPTS[1], CANDIDATES[4])[1]))
    bad = invoke("inspect-rewards", "--dpo", dpo, "--reverse-dpo", rev, "--prompt", prompt, ok=False)
    assert bad.exit_code == 2


def test_inspect_rewards_from_a_build_teacher_cache(tmp_path, tiny_model_dir, tiny_model_factory):
    dpo, rev = tiny_model_factory(1), tiny_model_factory(2)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": CANDIDATES[i], "rejected": CANDIDATES[i + 3]}
                                                   for i, p in enumerate(PROMPTS)])
    cache = tmp_path / "teacher"
    invoke("build-teacher", "--dpo", dpo, "--reverse-dpo", rev, "--data", pairs, "--output", cache, "--top-k", 8,
           "--device", "cpu")
    cached = json.loads(invoke("inspect-rewards", "--teacher", cache, "--index", 2, "--tokenizer", tiny_model_dir,
                               "--format", "json").stdout)
    live = json.loads(invoke("inspect-rewards", "--dpo", dpo, "--reverse-dpo", rev, "--data", pairs, "--index", 2,
                             "--format", "json", "--device", "cpu").stdout)
    _check_tokens(cached, len(live))
    for c, lv in zip(cached, live):
        assert (c["token_id"], c["token"], c["position"]) == (lv["token_id"], lv["token"], lv["position"])
        assert c["alpha"] == pytest.approx(lv["alpha"], abs=1e-4)
        assert c["contrastive_reward"] == pytest.approx(lv["contrastive_reward"], abs=1e-4)
        assert [x["prob"] for x in c["teacher_top"]] == pytest.approx([x["prob"] for x in lv["teacher_top"]], abs=2e-3)
    ids_only = json.loads(invoke("inspect-rewards", "--teacher", cache, "--format", "json").stdout)
    assert ids_only[0]["token"] == f"<{ids_only[0]['token_id']}>"
    table = invoke("inspect-rewards", "--teacher", cache, "--index", 1, "--tokenizer", tiny_model_dir).output
    assert "inspect-rewards (cache)" in table and "contrastive_reward" in table
    both = invoke("inspect-rewards", "--teacher", cache, "--dpo", dpo, ok=False)
    assert both.exit_code == 2 and "--teacher" in both.output
