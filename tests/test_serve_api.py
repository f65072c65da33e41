"""`srlm serve`'s API against a live server on a free 127.0.0.1 port, driven by the official openai client
and by raw HTTP: results equal the engine's, streaming, n > 1, seeds, stops, the reasoning split, the
continuous batch (late joiners, disconnects), every bad request a 4xx naming its field, the API key."""

import json
import socket
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from _serve_fixtures import live_server, make_checkpoint
from srlm.infer import load_engine
from srlm.serve.app import ServeSettings, create_app

QUESTION = [{"role": "user", "content": "Tom has 12 apples and eats 3. How many are left?"}]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return load_engine(make_checkpoint(tmp_path_factory.mktemp("serve") / "tiny"))


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, ServeSettings(model_name="tiny", max_batch=8, max_model_len=256))
    with live_server(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def _engine_text(engine, ids, **kw):
    out = engine.generate([ids], temperature=0, **kw)[0][0]
    body = (
        out.token_ids[:-1]
        if out.finish_reason == "stop" and out.token_ids[-1] in engine.stop_token_ids
        else out.token_ids
    )
    return engine.tokenizer.decode(body, skip_special_tokens=True), out


def test_chat_equals_the_engine_and_splits_the_reasoning(client, engine):
    r = client.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=24, temperature=0, extra_body={"thinking_budget": 6}
    )
    ids = engine.tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    text, out = _engine_text(engine, ids, max_new_tokens=24, thinking_budget=6)
    msg = r.choices[0].message
    reasoning = msg.model_extra["reasoning_content"]
    thought, answer = text.split("</think>")
    assert reasoning == thought.strip() and msg.content == answer.strip()
    assert reasoning and msg.content
    assert r.choices[0].finish_reason == out.finish_reason == "length"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 24
    assert r.usage.total_tokens == len(ids) + 24


def test_streamed_chat_joins_to_the_plain_reply_and_reports_usage(client):
    kw = dict(model="tiny", messages=QUESTION, max_tokens=20, temperature=0, extra_body={"thinking_budget": 4})
    plain = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices
    )
    assert content == plain.choices[0].message.content
    assert reasoning == plain.choices[0].message.model_extra["reasoning_content"]
    assert len([c for c in chunks if c.choices and (c.choices[0].delta.content or "")]) > 1  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_n_samples_and_seeds(client):
    kw = dict(
        model="tiny",
        messages=QUESTION,
        max_tokens=12,
        temperature=1.0,
        n=3,
        seed=7,
        extra_body={"thinking_budget": 2, "ignore_eos": True},
    )
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices]  # the seed reproduces the samples
    assert len(set(texts)) == 3  # and the n samples differ
    assert a.usage.completion_tokens == 36
    streamed = list(client.chat.completions.create(stream=True, **kw))
    for i in range(3):
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices[0].index == i) == texts[i]


def test_completions_plain_streaming_batched_prompts_and_logprobs(client, engine):
    r = client.completions.create(model="tiny", prompt="Tom has 12 apples", max_tokens=10, temperature=0, logprobs=2)
    text, out = _engine_text(
        engine,
        engine.tokenizer.encode("Tom has 12 apples", add_special_tokens=True),
        max_new_tokens=10,
        return_logprobs=True,
    )
    c = r.choices[0]
    assert c.text == text and c.finish_reason == "length"
    assert c.logprobs.token_logprobs == pytest.approx(out.logprobs, abs=1e-4)
    assert all(len(t) == 2 for t in c.logprobs.top_logprobs)
    streamed = "".join(
        ch.choices[0].text
        for ch in client.completions.create(
            model="tiny", prompt="Tom has 12 apples", max_tokens=10, temperature=0, stream=True
        )
    )
    assert streamed == text
    many = client.completions.create(
        model="tiny", prompt=["Ann has", "Tom has 12 apples"], max_tokens=10, temperature=0, n=2
    )
    assert [ch.index for ch in many.choices] == [0, 1, 2, 3]
    assert many.choices[2].text == many.choices[3].text == text
    ids = engine.tokenizer.encode("Ann has", add_special_tokens=True)
    assert many.choices[0].text == _engine_text(engine, ids, max_new_tokens=10)[0]
    assert many.usage.prompt_tokens == len(ids) + len(engine.tokenizer.encode("Tom has 12 apples"))
    by_ids = client.completions.create(model="tiny", prompt=[ids, ids[:1]], max_tokens=10, temperature=0)
    assert by_ids.choices[0].text == many.choices[0].text
    assert by_ids.choices[1].text == _engine_text(engine, ids[:1], max_new_tokens=10)[0]


def test_stop_strings_and_chat_logprobs(client):
    free = client.completions.create(model="tiny", prompt="Tom has", max_tokens=30, temperature=0).choices[0].text
    clean = [free[i : i + 2] for i in range(3, len(free) - 2) if "\ufffd" not in free[i : i + 2]]
    stop = clean[len(clean) // 2]
    cut = client.completions.create(model="tiny", prompt="Tom has", max_tokens=30, temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].text == free[: free.index(stop)] and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 30
    r = client.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    entries = r.choices[0].logprobs.content
    assert len(entries) == 5 and all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in entries)
    assert entries[0].top_logprobs[0].logprob == pytest.approx(entries[0].logprob)  # greedy took the best


def test_models_health_and_spec(server):
    url, _ = server
    models = httpx.get(url + "/v1/models").json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == 256
    assert httpx.get(url + "/v1/models/tiny").json() == models["data"][0]
    assert httpx.get(url + "/v1/models/other").json()["error"]["code"] == "model_not_found"
    assert httpx.get(url + "/health").json()["status"] == "ok"
    spec = httpx.get(url + "/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model_id}", "/health"} <= set(
        spec["paths"]
    )
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "<script" in page.text and "http" not in page.text.split("<script")[1]


BAD_CHAT = [
    ({}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.[0].role"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "messages.[0].content",
    ),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, 400, "messages.[0].content"),
    ({"temperature": 3}, 400, "temperature"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"n": 0}, 400, "n"),
    ({"n": 9}, 400, "n"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 1000}, 400, "max_tokens"),
    ({"max_completion_tokens": 1000}, 400, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "apples " * 400}]}, 400, "messages"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"stop": "x" * 300}, 400, "stop"),
    ({"seed": 2**70}, 400, "seed"),
    ({"top_logprobs": 3}, 400, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 50}, 400, "top_logprobs"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"logit_bias": {"5": 10}}, 400, "logit_bias"),
    ({"thinking_budget": -1}, 400, "thinking_budget"),
    ({"tools": [{"type": "function"}]}, 400, "tools"),
    ({"model": "gpt-4o"}, 404, "model"),
]


@pytest.mark.parametrize("patch, status, param", BAD_CHAT, ids=[p for _, _, p in BAD_CHAT])
def test_bad_chat_requests_get_a_4xx_naming_the_field(server, patch, status, param):
    url, _ = server
    body = {"messages": QUESTION, "max_tokens": 4, **patch}
    if patch == {}:
        body = {"max_tokens": 4}
    # json.dumps escapes non-ASCII, so even a lone surrogate reaches the server, as \ud800
    r = httpx.post(url + "/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


@pytest.mark.parametrize(
    "patch, param",
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": [10**6]}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [1.5]}, "prompt"),
        ({"prompt": [[1], "Tom"]}, "prompt"),
        ({"prompt": ["a"] * 5, "n": 2}, "n"),
        ({"echo": True}, "echo"),
        ({"logprobs": 9}, "logprobs"),
        ({"max_tokens": 500}, "max_tokens"),
    ],
)
def test_bad_completion_requests_get_a_4xx_naming_the_field(server, patch, param):
    r = httpx.post(server[0] + "/v1/completions", json={"prompt": "Tom", "max_tokens": 4, **patch})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_malformed_and_oversized_bodies(server, engine):
    url, _ = server
    for content, status in [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b"", 400),
        (b'"text"', 400),
        (json.dumps({"messages": QUESTION, "pad": "x" * (2 << 20)}).encode(), 413),
    ]:
        r = httpx.post(url + "/v1/chat/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == status and "error" in r.json(), (content[:20], r.text)
    assert httpx.get(url + "/v1/nothing").status_code == 404
    assert httpx.delete(url + "/v1/models").status_code == 405
    # after all that the server still answers
    assert httpx.post(url + "/v1/completions", json={"prompt": "Tom", "max_tokens": 3}).status_code == 200


def test_late_requests_join_the_running_batch(server, engine, monkeypatch):
    """A request sent while another decodes finishes first, and gets the tokens it would get alone."""
    url, app = server
    sched = app.state.scheduler
    alone = httpx.post(url + "/v1/completions", json={"prompt": "Ann has", "max_tokens": 8, "temperature": 0}).json()
    real = type(sched.batch).step
    monkeypatch.setattr(type(sched.batch), "step", lambda self: (time.sleep(0.002), real(self))[1])  # >= 0.4 s
    seen_rows = []
    order = []
    with httpx.stream(
        "POST",
        url + "/v1/completions",
        timeout=60,
        json={"prompt": "Tom has", "max_tokens": 200, "temperature": 0, "stream": True, "ignore_eos": True},
    ) as long:
        lines = long.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # the long one is decoding

        def short():
            r = httpx.post(url + "/v1/completions", json={"prompt": "Ann has", "max_tokens": 8, "temperature": 0})
            order.append("short")
            short.result = r.json()

        t = threading.Thread(target=short)
        t.start()
        while t.is_alive():
            seen_rows.append(sched.stats()["running_rows"])
            time.sleep(0.002)
        t.join()
        tokens = sum(1 for line in lines if line.startswith("data: {"))
    order.append("long")
    assert order == ["short", "long"]
    assert max(seen_rows) == 2
    assert short.result["choices"][0]["text"] == alone["choices"][0]["text"]
    assert tokens > 8


def _raw_post(url, path, body):
    """Send a request on a bare socket (so the test can hang up whenever it likes)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def _wait(cond, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def test_a_client_that_leaves_frees_its_row(server, monkeypatch):
    url, app = server
    sched = app.state.scheduler
    real = type(sched.batch).step
    monkeypatch.setattr(type(sched.batch), "step", lambda self: (time.sleep(0.005), real(self))[1])  # >= 1.2 s of work
    for stream in (True, False):
        sock = _raw_post(
            url, "/v1/completions", {"prompt": "Tom has", "max_tokens": 240, "stream": stream, "ignore_eos": True}
        )
        if stream:  # tokens are flowing
            got = b""
            while b"data: " not in got:
                got += sock.recv(4096)
        assert _wait(lambda: sched.stats()["running_rows"] == 1)
        steps = sched.stats()["steps"]
        sock.close()
        # the row goes long before its 240 tokens are made
        assert _wait(lambda: sched.stats()["running_requests"] == 0), stream
        assert sched.stats()["running_rows"] == 0 and sched.stats()["steps"] - steps < 150


def test_the_scheduler_survives_a_failing_step(server, monkeypatch):
    url, app = server
    sched = app.state.scheduler
    real = type(sched.batch).step
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected fault")
        return real(self)

    monkeypatch.setattr(type(sched.batch), "step", flaky)
    r = httpx.post(url + "/v1/completions", json={"prompt": "Tom", "max_tokens": 5, "ignore_eos": True})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    monkeypatch.setattr(type(sched.batch), "step", real)
    assert httpx.post(url + "/v1/completions", json={"prompt": "Tom", "max_tokens": 5}).status_code == 200
    assert sched.alive


def test_api_key_is_required_everywhere_but_the_page(engine):
    app = create_app(engine, ServeSettings(model_name="tiny", api_key="s3cret", max_batch=2))
    with live_server(app) as url:
        for path in ("/v1/models", "/health", "/openapi.json"):
            assert httpx.get(url + path).status_code == 401
            assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = httpx.post(url + "/v1/completions", json={"prompt": "Tom", "max_tokens": 2})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/").status_code == 200
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        reply = good.completions.create(model="tiny", prompt="Tom", max_tokens=2, extra_body={"ignore_eos": True})
        assert reply.choices[0].finish_reason == "length"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()


def test_a_checkpoint_without_a_chat_template(tmp_path):
    engine = load_engine(make_checkpoint(tmp_path / "plain", template=None))
    with live_server(create_app(engine, ServeSettings(model_name="plain"))) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"messages": QUESTION})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        assert httpx.post(url + "/v1/completions", json={"prompt": "Tom", "max_tokens": 3}).status_code == 200
