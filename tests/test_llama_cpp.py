"""srlm's GGUF exports checked in llama.cpp itself (llama-cpp-python; CI builds and installs it).

- llama.cpp's tokenizer gives srlm's ids, for a tokenizer srlm trained and for SmolLM2's, on text
  with digits, spaces, tabs, newlines, unicode and the chat template's special tokens;
- f32 and f16 exports generate srlm's greedy tokens, token for token, for 64 tokens, on a trained
  tiny checkpoint and on SmolLM2-135M-Instruct; q8_0 reports its teacher-forced agreement.
  llama.cpp runs with an f32 KV cache (its default is f16), and srlm computes an f16 file the way
  ggml's CPU kernels do: f16 weights, each matmul's input rounded to f16, products summed in f32;
- `srlm eval --backend llama.cpp` on the f32 export gives srlm's outputs on held-out problems,
  and q8_0's accuracy is reported next to srlm's.
"""

import json

import pytest
import torch

import srlm
from _gguf_fixtures import tiny
from _real_model import smollm2_gguf
from srlm import cli
from srlm.data.synthetic import corpus_lines
from srlm.infer.engine import Engine
from srlm.model import gguf as G

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (.ci/install-llama-cpp)")

NEW_TOKENS = 64


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread here: where the 2 cores are shared, two threads wait on each other at every small op
    of a decode step (several times slower); llama.cpp gets one thread too."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CORPUS = [
    "Tom has 12 apples and eats 3. 12 - 3 = 9; 1234567 + 0.5 = 1234567.5, 3..3 3...3 33333333",
    "  two leading spaces\tand\ttabs\n\n\nthree newlines\r\n   and  trailing spaces   ",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "unicode: café naïve Ελληνικά Български 日本語 我想在apple工作1314151天～ 🦙🚀😶‍🌫️ e\u0301 ①②",
    'code: def f(x):\n    return x**2  # comment ------======= """"......!!!!!!??????',
]
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 17 + 25?\nThink step by step."},
    {"role": "assistant", "content": "<think>\n17 + 25 = 42\n</think>\nThe answer is 42."},
    {"role": "user", "content": "And 42 * 2?"},
]


def _lc(path, **kw):
    """llama.cpp on `path` with an f32 KV cache, so attention is computed as srlm computes it."""
    return llama_cpp.Llama(
        str(path),
        n_ctx=kw.pop("n_ctx", 512),
        n_threads=1,
        verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        **kw,
    )


def _as_ggml_computes(model, typ: str):
    """For an f16 file, round every Linear's input to f16 (ggml converts a matmul's activations to its f16
    weights' type, then sums the products in f32); f32 files need nothing."""
    if typ == "f16":
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.register_forward_pre_hook(lambda _, args: (args[0].to(torch.float16).to(args[0].dtype),))
    return model


def _lc_greedy(llm, ids, n=NEW_TOKENS):
    out = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(tok)
        if len(out) == n:
            return out
    return out


def _our_greedy(model, tok, ids, n=NEW_TOKENS):
    return Engine(model, tok).generate([ids], max_new_tokens=n, temperature=0, stop_token_ids=[])[0][0].token_ids


def _same_tokens(tok, path):
    llm = _lc(path, vocab_only=True)
    texts = CORPUS + [tok.render_chat(MESSAGES, add_generation_prompt=True)]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text), text
    assert llm.tokenize(b"Hello 123", add_bos=True, special=True) == tok.encode("Hello 123", add_special_tokens=True)


# --------------------------------------------------------------------- a tiny checkpoint srlm trained


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from srlm.tokenizer import train_bpe
    from srlm.train.config import load_config
    from srlm.train.sft import SFTConfig, run

    root = tmp_path_factory.mktemp("trained")
    tok = train_bpe(list(corpus_lines(300, families=["arith"])) + CORPUS, 320)
    tok.save(root / "tok")
    run(
        load_config(
            SFTConfig,
            None,
            {
                "out_dir": str(root / "sft"),
                "tokenizer": str(root / "tok"),
                "model": "tiny",
                "model_overrides": {
                    "hidden_size": 64,
                    "intermediate_size": 128,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 2,
                },
                "data": ["synth-arith"],
                "data_options": {"n_train": 4000, "difficulties": [1]},
                "think": False,
                "steps": 800,
                "batch_size": 32,
                "lr": 5e-3,
                "warmup_steps": 10,
                "dtype": "fp32",
                "num_threads": 1,
                "progress": False,
                "max_seq_len": 96,
                "log_every": 100,
            },
        )
    )  # enough to solve some held-out problems
    folder = root / "sft" / "final"
    for typ in ("f32", "f16", "q8_0"):
        assert cli.main(["export", str(folder), "--type", typ, "--out", str(root / f"tiny-{typ}.gguf")]) == 0
    return folder, root


def test_llama_cpp_tokenizes_a_trained_tokenizer_as_srlm_does(trained):
    folder, root = trained
    _, tok = srlm.load(folder)
    assert G.pre_tokenizer_name(tok) == "qwen2"
    _same_tokens(tok, root / "tiny-f32.gguf")


@pytest.mark.parametrize("typ", ["f32", "f16"])
def test_trained_checkpoint_greedy_equals_srlm(trained, typ):
    folder, root = trained
    path = root / f"tiny-{typ}.gguf"
    model, tok = srlm.load(path, dtype="float32")  # the file's weights (f16-rounded for f16), computed in fp32
    model = _as_ggml_computes(model, typ)
    llm = _lc(path)
    for content in ("What is 7 + 5?", "Sam has 3 cats and buys 4 more. How many cats?"):
        ids = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        assert _lc_greedy(llm, ids) == _our_greedy(model, tok, ids)


def test_eval_through_llama_cpp_scores_what_srlm_scores(trained, tmp_path, capsys, record_property):
    from srlm.data.synthetic import generate_problems, save_jsonl

    folder, root = trained
    heldout = tmp_path / "heldout.jsonl"
    save_jsonl(generate_problems("arith", 48, split="test", difficulties=[1]), heldout)
    common = ["--task", "synth-arith", "--data", str(heldout), "--chat", "--max-new-tokens", "32", "--no-progress"]

    def evaluate(path, name, *extra):
        out = tmp_path / f"{name}.json"
        assert cli.main(["eval", str(path), *common, "--out", str(out), *extra]) == 0
        records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
        return json.loads(out.read_text())["tasks"]["synth-arith"]["accuracy"], [r["output"] for r in records]

    acc_srlm, out_srlm = evaluate(root / "tiny-f32.gguf", "srlm")
    acc_lc, out_lc = evaluate(root / "tiny-f32.gguf", "lc", "--backend", "llama.cpp")
    assert acc_srlm > 0.1  # a model that solves some, so equal scores mean something
    assert out_lc == out_srlm and acc_lc == acc_srlm
    acc_q8, out_q8 = evaluate(root / "tiny-q8_0.gguf", "lc-q8", "--backend", "llama.cpp")
    same = sum(a == b for a, b in zip(out_q8, out_srlm)) / len(out_srlm)
    with capsys.disabled():
        print(
            f"\n[llama.cpp] trained tiny model, {len(out_srlm)} held-out synth-arith problems: accuracy srlm "
            f"{acc_srlm:.3f}, llama.cpp f32 {acc_lc:.3f}, llama.cpp q8_0 {acc_q8:.3f} "
            f"(q8_0 output identical to srlm's on {same:.0%})"
        )
    record_property("q8_0_accuracy", acc_q8)
    record_property("srlm_accuracy", acc_srlm)


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_other_architectures_generate_srlm_tokens(trained, model_type, tmp_path):
    """The trained checkpoint is qwen2 and SmolLM2 is llama; random llama (with attention biases) and qwen3
    (q/k norms, head_dim 32 != hidden/heads) models check the rest of the metadata and tensor names."""
    _, tok = srlm.load(trained[0])
    extra = {"attention_bias": True} if model_type == "llama" else {"head_dim": 32}
    model = tiny(model_type, tok, pad_rows=0, **extra)
    path = G.export(model, tok, tmp_path / f"{model_type}.gguf", "f32")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 7 + 5?"}], add_generation_prompt=True)
    assert _lc_greedy(_lc(path), ids, 24) == _our_greedy(model, tok, ids, 24)


# --------------------------------------------------------------------- SmolLM2-135M-Instruct


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    path = smollm2_gguf()
    model, tok = srlm.load(path)
    root = tmp_path_factory.mktemp("smollm2-export")
    return model, tok, {typ: G.export(model, tok, root / f"smollm2-{typ}.gguf", typ) for typ in ("f32", "f16", "q8_0")}


def test_llama_cpp_tokenizes_smollm2_as_srlm_does(smollm2):
    _, tok, files = smollm2
    assert G.pre_tokenizer_name(tok) == "smollm"
    _same_tokens(tok, files["f16"])


@pytest.mark.parametrize("typ", ["f32", "f16"])
def test_smollm2_export_greedy_equals_srlm(smollm2, typ):
    model, tok, files = smollm2
    if typ != "f32":  # srlm computes with the file's own (rounded) weights
        model, _ = srlm.load(files[typ], dtype="float32")
        model = _as_ggml_computes(model, typ)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Write two lines about the sea."}], add_generation_prompt=True
    )
    assert _lc_greedy(_lc(files[typ]), ids) == _our_greedy(model, tok, ids)


def test_smollm2_q8_0_agreement(smollm2, capsys, record_property):
    """Teacher-forced on srlm's greedy continuation: how often llama.cpp's q8_0 picks srlm's (f32) next token."""
    import numpy as np

    model, tok, files = smollm2
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Explain in three sentences why the sky is blue."}], add_generation_prompt=True
    )
    cont = _our_greedy(model, tok, ids)
    llm = _lc(files["q8_0"], logits_all=True)
    llm.eval(ids + cont)
    theirs = np.asarray(llm.scores[len(ids) - 1 : len(ids) + len(cont) - 1]).argmax(-1)
    agreement = float((theirs == np.asarray(cont)).mean())
    with capsys.disabled():
        print(
            f"\n[llama.cpp] SmolLM2-135M-Instruct q8_0: top-1 agreement with srlm fp32 {agreement:.3f} "
            f"over {len(cont)} teacher-forced tokens"
        )
    record_property("smollm2_q8_0_agreement", agreement)
    assert agreement > 0.8
