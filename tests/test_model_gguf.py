"""GGUF import and export on small synthetic models (no llama.cpp needed; see test_llama_cpp.py for that).

Each test builds a tiny random srlm model and a trained BPE tokenizer, writes a GGUF with gguf's own
writer (through srlm's exporter, or with another tensor encoding for the types srlm does not export),
and checks what comes back: exact tensors for f32, exactly gguf's dequantization for every other type,
the tokenizer id for id, and the configuration.
"""

import json

import numpy as np
import pytest
import torch

import srlm
from _gguf_fixtures import TEXTS, tiny
from srlm import cli
from srlm.data.synthetic import corpus_lines
from srlm.errors import SrlmError
from srlm.model import gguf as G
from srlm.model.checkpoint import hf_state_dict
from srlm.tokenizer import train_bpe


@pytest.fixture(scope="module")
def tok():
    return train_bpe(list(corpus_lines(200)) + TEXTS, 420)


def ids_for(tok):
    return torch.tensor([tok.encode(TEXTS[0])[:24]])


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_f32_round_trip_is_exact(model_type, tok, tmp_path):
    model = tiny(model_type, tok)
    path = G.export(model, tok, tmp_path / "m.gguf", "f32")
    config, tensors, tok2 = G.read(path)
    ref = hf_state_dict(model)
    if model.config.tie_word_embeddings:
        assert "lm_head.weight" not in tensors
    assert set(tensors) == set(ref)
    for k, v in ref.items():
        assert torch.equal(tensors[k], v), k  # the llama q/k permutation undone exactly
    for field in (
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "tie_word_embeddings",
        "attention_bias",
        "eos_token_id",
        "pad_token_id",
    ):
        assert getattr(config, field) == getattr(model.config, field), field
    for text in TEXTS:
        assert tok2.encode(text) == tok.encode(text)
    assert tok2.vocab_size == tok.vocab_size  # the [PAD] rows of the embedding are not tokens
    assert tok2.special_tokens == {k: v for k, v in tok.special_tokens.items()}
    assert tok2.chat_template == tok.chat_template
    msgs = [{"role": "user", "content": "What is 12 + 30?"}]
    assert tok2.apply_chat_template(msgs, add_generation_prompt=True) == tok.apply_chat_template(
        msgs, add_generation_prompt=True
    )
    assert tok2.eos_token_ids == tok.eos_token_ids
    loaded, _ = srlm.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(ids_for(tok)), model(ids_for(tok)))


def _check_read(path, expected: dict, config):
    """srlm's tensors equal `expected` (gguf names -> what gguf dequantizes), q/k rows un-permuted for llama."""
    _, tensors, _ = G.read(path)
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    assert len(tensors) == len(expected)
    for gname, want in expected.items():
        m = G._BLOCK_RE.match(gname)
        if m and m.group(2) in heads:
            want = G._unpermute(want, heads[m.group(2)])
        np.testing.assert_array_equal(tensors[G._hf_name(gname, "")].numpy(), want, err_msg=gname)


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantized_files_read_back_as_gguf_dequantizes_them(qtype, tok, tmp_path):
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize

    q = Q[qtype]
    model = tiny("llama", tok, pad_rows=0)
    expected, used = {}, set()

    def encode(name, arr):
        t = G._quant_type(name, arr.shape, q)
        data = quantize(arr.astype(np.float32), t)
        expected[name], _ = dequantize(data, t), used.add(t)
        return data, t

    path = G.write(model, tok, tmp_path / "m.gguf", encode, 0)
    assert q in used
    _check_read(path, expected, model.config)
    loaded, _ = srlm.load(path)
    with torch.no_grad():
        err = (loaded(ids_for(tok)) - model(ids_for(tok))).abs().max()
    assert 0 < err < {"F16": 1e-2, "BF16": 5e-2, "Q8_0": 5e-2}.get(qtype, 0.5)


# byte offsets of the fp16 d (and dmin) fields in each K-quant block (ggml-common.h)
SCALE_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


@pytest.mark.parametrize("qtype", sorted(SCALE_OFFSETS))
def test_k_quants_are_dequantized_and_unpermuted(qtype, tok, tmp_path):
    """gguf cannot write K-quants, so the file holds random K-quant blocks; srlm must give back exactly
    gguf's dequantization of each, with llama's q/k rows un-permuted."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    q = Q[qtype]
    block, size = GGML_QUANT_SIZES[q]
    model = tiny("llama", tok, pad_rows=0, hidden_size=256, intermediate_size=256, head_dim=64)
    rng = np.random.default_rng(0)
    expected = {}

    def encode(name, arr):
        if arr.ndim == 1 or arr.shape[-1] % block:
            expected[name] = arr
            return arr.astype(np.float32), Q.F32
        data = rng.integers(0, 256, (arr.shape[0], arr.shape[1] // block * size), dtype=np.uint8)
        for at in SCALE_OFFSETS[qtype]:  # finite fp16 super-block scales (random bits would make NaNs)
            data.reshape(-1, size)[:, at : at + 2] = np.frombuffer(np.float16(1 / 256).tobytes(), np.uint8)
        expected[name] = dequantize(data, q)
        return data, q

    path = G.write(model, tok, tmp_path / "k.gguf", encode, 0)
    assert sum(t.tensor_type == q for t in G._open(path).tensors) == 1 + 2 * 7
    _check_read(path, expected, model.config)


def test_convert_gives_a_folder_transformers_loads_with_srlm_logits(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny("llama", tok)
    G.export(model, tok, tmp_path / "m.gguf", "q8_0")
    assert cli.main(["convert", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "folder")]) == 0
    ours, _ = srlm.load(tmp_path / "m.gguf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "folder", dtype=torch.float32).eval()
    ids = ids_for(tok)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "folder")
    for text in TEXTS:
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)


def test_export_matches_transformers_gguf_loader(tok, tmp_path):
    """transformers' own GGUF reader (an implementation independent of srlm's) gets srlm's logits from an
    export: the q/k permutation and the names follow llama.cpp's convention, not just srlm's inverse."""
    transformers = pytest.importorskip("transformers")
    model = tiny("llama", tok, pad_rows=0)
    srlm.save(model, tmp_path / "ck", tokenizer=tok)
    assert cli.main(["export", str(tmp_path / "ck"), "--type", "f32", "--out", str(tmp_path / "x" / "m.gguf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "x", gguf_file="m.gguf", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(ids_for(tok)).logits, model(ids_for(tok)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ],
)
def test_rope_scaling_round_trips(scaling, tok, tmp_path):
    model = tiny("llama", tok, rope_scaling=scaling, rope_theta=500000.0)
    path = G.export(model, tok, tmp_path / "r.gguf", "f32")
    config, _ = G.read_header(path)
    assert config.rope_scaling == scaling
    loaded, _ = srlm.load(path)
    ids = torch.tensor([tok.encode(" ".join(TEXTS))[:200]])  # long enough for the scaled frequencies to matter
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_layer_sharing_is_exported_expanded(tok, tmp_path):
    model = tiny("llama", tok, layer_share=2)
    path = G.export(model, tok, tmp_path / "s.gguf", "f32")
    loaded, _ = srlm.load(path)
    assert loaded.config.num_hidden_layers == 4 and loaded.config.layer_share == 1
    with torch.no_grad():
        assert torch.equal(loaded(ids_for(tok)), model(ids_for(tok)))


def test_pre_tokenizer_names_follow_llama_cpp(tok):
    from tokenizers import Regex, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    from srlm.tokenizer import Tokenizer

    assert G.pre_tokenizer_name(tok) == "qwen2"

    def named(pre, normalizer=None, ignore_merges=False):
        b = Backend(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")], ignore_merges=ignore_merges))
        b.pre_tokenizer = pre
        b.normalizer = normalizer
        from tokenizers import decoders

        b.decoder = decoders.ByteLevel()
        return G.pre_tokenizer_name(Tokenizer(b))

    byte = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert (
        named(
            pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(G.LLAMA3_SPLIT_REGEX), "isolated"), byte]),
            ignore_merges=True,
        )
        == "llama-bpe"
    )
    assert (
        named(
            pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
            )
        )
        == "smollm"
    )
    assert named(pre_tokenizers.ByteLevel(add_prefix_space=False)) == "gpt-2"
    assert (
        named(
            pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(G.QWEN2_SPLIT_REGEX), "isolated"), byte]),
            normalizers.NFC(),
        )
        == "qwen2"
    )
    with pytest.raises(SrlmError, match="not one llama.cpp implements"):
        named(pre_tokenizers.Whitespace())
    with pytest.raises(SrlmError, match="not one llama.cpp implements"):  # llama3's split but without ignore_merges
        named(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(G.LLAMA3_SPLIT_REGEX), "isolated"), byte]))
    with pytest.raises(SrlmError, match="normalizer Lowercase"):
        named(pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.Lowercase())


def _write_raw(path, arch="llama", **meta):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        if isinstance(value, list):
            w.add_array(key, value)
        else:
            w.add_string(key, value)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_errors_name_the_file_and_field(tok, tmp_path):
    with pytest.raises(SrlmError, match="mlp_bias"):
        G.export(tiny("llama", tok, mlp_bias=True), tok, tmp_path / "b.gguf", "f16")
    with pytest.raises(SrlmError, match="--type 'q3'"):
        G.export(tiny("llama", tok), tok, tmp_path / "b.gguf", "q3")
    assert not list(tmp_path.glob("*.gguf*"))  # nothing half-written
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(SrlmError, match="junk.gguf: not a readable GGUF file"):
        srlm.load(tmp_path / "junk.gguf")
    with pytest.raises(SrlmError, match="general.architecture is 'gemma'"):
        G.read(_write_raw(tmp_path / "g.gguf", arch="gemma"))
    spm = _write_raw(tmp_path / "s.gguf", **{"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(SrlmError, match="tokenizer.ggml.model is 'llama'"):
        G.tokenizer_from_metadata(G._metadata(G._open(spm)), str(spm))
    odd = _write_raw(
        tmp_path / "p.gguf",
        **{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "nosuch", "tokenizer.ggml.tokens": ["a"]},
    )
    with pytest.raises(SrlmError, match="tokenizer.ggml.pre is 'nosuch'"):
        G.tokenizer_from_metadata(G._metadata(G._open(odd)), str(odd))
    with pytest.raises(SrlmError, match="a .gguf file"):
        cli_main_convert_folder(tmp_path)


def cli_main_convert_folder(tmp_path):
    from srlm.commands import convert

    folder = tmp_path / "folder"
    folder.mkdir()
    return convert.main(
        type("A", (), {"path": str(folder), "out": str(tmp_path / "o"), "dtype": None, "revision": None})()
    )


def test_info_reads_only_the_header(tok, tmp_path, capsys):
    path = G.export(tiny("qwen3", tok), tok, tmp_path / "q.gguf", "q8_0")
    assert cli.main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"].startswith("qwen3 (2 layers x 64") and info["chat_template"] and info["tokenizer"]
