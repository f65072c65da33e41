"""A real model: SmolLM2-135M-Instruct's GGUF (see _real_model.py) through srlm's import, convert and training.

transformers is the reference: its own GGUF loader must give srlm's logits (fp32, 1e-4), chat ids and
greedy tokens; the converted folder must load in transformers with the same logits; a few LoRA SFT steps
must lower the loss with an adapter PEFT loads; a few GRPO steps with LoRA must change the adapter.
"""

import json

import pytest
import torch

import srlm
from _real_model import smollm2_gguf
from srlm import cli
from srlm.data.chat import example_to_messages, tokenize_conversation
from srlm.data.synthetic import generate_problems
from srlm.infer.engine import Engine

transformers = pytest.importorskip("transformers")

MESSAGES = [{"role": "user", "content": "Tom has 12 apples and eats 3. How many apples are left?"}]
NEW_TOKENS = 48


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread here: where the 2 cores are shared, two threads wait on each other at every small op
    of a decode step (several times slower); llama.cpp gets one thread too."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def gguf_path():
    return smollm2_gguf()


@pytest.fixture(scope="module")
def ours(gguf_path):
    return srlm.load(gguf_path)


@pytest.fixture(scope="module")
def folder(gguf_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    assert cli.main(["convert", str(gguf_path), "--out", str(out)]) == 0
    return out


def _hf_ids(hf_tok, messages):
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    gen = transformers.GenerationConfig(
        max_new_tokens=n, min_new_tokens=0, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    x = torch.tensor([ids])
    with torch.no_grad():
        return model.generate(x, attention_mask=torch.ones_like(x), generation_config=gen)[0, len(ids) :].tolist()


def _our_greedy(model, tok, ids: list[int], n: int) -> list[int]:
    return Engine(model, tok).generate([ids], max_new_tokens=n, temperature=0, stop_token_ids=[])[0][0].token_ids


def test_import_equals_transformers_gguf_loader(gguf_path, ours):
    model, tok = ours
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert ids == _hf_ids(hf_tok, MESSAGES)
    assert tok.encode("x = 123 + 4567;\n  y\t=  'naïve 🦙'") == hf_tok.encode(
        "x = 123 + 4567;\n  y\t=  'naïve 🦙'", add_special_tokens=False
    )
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-4, atol=1e-4)
    ours_greedy = _our_greedy(model, tok, ids, NEW_TOKENS)
    assert ours_greedy == _hf_greedy(hf, ids, NEW_TOKENS)
    assert "apples" in tok.decode(ours_greedy)  # it answers about the question: the weights are the real ones


def test_converted_folder_loads_in_transformers_with_srlm_logits(folder, ours):
    model, tok = ours
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert _hf_ids(hf_tok, MESSAGES) == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-4, atol=1e-4)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 3


def _conversations(n: int):
    return [example_to_messages(ex, think=False) for ex in generate_problems("arith", n, difficulties=[1], seed=7)]


def _mean_loss(model, tok, convs) -> float:
    total = 0.0
    with torch.no_grad():
        for msgs in convs:
            ids, labels = tokenize_conversation(tok, msgs)
            total += float(model.loss(torch.tensor([ids]), torch.tensor([labels])))
    return total / len(convs)


def test_lora_sft_lowers_the_loss_and_the_adapter_loads_in_peft(gguf_path, folder, ours, tmp_path):
    peft = pytest.importorskip("peft")
    from srlm.train.config import load_config
    from srlm.train.sft import SFTConfig, run

    base, tok = ours
    cfg = load_config(
        SFTConfig,
        None,
        {
            "model": str(gguf_path),
            "out_dir": str(tmp_path / "sft"),
            "data": ["synth-arith"],
            "data_options": {"n_train": 32, "difficulties": [1], "seed": 7},
            "think": False,
            "steps": 4,
            "batch_size": 4,
            "lr": 2e-3,
            "warmup_steps": 0,
            "dtype": "fp32",
            "max_seq_len": 128,
            "progress": False,
            "num_threads": 1,
            "lora": {"enabled": True, "rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        },
    )
    run(cfg)
    tuned, _ = srlm.load(tmp_path / "sft" / "final")
    convs = _conversations(4)
    before, after = _mean_loss(base, tok, convs), _mean_loss(tuned, tok, convs)
    assert after < 0.8 * before, (before, after)

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with_adapter = peft.PeftModel.from_pretrained(hf, str(tmp_path / "sft" / "final" / "adapter")).eval()
    ids = torch.tensor([tok.apply_chat_template(convs[0])])
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(input_ids=ids).logits, tuned(ids), rtol=1e-4, atol=1e-4)


def test_grpo_with_lora_changes_the_adapter(gguf_path, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from srlm.train.config import load_config
    from srlm.train.grpo import GRPOConfig, run
    from srlm.train.rewards import REWARDS

    # a reward that differs between completions whatever the model writes, so every group has an advantage
    # (correctness alone can be 0 for a whole small batch, and then no step moves the adapter)
    monkeypatch.setitem(REWARDS, "chars", lambda text, example, task: (len(text) % 3) / 2)

    cfg = load_config(
        GRPOConfig,
        None,
        {
            "model": str(gguf_path),
            "out_dir": str(tmp_path / "grpo"),
            "task": "synth-arith",
            "task_options": {"difficulties": [1]},
            "num_prompts": 8,
            "steps": 2,
            "batch_size": 8,
            "num_generations": 4,
            "sampling": {"max_new_tokens": 24, "temperature": 1.0},
            "lr": 1e-3,
            "dtype": "fp32",
            "progress": False,
            "num_threads": 1,
            "seed": 0,
            "rewards": {"correct": 1.0, "format": 0.1, "chars": 0.1},
            "lora": {"enabled": True, "rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        },
    )
    run(cfg)
    logs = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    adapter = load_file(tmp_path / "grpo" / "final" / "adapter" / "adapter_model.safetensors")
    # LoRA's B starts at zero: any nonzero B means a step moved the adapter
    moved = max(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k)
    assert moved > 0, logs


def test_bench_takes_the_gguf_and_compares_with_transformers(gguf_path, capsys):
    args = [
        "bench",
        str(gguf_path),
        "--compare",
        "hf",
        "--prompt-len",
        "8",
        "--new-tokens",
        "4",
        "--prefill-len",
        "16",
        "--batch",
        "1",
        "--rounds",
        "1",
    ]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["params"] == 134_515_008 and result["dtype"] == "float32" and result["hf"]["dtype"] == "float32"
    assert result["ratios_vs_hf"]["srlm"]["decode_b1"] > 0


@pytest.mark.parametrize(("mode", "min_agreement", "max_kl"), [("int8", 0.9, 0.02), ("int4", 0.85, 0.05)])
def test_quantized_real_weights_stay_close_to_bf16(gguf_path, mode, min_agreement, max_kl):
    """Quality floors on real weights, measured as `srlm bench --quantize` reports them: greedy (top-1)
    agreement and mean KL against the bf16 model, teacher-forced on its own greedy answer to a chat prompt.
    On this prompt: int8 0.98 / 0.006 nats, int4 0.89 / 0.040 (torch 2.13, AVX-512 CPU)."""
    from srlm.commands.bench import _quantization_quality
    from srlm.infer.quant import _int4_kernel_available, load_for_inference

    if mode == "int4" and not _int4_kernel_available():
        pytest.skip("torch's CPU int4 kernel is unavailable here")
    ref_model, tok = load_for_inference(gguf_path, dtype="bfloat16")
    q_model, _ = load_for_inference(gguf_path, dtype="bfloat16", quantize=mode)
    ref = Engine(ref_model, tok)
    prompt = ref.encode_prompt(MESSAGES)
    quality = _quantization_quality(ref, Engine(q_model, tok), prompt, 64)
    assert quality["tokens"] == 64
    assert quality["greedy_agreement"] >= min_agreement and quality["kl_nats"] <= max_kl, quality
