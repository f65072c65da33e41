"""Shared by the serve tests: a tiny checkpoint that thinks, and a live server on a free 127.0.0.1 port."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import torch

from srlm.model import CausalLM, preset, save
from srlm.tokenizer import train_bpe

TEXTS = [
    "The answer is 42. Tom has 12 apples and eats 3. How many are left? 12 - 3 = 9. <think> so </think>",
    "Ann has 5 pens. She buys 7 more. 5 + 7 = 12. The answer is 12.",
] * 40

# ChatML whose generation prompt opens a thought (as Qwen3's does): with a thinking budget, even random
# weights reason first (the budget forces </think>) and then answer, so the reasoning split is exercised
THINKING_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)


def make_checkpoint(folder, template: str | None = THINKING_TEMPLATE, preset_name: str = "tiny", **overrides):
    tok = train_bpe(TEXTS, vocab_size=300)
    tok.chat_template = template
    torch.manual_seed(0)
    model = CausalLM(preset(preset_name, vocab_size=tok.vocab_size, initializer_range=0.1, **overrides)).eval()
    save(model, folder, tokenizer=tok)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app, timeout: float = 30.0):
    """Run `app` with uvicorn in a thread on 127.0.0.1 (a free port); yields the base URL; stops it after."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
