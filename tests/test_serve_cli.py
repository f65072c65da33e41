"""`srlm serve` as a user runs it: a process on 127.0.0.1 (the default) that needs its API key, answers,
and stops cleanly on SIGTERM; bad flags are one-line errors."""

import signal
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("fastapi")

from _serve_fixtures import free_port, make_checkpoint
from srlm.cli import build_parser
from srlm.cli import main as srlm_main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "tiny")


def test_defaults_bind_this_machine_only():
    args = build_parser(["serve", "CKPT"]).parse_args(["serve", "CKPT"])
    assert (args.host, args.port, args.api_key, args.max_batch) == ("127.0.0.1", 8000, None, 16)


def test_serve_answers_with_its_key_and_stops_on_sigterm(ckpt):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "srlm.cli",
            "serve",
            str(ckpt),
            "--port",
            str(port),
            "--api-key",
            "k3y",
            "--max-batch",
            "4",
            "--max-model-len",
            "128",
            "--model-name",
            "tiny",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer k3y"}
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", headers=auth).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "srlm serve did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401
        r = httpx.post(
            url + "/v1/chat/completions",
            headers=auth,
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": "Tom has 3 apples."}],
                "max_tokens": 5,
                "ignore_eos": True,
            },
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        proc.send_signal(signal.SIGTERM)  # what a service manager sends (Ctrl-C takes the same path in uvicorn)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # uvicorn shuts down gracefully (the scheduler thread stops with the app), then re-raises the signal
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert f"http://127.0.0.1:{port}/" in out and "API key required" in out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-model-len", "100000"], "--max-model-len"),
        (["--max-batch", "0"], "--max-batch"),
        (["--port", "70000"], "--port"),
    ],
)
def test_bad_flags_are_one_line_errors(ckpt, flags, message, capsys):
    assert srlm_main(["serve", str(ckpt), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("srlm: error:") and message in err and err.count("\n") == 1
