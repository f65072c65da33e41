import json
import math

import pytest

from _train_fixtures import TINY_MODEL, make_tokenizer
from srlm.cli import main as srlm_main
from srlm.data.synthetic import corpus_lines
from srlm.errors import SrlmError
from srlm.tokenizer import Tokenizer
from srlm.train.config import load_config
from srlm.train.pretrain import PretrainConfig, PretrainStage


def _args(out, tok, data, **extra):
    base = {
        "out_dir": out,
        "tokenizer": tok,
        "model_overrides": TINY_MODEL,
        "data": f"[{data}]",
        "steps": 10,
        "batch_size": 4,
        "max_seq_len": 64,
        "dtype": "fp32",
        "num_threads": 1,
        "log_every": 5,
        "progress": "false",
        "val_fraction": 0.1,
        "eval_every": 10,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_pretrain_cli_on_jsonl_reports_bpb(tmp_path, capsys):
    tok = make_tokenizer(tmp_path / "tok")
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_lines(60)))
    assert srlm_main(["train", "pretrain", *_args(tmp_path / "run", tok, data)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 10 and result["eval/val_bpb"] > 0
    # bits per byte = nats/token * tokens/byte / ln 2
    stage = PretrainStage(load_config(PretrainConfig, None, _args(tmp_path / "x", tok, data)), Tokenizer.from_dir(tok))
    ratio = len(stage.val_ids) / stage.val_bytes
    assert result["eval/val_bpb"] == pytest.approx(result["eval/val_loss"] * ratio / math.log(2))
    assert (tmp_path / "run" / "final" / "tokenizer.json").exists()


def test_rows_cover_stream_with_eos_separators(tmp_path):
    tok_dir = make_tokenizer(tmp_path / "tok")
    tok = Tokenizer.from_dir(tok_dir)
    cfg = load_config(PretrainConfig, None, ["max_seq_len=8", "val_fraction=0"])
    stage = PretrainStage(cfg, tok, documents=["1 + 2 = 3", "4 + 5 = 9", "7 * 6 = 42"])
    assert (stage.train_ids == tok.eos_token_id).sum() == 3
    batches = stage.batches(0, 1)
    seen = sorted(int(next(batches)["input_ids"][0, 0]) for _ in range(stage.rows))
    assert seen == sorted(int(stage.train_ids[i * 8]) for i in range(stage.rows))
    # resume: the stream from micro-batch 5 equals the tail of the stream from 0
    full = [next(iter_) for iter_ in [stage.batches(0, 2)] for _ in range(8)]
    tail = [b for b, _ in zip(stage.batches(5, 2), range(3))]
    for a, b in zip(full[5:], tail):
        assert a["input_ids"].equal(b["input_ids"])


def test_bad_data_lines(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(SrlmError, match=r"bad.jsonl:2: expected an object with a string \"text\""):
        from srlm.train.pretrain import run

        run(load_config(PretrainConfig, None, _args(tmp_path / "r", tok, bad)))
    assert srlm_main(["train", "pretrain", "--config", str(tmp_path / "missing.yaml")]) == 1
