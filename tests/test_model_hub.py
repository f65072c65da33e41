"""Hub ids resolve through huggingface_hub's cache, offline, in the cache's real on-disk layout.

No hub is reachable here, so each test lays out `HF_HOME/hub/models--org--name/` as the Hub's
tools write it (`blobs/SHA`, `snapshots/COMMIT/FILE -> ../../blobs/SHA`, `refs/BRANCH`) and sets
HF_HUB_OFFLINE=1; srlm must find the snapshot the ref points at, and say clearly what is missing.
"""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

import srlm
from srlm import cli
from srlm.errors import SrlmError
from srlm.model import CausalLM, preset, save
from srlm.model.hub import is_hub_id, resolve
from srlm.tokenizer import train_bpe

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def _lay_out(hub: Path, repo: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",)) -> Path:
    """Write `files` into the Hub cache as snapshot `commit` of `repo`, with `refs` pointing at it."""
    root = hub / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    for name, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        blob = root / "blobs" / sha
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snap


def _checkpoint_files(tmp: Path, seed: int) -> dict[str, bytes]:
    torch.manual_seed(seed)
    tok = train_bpe(["the cat sat on the mat 12 + 30 = 42"] * 20, 300)
    model = CausalLM(
        preset(
            "tiny",
            vocab_size=tok.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            eos_token_id=tok.eos_token_id,
        )
    )
    with torch.no_grad():  # far from init, so two seeds generate different text
        for w in model.parameters():
            w.add_(torch.randn_like(w) * 0.5)
    folder = save(model, tmp / f"ck{seed}", tokenizer=tok)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files["pytorch_model.bin"] = b"a pickle srlm must never download or read"
    return files


@pytest.fixture
def hub(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub"


def test_hub_id_loads_the_snapshot_its_ref_points_at(hub, tmp_path):
    snap = _lay_out(hub, "org/tiny", COMMIT_A, _checkpoint_files(tmp_path, 0))
    _lay_out(hub, "org/tiny", COMMIT_B, _checkpoint_files(tmp_path, 1), refs=("v2",))
    assert resolve("org/tiny") == snap
    assert resolve("org/tiny", revision="v2").name == COMMIT_B
    assert resolve("org/tiny", revision=COMMIT_B).name == COMMIT_B

    model, tok = srlm.load("org/tiny")
    direct, _ = srlm.load(tmp_path / "ck0")
    other, _ = srlm.load("org/tiny", revision="v2")
    ids = torch.tensor([tok.encode("the cat sat 12")])
    with torch.no_grad():
        assert torch.equal(model(ids), direct(ids))
        assert not torch.equal(model(ids), other(ids))
    assert tok.encode("the mat") == srlm.load(tmp_path / "ck0")[1].encode("the mat")


def test_offline_and_not_cached_is_one_clear_error(hub):
    with pytest.raises(SrlmError, match=r"org/absent: no such local path, and not in the Hub cache .*HF_HUB_OFFLINE"):
        srlm.load("org/absent")
    assert cli.main(["info", "org/absent"]) == 1


def test_unknown_revision_offline_is_refused(hub, tmp_path):
    _lay_out(hub, "org/tiny", COMMIT_A, _checkpoint_files(tmp_path, 0))
    with pytest.raises(SrlmError, match="revision 'v9'.*HF_HUB_OFFLINE"):
        resolve("org/tiny", revision="v9")


def test_pickles_only_is_refused(hub):
    _lay_out(hub, "org/pickled", COMMIT_A, {"config.json": b'{"model_type": "llama"}', "pytorch_model.bin": b"pickle"})
    with pytest.raises(SrlmError, match="no safetensors weights; srlm never loads pickles"):
        resolve("org/pickled")


def test_what_reads_as_a_hub_id(tmp_path):
    assert is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") and is_hub_id("Qwen/Qwen2.5-0.5B-Instruct")
    assert is_hub_id("org/name/model-Q8_0.gguf")
    assert (
        not is_hub_id("runs/sft/final")
        and not is_hub_id("./a/b")
        and not is_hub_id("/abs/path")
        and not is_hub_id("tiny")
    )
    (tmp_path / "ck").mkdir()
    with pytest.raises(SrlmError, match="applies to Hub ids"):
        resolve(tmp_path / "ck", revision="main")
    with pytest.raises(SrlmError, match="not a checkpoint folder or GGUF file"):
        resolve(tmp_path / "nothere" / "x.gguf")


def test_cli_verbs_and_training_take_hub_ids(hub, tmp_path, capsys):
    _lay_out(hub, "org/tiny", COMMIT_A, _checkpoint_files(tmp_path, 0))
    _lay_out(hub, "org/tiny", COMMIT_B, _checkpoint_files(tmp_path, 1), refs=("v2",))
    assert cli.main(["info", "org/tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"] == 1 and info["tokenizer"] and info["chat_template"]

    def generate(*extra):
        assert cli.main(["generate", "org/tiny", "--prompt", "the cat", "--max-new-tokens", "6", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)["completions"][0]["token_ids"]

    assert generate() == generate("--revision", "main") != generate("--revision", "v2")

    from srlm.train.config import load_config
    from srlm.train.loop import build_model
    from srlm.train.sft import SFTConfig

    cfg = load_config(SFTConfig, None, {"model": "org/tiny", "revision": "v2", "out_dir": str(tmp_path / "o")})
    model, tok = build_model(cfg)
    expect, _ = srlm.load(tmp_path / "ck1")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expect.state_dict().values()))
    assert tok is not None and tok.eos_token_id == expect.config.eos_token_id


def test_a_gguf_file_in_a_hub_repository(hub, tmp_path):
    from srlm.model.gguf import export

    torch.manual_seed(0)
    tok = train_bpe(["the cat sat on the mat 12 + 30 = 42"] * 20, 300)
    model = CausalLM(
        preset(
            "tiny",
            vocab_size=tok.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    path = export(model, tok, tmp_path / "m-f32.gguf", "f32")
    _lay_out(hub, "org/tiny-GGUF", COMMIT_A, {"m-f32.gguf": path.read_bytes(), "README.md": b"# tiny"})
    loaded, loaded_tok = srlm.load("org/tiny-GGUF/m-f32.gguf")
    ids = torch.tensor([tok.encode("the cat")])
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert loaded_tok.encode("the mat 12") == tok.encode("the mat 12")
    with pytest.raises(SrlmError, match="org/tiny-GGUF/other.gguf.*HF_HUB_OFFLINE"):
        srlm.load("org/tiny-GGUF/other.gguf")
