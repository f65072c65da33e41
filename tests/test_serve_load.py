"""`srlm serve` under load and under fuzzing, on a live server on a free 127.0.0.1 port: 16 concurrent
clients x 20 requests with no error and every reply complete (p50/p99 latency and tokens/s printed), and a
schema-driven fuzz of the served OpenAPI spec with schemathesis (a bounded number of examples) that
finds no 5xx and no response off the spec."""

import asyncio
import collections
import statistics
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from _serve_fixtures import live_server, make_checkpoint
from srlm.infer import load_engine
from srlm.serve.app import ServeSettings, create_app

CLIENTS, REQUESTS, NEW_TOKENS = 16, 20, 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = load_engine(make_checkpoint(tmp_path_factory.mktemp("serve") / "tiny"))
    app = create_app(engine, ServeSettings(model_name="tiny", max_batch=16, max_model_len=128))
    with live_server(app) as url:
        yield url, app


def test_sixteen_clients_twenty_requests_each(server):
    url, app = server
    latencies, tokens, errors = [], [], []

    async def client(i: int, http: httpx.AsyncClient):
        for j in range(REQUESTS):
            body = {"max_tokens": NEW_TOKENS, "temperature": 0.8, "seed": i * 100 + j, "ignore_eos": True}
            chat = (i + j) % 2 == 0
            if chat:
                body["messages"] = [{"role": "user", "content": f"Client {i} asks question {j}: how many apples?"}]
            else:
                body["prompt"] = f"Tom has {i} apples and {j} pears."
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/chat/completions" if chat else "/v1/completions", json=body)
                data = r.json()
                assert r.status_code == 200, data
                choice = data["choices"][0]
                assert choice["finish_reason"] == "length" and data["usage"]["completion_tokens"] == NEW_TOKENS
                assert (
                    (choice["message"]["reasoning_content"] or choice["message"]["content"]) if chat else choice["text"]
                )
            except Exception as e:  # counted, reported below
                errors.append(f"client {i} request {j}: {type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - t0)
            tokens.append(data["usage"]["completion_tokens"])

    async def run():
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
            await asyncio.gather(*(client(i, http) for i in range(CLIENTS)))

    steps0 = app.state.scheduler.stats()["steps"]
    t0 = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - t0
    steps = app.state.scheduler.stats()["steps"] - steps0
    assert errors == []
    assert len(latencies) == CLIENTS * REQUESTS
    q = statistics.quantiles(latencies, n=100)
    print(
        f"\n{CLIENTS} clients x {REQUESTS} requests, {NEW_TOKENS} tokens each: p50 {q[49] * 1000:.0f} ms, "
        f"p99 {q[98] * 1000:.0f} ms, {sum(tokens) / wall:.0f} tokens/s, {len(latencies) / wall:.1f} requests/s, "
        f"{sum(tokens) / steps:.1f} rows per decode step"
    )
    # the requests shared decode steps: one at a time would take one step per token
    assert steps < sum(tokens) / 2


# "positive": requests the spec allows; "negative": requests it does not (each must get a 4xx); the GETs take
# no parameters, so there is nothing to get wrong in them
OPERATIONS = [
    ("POST", "/v1/chat/completions", "positive"),
    ("POST", "/v1/chat/completions", "negative"),
    ("POST", "/v1/completions", "positive"),
    ("POST", "/v1/completions", "negative"),
    ("GET", "/v1/models", "positive"),
    ("GET", "/v1/models/{model_id}", "positive"),
    ("GET", "/health", "positive"),
]


# a documented status and content type, the body the spec says, schema-invalid requests refused; not
# "every schema-valid request is accepted": limits known only at run time (the context left for max_tokens,
# n x prompts within --max-batch) refuse some, with a 400 that names the field
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.mark.parametrize("method, path, mode", OPERATIONS, ids=[" ".join(o) for o in OPERATIONS])
def test_fuzzed_requests_never_get_a_server_error(server, method, path, mode):
    url, app = server
    operation = schemathesis.openapi.from_url(url + "/openapi.json")[path][method]
    seen = []

    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def fuzz(case):
        response = case.call(timeout=60)
        seen.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text)
        case.validate_response(response, checks=CHECKS)

    fuzz()
    print(f"\n{mode} {method} {path}: status codes {dict(collections.Counter(seen))}")
    assert seen and app.state.scheduler.alive
    assert httpx.post(url + "/v1/completions", json={"prompt": "Tom", "max_tokens": 2}).status_code == 200
