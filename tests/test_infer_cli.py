"""`srlm generate` and `srlm chat` end to end on a tiny checkpoint built here (chat driven through stdin)."""

import io
import json
import subprocess
import sys

import pytest
import torch

from srlm.cli import main as srlm_main
from srlm.commands.chat import ThinkingPrinter
from srlm.model import CausalLM, preset, save
from srlm.tokenizer import train_bpe

TEXTS = ["The answer is 42. Tom has 12 apples and eats 3. How many are left? 12 - 3 = 9."] * 40


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = train_bpe(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tok.vocab_size, initializer_range=0.1)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save(model, path, tokenizer=tok)
    bare = path.parent / "bare"
    tok.chat_template = None
    save(model, bare, tokenizer=tok)
    return path, bare


def test_generate_json_is_reproducible(ckpt, capsys):
    path, _ = ckpt
    argv = [
        "generate",
        str(path),
        "--prompt",
        "Tom has",
        "--n",
        "3",
        "--temperature",
        "0.9",
        "--top-p",
        "0.9",
        "--seed",
        "5",
        "--max-new-tokens",
        "12",
        "--json",
    ]
    assert srlm_main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert srlm_main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert len(first["completions"]) == 3
    assert [c["token_ids"] for c in first["completions"]] == [c["token_ids"] for c in second["completions"]]


def test_generate_streams_text_and_quantized_runs(ckpt, capsys):
    path, _ = ckpt
    assert srlm_main(["generate", str(path), "--prompt", "Tom has", "--max-new-tokens", "8"]) == 0
    plain = capsys.readouterr().out
    assert srlm_main(["generate", str(path), "--prompt", "Tom has", "--max-new-tokens", "8", "--json"]) == 0
    assert plain == json.loads(capsys.readouterr().out)["completions"][0]["text"] + "\n"
    assert (
        srlm_main(
            [
                "generate",
                str(path),
                "--prompt",
                "Tom has",
                "--max-new-tokens",
                "8",
                "--quantize",
                "int8",
                "--chat",
                "--thinking-budget",
                "2",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", ""], "empty"),
        (["--prompt", "x", "--max-new-tokens", "0"], "max_new_tokens"),
        (["--prompt", "x", "--temperature", "-1"], "temperature"),
        (["--prompt", "x", "--top-p", "2"], "top_p"),
        (["--prompt", "x" * 3000], "context"),
        (["--prompt", "x", "--stop-regex", "("], "regular expression"),
    ],
)
def test_generate_bad_input_is_one_clear_line(ckpt, capsys, extra, message):
    path, _ = ckpt
    assert srlm_main(["generate", str(path), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("srlm: error:") and message in err and "Traceback" not in err


def test_chat_flag_without_template(ckpt, capsys):
    _, bare = ckpt
    assert srlm_main(["generate", str(bare), "--prompt", "hi", "--chat"]) == 1
    assert "chat template" in capsys.readouterr().err
    assert srlm_main(["chat", str(bare)]) == 1


def test_chat_over_stdin_keeps_history_and_resets(ckpt):
    path, _ = ckpt
    script = "Tom has 12 apples\nHow many are left?\n/reset\nTom has 12 apples\n/exit\nnever read\n"
    run = subprocess.run(
        [sys.executable, "-m", "srlm.cli", "chat", str(path), "--temperature", "0", "--max-new-tokens", "6"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "(history cleared)" in lines
    before, after = run.stdout.split("(history cleared)")
    # greedy: the first turn after /reset repeats the very first reply
    assert before.splitlines()[0] == after.strip("\n").splitlines()[0]
    assert "never read" not in run.stdout


def test_thinking_printer_dims_thought_only():
    out = io.StringIO()
    p = ThinkingPrinter(out, color=True)
    for d in ["Hi <th", "ink>let me ", "think</th", "ink>The answer is 4."]:
        p.write(d)
    p.close()
    text = out.getvalue()
    assert text.startswith("Hi \x1b[2m<think>") and text.endswith("\x1b[0mThe answer is 4.")
    assert "\x1b[2mthink\x1b[0m" in text
