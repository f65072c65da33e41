"""The chat page at `/` in a real headless browser (Debian's chromium, driven by Playwright): a question is
typed, the reply streams in with its reasoning folded into its own block, the stop button ends a reply and
frees its row on the server, and a screenshot is saved."""

import os
import shutil
import time

import httpx
import pytest

pytest.importorskip("fastapi")
playwright = pytest.importorskip("playwright.sync_api")

from _serve_fixtures import live_server, make_checkpoint
from srlm.infer import load_engine
from srlm.serve.app import ServeSettings, create_app

CHROMIUM = os.environ.get("SRLM_CHROMIUM") or next(
    (
        p
        for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
        if p and os.path.exists(p)
    ),
    None,
)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium found (apt-get install chromium, or set SRLM_CHROMIUM to a Chromium binary)"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    engine = load_engine(make_checkpoint(tmp_path_factory.mktemp("serve") / "tiny"))
    app = create_app(engine, ServeSettings(model_name="tiny-thinker", max_model_len=512))
    with live_server(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def page(served):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1000, "height": 700})
        requests = []
        pg.on("request", lambda r: requests.append(r.url))
        pg.goto(served[0] + "/")
        yield pg, requests
        browser.close()


def _ask(pg, question, temperature="0", max_tokens="40", budget="8"):
    pg.fill("#temperature", temperature)
    pg.fill("#max-tokens", max_tokens)
    pg.fill("#thinking-budget", budget)
    pg.fill("#prompt", question)
    pg.press("#prompt", "Enter")


def test_a_question_streams_an_answer_with_its_reasoning_apart(page, served, tmp_path):
    pg, requests = page
    url, _ = served
    pg.wait_for_function("document.getElementById('model').textContent.startsWith('tiny-thinker')")
    pg.evaluate("""() => { window.answerUpdates = 0;
        new MutationObserver((ms) => {
            for (const m of ms) if (m.target.classList?.contains('answer')) window.answerUpdates++; })
          .observe(document.getElementById('thread'), {subtree: true, childList: true, characterData: true}); }""")
    question = "Tom has 12 apples and eats 3. How many are left?"
    _ask(pg, question)
    reply = pg.locator(".msg.assistant").last
    pg.wait_for_selector(".msg.assistant[data-finished]", timeout=60_000)
    reasoning = reply.locator("details.reasoning")
    assert reasoning.is_visible() and not reasoning.evaluate("d => d.open")  # folded once the answer came
    assert reply.locator("summary").inner_text().startswith("Reasoning")
    thought = reply.locator(".reasoning-text").text_content()
    answer = reply.locator(".answer").text_content()
    assert thought and answer
    assert pg.evaluate("window.answerUpdates") > 1  # the answer arrived in pieces
    assert (
        reply.get_attribute("data-finished") == "length" and "cut at max tokens" in reply.locator(".meta").inner_text()
    )
    # what the page shows is what the API returns for the same request
    ref = httpx.post(
        url + "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 40,
            "thinking_budget": 8,
        },
    ).json()["choices"][0]["message"]
    assert (thought, answer) == (ref["reasoning_content"], ref["content"])
    assert pg.locator(".msg.user").last.inner_text() == question
    assert all(r.startswith(url) for r in requests)  # nothing fetched from anywhere else
    shot = tmp_path / "chat-page.png"
    pg.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_the_stop_button_ends_the_reply_and_frees_its_row(page, served, monkeypatch):
    pg, _ = page
    url, app = served
    sched = app.state.scheduler
    question = "Tom has 12 apples and eats 3. How many are left?"
    full = httpx.post(
        url + "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 400,
            "thinking_budget": 8,
        },
    ).json()
    assert full["usage"]["completion_tokens"] > 200  # left alone, this reply runs a while
    real = type(sched.batch).step
    monkeypatch.setattr(type(sched.batch), "step", lambda self: (time.sleep(0.02), real(self))[1])  # 4 s and more
    pg.click("#new-chat")  # the same conversation as the request above: the page sends the whole history
    assert pg.locator(".msg").count() == 0
    _ask(pg, question, temperature="0", max_tokens="400", budget="8")
    pg.wait_for_function("document.querySelector('.msg.assistant .reasoning-text')?.textContent.length > 0")
    assert sched.stats()["running_rows"] == 1
    pg.click("#stop")
    reply = pg.locator(".msg.assistant").last
    pg.wait_for_selector(".msg.assistant[data-finished='stopped']", timeout=10_000)
    assert "stopped" in reply.locator(".meta").inner_text()
    deadline = time.monotonic() + 5
    while sched.stats()["running_rows"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sched.stats()["running_rows"] == 0
    assert pg.is_enabled("#send") and pg.is_hidden("#stop")


def test_the_page_asks_for_the_api_key_and_then_uses_it(served, page):
    engine = served[1].state.scheduler.engine
    app = create_app(engine, ServeSettings(model_name="locked", api_key="s3cret", max_batch=2, max_model_len=256))
    with live_server(app) as url:
        pg = page[0].context.browser.new_page()
        pg.goto(url + "/")  # the page itself needs no key
        pg.wait_for_function("document.getElementById('model').textContent === 'API key needed'")
        assert pg.is_visible("#api-key")
        pg.fill("#api-key", "s3cret")
        pg.dispatch_event("#api-key", "change")
        pg.wait_for_function("document.getElementById('model').textContent.startsWith('locked')")
        _ask(pg, "Tom has 3 apples.", max_tokens="12")
        pg.wait_for_selector(".msg.assistant[data-finished]", timeout=60_000)
        assert pg.locator(".msg.assistant").get_attribute("data-finished") in ("length", "stop")
        assert "error" not in pg.locator(".msg.assistant").get_attribute("class")
        pg.close()
