"""The HTTP layer: a FastAPI app over one `Scheduler` (srlm.serve.scheduler), speaking OpenAI's API.

`create_app(engine, ...)` checks each request (srlm.serve.protocol), turns it into token ids
(the chat template for chat), hands it to the scheduler and turns the scheduler's events into
OpenAI's JSON or server-sent events. Every refusal is a 4xx with OpenAI's error body naming the
field; with `api_key` every request but the chat page itself needs `Authorization: Bearer KEY`;
bodies are capped at `max_body_bytes`. The chat page (`/`) is one self-contained HTML file.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from srlm import __version__
from srlm.errors import SrlmError
from srlm.infer.batch import RowRequest
from srlm.infer.engine import THINK_END, THINK_START
from srlm.infer.sampling import SamplingParams
from srlm.infer.textstream import ReasoningSplitter
from srlm.serve.protocol import (
    ApiError,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
)
from srlm.serve.scheduler import Delta, Done, Failed, Finish, Job, Scheduler

PUBLIC_PATHS = {"/"}  # the page holds no data; it asks for the key when the API answers 401
ERRORS = {
    400: {"model": ErrorResponse, "description": "a bad request; `param` names the field"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key (with --api-key)"},
    404: {"model": ErrorResponse, "description": "unknown model"},
    413: {"model": ErrorResponse, "description": "the body is too large"},
    429: {"model": ErrorResponse, "description": "too many requests waiting"},
}


def _generation_responses(obj: str, chunk: str) -> dict:
    """OpenAPI responses of a generation endpoint: its errors, and JSON or a server-sent event stream."""
    return {
        **ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": f"a {obj}, or with stream: true server-sent {chunk} events ending with data: [DONE]",
        },
    }


@dataclass
class ServeSettings:
    model_name: str = "srlm"
    api_key: str | None = None
    #: rows decoded together at most (a request's n x prompts must fit)
    max_batch: int = 16
    #: prompt + new tokens at most per row (default: the model's context)
    max_model_len: int | None = None
    max_body_bytes: int = 1 << 20
    #: requests queued at most; beyond, 429
    max_waiting: int = 256


# ---------------------------------------------------------------- guard: API key and body size
class _Guard:
    """Pure ASGI (streaming and disconnects pass through untouched): auth first, then the body cap."""

    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.max_body = app, max_body
        self.key = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"] not in PUBLIC_PATHS:
            given = headers.get(b"authorization")
            if given is None or not hmac.compare_digest(given, self.key):
                message = (
                    "no API key: send the header 'Authorization: Bearer KEY'"
                    if given is None
                    else "incorrect API key in the Authorization header"
                )
                return await _send(
                    send, 401, ApiError(401, message, code="invalid_api_key").body(), [(b"www-authenticate", b"Bearer")]
                )
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await _send(send, 413, self._too_large())
        if scope["method"] in ("POST", "PUT", "PATCH"):
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client left before sending its body
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_body:
                    return await _send(send, 413, self._too_large())
                if not message.get("more_body"):
                    break
            body = b"".join(chunks)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # then the disconnect, when it comes

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)

    def _too_large(self) -> dict:
        return ApiError(413, f"the request body is larger than {self.max_body} bytes", code="request_too_large").body()


async def _send(send, status: int, body: dict, headers=()) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


# ---------------------------------------------------------------- from the scheduler thread to the event loop
class _Inbox:
    """A job's events on their way from the scheduler thread to the event loop. The loop is woken once for
    whatever piled up since it last looked: at once when streaming, else only when the job ends, so many
    concurrent requests do not flood it with a wake-up per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop, eager: bool):
        self.loop, self.eager = loop, eager
        self.items: list = []
        self.lock = threading.Lock()
        self.ready = asyncio.Event()
        self.woken = False

    def put(self, events: list) -> None:  # the scheduler thread
        with self.lock:
            self.items.extend(events)
            if self.woken or not (self.eager or any(isinstance(e, (Done, Failed)) for e in events)):
                return
            self.woken = True
        self.loop.call_soon_threadsafe(self.ready.set)

    async def get(self, timeout: float | None) -> list:  # the event loop; [] on a timeout
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except asyncio.TimeoutError:
            return []
        with self.lock:
            items, self.items = self.items, []
            self.woken = False
            self.ready.clear()
        return items


# ---------------------------------------------------------------- errors
_TYPE_MISMATCH = re.compile(r"_type$|_parsing$|^union_tag|^model_attributes_type$")


_UNION_FORMS = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": "a string or a list of strings",
    "content": "a string or a list of text parts",
}


def _param(loc) -> str | None:
    parts = []
    for p in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif re.fullmatch(r"\w+", str(p)):
            parts.append(str(p))
        else:  # a union branch's name: the field is what came before
            break
    return ".".join(parts) or None


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    if not errors:
        return ApiError(400, "the request is not valid")
    first = errors[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})")
    if tuple(first["loc"]) == ("body",):
        return ApiError(400, "the body must be a JSON object with the request's fields")
    param = _param(first["loc"])
    # of a union's errors, the one that is not just "wrong type for this branch" says most
    same = [e for e in errors if _param(e["loc"]) == param]
    best = next((e for e in same if not _TYPE_MISMATCH.search(e["type"])), None)
    if best is None and len(same) > 1:  # no branch of a union fits
        forms = _UNION_FORMS.get(param.rsplit(".", 1)[-1])
        if forms:
            return ApiError(400, f"{param} must be {forms}", param=param)
    best = best or first
    if best["type"] == "extra_forbidden":
        return ApiError(
            400, f"Unrecognized request argument supplied: {param} (srlm serve does not implement it)", param=param
        )
    if best["type"] == "missing":
        return ApiError(400, f"{param} is required", param=param)
    msg = best["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {msg}", param=param)


# ---------------------------------------------------------------- building jobs
def _token_repr(tokenizer, token_id: int) -> tuple[str, list[int]]:
    """A token as OpenAI shows it: its text, or "bytes:\\xNN..." for part of a UTF-8 character; and its bytes."""
    raw = tokenizer.token_bytes(token_id)
    try:
        return raw.decode("utf-8"), list(raw)
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), list(raw)


@dataclass
class _Prepared:
    """A checked request: one RowRequest per prompt, whether each prompt ends inside a thought, stop strings."""

    rows: list[RowRequest]
    in_thought: list[bool]
    stops: list[str]
    n: int


def create_app(engine, settings: ServeSettings | None = None) -> FastAPI:
    """The app; the scheduler thread starts with the app's lifespan and stops with it."""
    settings = settings or ServeSettings()
    tokenizer = engine.tokenizer
    if tokenizer is None:
        raise SrlmError("srlm serve needs the checkpoint's tokenizer (tokenizer.json) to read and write text")
    max_len = settings.max_model_len or engine.max_context
    if not 2 <= max_len <= engine.max_context:
        raise SrlmError(
            f"--max-model-len {max_len}: must be between 2 and the model's context "
            f"(max_position_embeddings = {engine.max_context})"
        )
    if settings.max_batch < 1:
        raise SrlmError(f"--max-batch {settings.max_batch}: give at least 1 row")
    sched = Scheduler(engine, max_batch=settings.max_batch, max_len=max_len, max_waiting=settings.max_waiting)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        sched.start()
        try:
            yield
        finally:
            sched.close()

    app = FastAPI(
        title="srlm serve",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="An OpenAI-compatible API over one srlm checkpoint, with continuous batching.",
    )
    app.state.scheduler = sched
    app.state.settings = settings
    app.add_middleware(_Guard, api_key=settings.api_key, max_body=settings.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        err = _validation_error(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    # ------------------------------------------------------------ request checks shared by both endpoints
    def check_common(body, rows: int) -> None:
        if body.model is not None and body.model != settings.model_name:
            raise ApiError(
                404,
                f"The model '{body.model}' does not exist; this server serves '{settings.model_name}'",
                param="model",
                code="model_not_found",
            )
        if rows > settings.max_batch:
            raise ApiError(
                400,
                f"n={body.n} gives {rows} completions; this server runs at most {settings.max_batch} "
                f"at once (--max-batch)",
                param="n",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name):
                raise ApiError(400, f"{name} is not supported by srlm serve: leave it at 0", param=name)
        if body.logit_bias:
            raise ApiError(400, "logit_bias is not supported by srlm serve: leave it out", param="logit_bias")
        if body.stream_options is not None and not body.stream:
            raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")
        if body.thinking_budget is not None and engine.think_ids is None:
            raise ApiError(
                400,
                "thinking_budget needs single-token <think> and </think> in the tokenizer; "
                "this checkpoint's tokenizer has none",
                param="thinking_budget",
            )

    def row(
        body,
        prompt: list[int],
        prompt_param: str,
        max_param: str,
        max_tokens: int | None,
        explicit: bool,
        logprobs: bool,
        top_logprobs: int,
    ) -> RowRequest:
        if len(prompt) >= max_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {max_len} tokens; the prompt has {len(prompt)}: shorten it",
                param=prompt_param,
                code="context_length_exceeded",
            )
        room = max_len - len(prompt)
        if max_tokens is None:
            max_tokens = room
        elif max_tokens > room:
            if explicit:
                raise ApiError(
                    400,
                    f"This model's maximum context length is {max_len} tokens; {len(prompt)} in the "
                    f"prompt + {max_tokens} new do not fit: lower {max_param} to at most {room}",
                    param=max_param,
                    code="context_length_exceeded",
                )
            max_tokens = room
        try:
            sampling = SamplingParams(
                temperature=body.temperature,
                top_k=max(body.top_k, 0),
                top_p=body.top_p,
                min_p=body.min_p,
                max_new_tokens=max_tokens,
            )
        except SrlmError as e:  # the schema's ranges catch these first; this keeps any gap a 400
            raise ApiError(400, str(e), param=str(e).split("sampling parameter ")[-1].split("=")[0]) from None
        return RowRequest(
            prompt,
            n=body.n,
            sampling=sampling,
            seed=body.seed,
            stop_token_ids=[] if body.ignore_eos else None,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            thinking_budget=body.thinking_budget,
        )

    def stops_of(body) -> list[str]:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        return [s for s in stop if s]

    def prepare_chat(body: ChatCompletionRequest) -> _Prepared:
        check_common(body, body.n)
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if not tokenizer.has_chat_template:
            raise ApiError(
                400,
                "this checkpoint has no chat template, so messages cannot be turned into a prompt: use /v1/completions",
                param="messages",
            )
        messages = []
        for m in body.messages:
            content = m.content
            if isinstance(content, list):
                content = "\n".join(part.text for part in content)
            msg = {
                **(m.model_extra or {}),
                "role": "system" if m.role == "developer" else m.role,
                "content": content or "",
            }
            if m.reasoning_content is not None:
                msg["reasoning_content"] = m.reasoning_content
            messages.append(msg)
        try:
            text = tokenizer.render_chat(messages, add_generation_prompt=True)
        except SrlmError as e:
            raise ApiError(400, str(e), param="messages") from None
        except Exception as e:  # the checkpoint's template failed on these messages (a TypeError in jinja, ...)
            raise ApiError(
                400, f"the chat template could not render these messages ({type(e).__name__}: {e})", param="messages"
            ) from None
        prompt = tokenizer.encode(text, add_special_tokens=False)
        if not prompt:
            raise ApiError(400, "the messages make an empty prompt", param="messages")
        given = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_tokens = body.max_completion_tokens or body.max_tokens
        r = row(
            body, prompt, "messages", given, max_tokens, max_tokens is not None, body.logprobs, body.top_logprobs or 0
        )
        return _Prepared([r], [text.rfind(THINK_START) > text.rfind(THINK_END)], stops_of(body), body.n)

    def prepare_completion(body: CompletionRequest) -> _Prepared:
        p = body.prompt
        texts = [p] if isinstance(p, str) else p if isinstance(p[0], str) else None
        if texts is not None:
            prompts = [tokenizer.encode(t, add_special_tokens=True) for t in texts]
        else:
            prompts = [p] if isinstance(p[0], int) else p
        check_common(body, body.n * len(prompts))
        if body.echo:
            raise ApiError(400, "echo is not supported by srlm serve: leave it false", param="echo")
        for i, ids in enumerate(prompts):
            if not ids:
                raise ApiError(
                    400, f"prompt {i} is empty (and the tokenizer adds no BOS token): give some text", param="prompt"
                )
            bad = next((t for t in ids if not 0 <= t < engine.vocab_size), None)
            if bad is not None:
                raise ApiError(
                    400,
                    f"prompt {i} has token id {bad}, outside the vocabulary [0, {engine.vocab_size})",
                    param="prompt",
                )
        explicit = "max_tokens" in body.model_fields_set and body.max_tokens is not None
        rows = [
            row(
                body,
                ids,
                "prompt",
                "max_tokens",
                body.max_tokens,
                explicit,
                body.logprobs is not None,
                body.logprobs or 0,
            )
            for ids in prompts
        ]
        return _Prepared(rows, [False] * len(rows), stops_of(body), body.n)

    # ------------------------------------------------------------ running a job
    def submit(prep: _Prepared, stream: bool) -> tuple[Job, _Inbox]:
        inbox = _Inbox(asyncio.get_running_loop(), eager=stream)
        job = Job(prep.rows, prep.stops, inbox.put, stream=stream)
        if not sched.submit(job):
            raise ApiError(
                429,
                f"{settings.max_waiting} requests are already waiting: retry later",
                type="rate_limit_error",
                code="server_busy",
            )
        return job, inbox

    async def events_of(job: Job, inbox: _Inbox, request: Request | None, poll: float = 0.25):
        """The job's events, in lists; with `request`, a client that leaves cancels the job (checked every
        `poll` s). Streaming responses pass no request: Starlette cancels their generator when the client leaves."""
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while True:
            events = await inbox.get(poll if request is not None else None)
            if request is not None and loop.time() - checked >= poll:
                checked = loop.time()
                if await request.is_disconnected():
                    sched.cancel(job)
                    return
            if not events:
                continue
            yield events
            if any(isinstance(e, (Done, Failed)) for e in events):
                return

    def failure(event: Failed) -> ApiError:
        return ApiError(500, event.message, type="server_error", code="internal_error")

    reprs: dict[int, tuple[str, list[int]]] = {}

    def token(i: int) -> tuple[str, list[int]]:
        if i not in reprs:
            reprs[i] = _token_repr(tokenizer, i)
        return reprs[i]

    def top_entries(steps):
        out = []
        for s in steps:
            if s.logprob is None:
                continue
            text, raw = token(s.token)
            tops = [{"token": token(i)[0], "logprob": lp, "bytes": token(i)[1]} for i, lp in (s.top_logprobs or [])]
            out.append({"token": text, "logprob": s.logprob, "bytes": raw, "top_logprobs": tops})
        return out

    def usage(done: Done) -> dict:
        return {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
        }

    # ------------------------------------------------------------ routes
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("srlm.serve").joinpath("chat.html").read_text(encoding="utf-8"))

    @app.get("/health", response_model=Health, responses={401: ERRORS[401]})
    async def health():
        """Liveness: the scheduler thread runs; with the batch's occupancy."""
        if not sched.alive:
            raise ApiError(503, "the scheduler thread is not running", type="server_error", code="unavailable")
        return {"status": "ok", **sched.stats()}

    @app.get("/v1/models", response_model=ModelList, responses={401: ERRORS[401]})
    async def models():
        return {"object": "list", "data": [card()]}

    def card() -> dict:
        return {
            "id": settings.model_name,
            "object": "model",
            "created": created,
            "owned_by": "srlm",
            "max_model_len": max_len,
        }

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses={401: ERRORS[401], 404: ERRORS[404]})
    async def model_card(model_id: str):
        if model_id != settings.model_name:
            raise ApiError(
                404,
                f"The model '{model_id}' does not exist; this server serves '{settings.model_name}'",
                param="model",
                code="model_not_found",
            )
        return card()

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=_generation_responses("chat.completion", "chat.completion.chunk"),
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        prep = prepare_chat(body)
        job, inbox = submit(prep, body.stream)
        rid, model = f"chatcmpl-{uuid.uuid4().hex}", settings.model_name
        n_choices = prep.n
        splitters = [ReasoningSplitter(prep.in_thought[0]) for _ in range(n_choices)]
        if body.stream:
            return StreamingResponse(
                _stream_chat(job, inbox, rid, model, splitters, body), media_type="text/event-stream"
            )
        reasoning, content = [""] * n_choices, [""] * n_choices
        logprobs = [[] for _ in range(n_choices)]
        finish = [None] * n_choices
        done = None
        async for events in events_of(job, inbox, request):
            for e in events:
                if isinstance(e, Failed):
                    raise failure(e)
                if isinstance(e, Delta):
                    r, c = splitters[e.choice].push(e.text)
                    reasoning[e.choice] += r
                    content[e.choice] += c
                    logprobs[e.choice] += top_entries(e.tokens)
                elif isinstance(e, Finish):
                    r, c = splitters[e.choice].finish()
                    reasoning[e.choice] += r
                    content[e.choice] += c
                    finish[e.choice] = e.reason
                elif isinstance(e, Done):
                    done = e
        if done is None:  # the client left
            return JSONResponse({}, status_code=499)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": content[i], "reasoning_content": reasoning[i] or None},
                "logprobs": {"content": logprobs[i]} if body.logprobs else None,
                "finish_reason": finish[i],
            }
            for i in range(n_choices)
        ]
        return {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage(done),
        }

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"

    async def _stream_chat(job, inbox, rid, model, splitters, body):
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        now = int(time.time())

        def chunk(index, delta, finish_reason=None, logprobs=None):
            c = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": now,
                "model": model,
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
            }
            if include_usage:
                c["usage"] = None
            return sse(c)

        pending = [[] for _ in splitters]  # logprobs of tokens whose text is still held back
        try:
            for i in range(len(splitters)):
                yield chunk(i, {"role": "assistant", "content": ""})
            async for events in events_of(job, inbox, None):
                for e in events:
                    if isinstance(e, Failed):
                        yield sse(failure(e).body())
                        yield "data: [DONE]\n\n"
                        return
                    if isinstance(e, (Delta, Finish)):
                        if isinstance(e, Delta):
                            r, c = splitters[e.choice].push(e.text)
                            pending[e.choice] += top_entries(e.tokens)
                        else:
                            r, c = splitters[e.choice].finish()
                        delta = {}
                        if r:
                            delta["reasoning_content"] = r
                        if c:
                            delta["content"] = c
                        if delta:
                            lp = {"content": pending[e.choice]} if body.logprobs else None
                            pending[e.choice] = []
                            yield chunk(e.choice, delta, logprobs=lp)
                        if isinstance(e, Finish):
                            lp = {"content": pending[e.choice]} if body.logprobs and pending[e.choice] else None
                            yield chunk(e.choice, {}, e.reason, logprobs=lp)
                    elif isinstance(e, Done) and include_usage:
                        yield sse(
                            {
                                "id": rid,
                                "object": "chat.completion.chunk",
                                "created": now,
                                "model": model,
                                "choices": [],
                                "usage": usage(e),
                            }
                        )
            yield "data: [DONE]\n\n"
        finally:
            sched.cancel(job)  # a no-op when it finished; frees its rows when the client left

    @app.post(
        "/v1/completions",
        response_model=Completion,
        responses=_generation_responses("text_completion", "text_completion"),
    )
    async def completions(body: CompletionRequest, request: Request):
        prep = prepare_completion(body)
        job, inbox = submit(prep, body.stream)
        rid, model = f"cmpl-{uuid.uuid4().hex}", settings.model_name
        n_choices = len(prep.rows) * prep.n
        want_top = bool(body.logprobs)
        if body.stream:
            return StreamingResponse(_stream_completion(job, inbox, rid, model, body), media_type="text/event-stream")
        texts = [""] * n_choices
        lps = [
            {"tokens": [], "token_logprobs": [], "top_logprobs": [] if want_top else None, "text_offset": []}
            for _ in range(n_choices)
        ]
        offsets = [0] * n_choices
        finish = [None] * n_choices
        done = None
        async for events in events_of(job, inbox, request):
            for e in events:
                if isinstance(e, Failed):
                    raise failure(e)
                if isinstance(e, Delta):
                    texts[e.choice] += e.text
                    if body.logprobs is not None:
                        offsets[e.choice] = _legacy_logprobs(
                            lps[e.choice], top_entries(e.tokens), offsets[e.choice], want_top
                        )
                elif isinstance(e, Finish):
                    finish[e.choice] = e.reason
                elif isinstance(e, Done):
                    done = e
        if done is None:
            return JSONResponse({}, status_code=499)
        choices = [
            {
                "index": i,
                "text": texts[i],
                "logprobs": lps[i] if body.logprobs is not None else None,
                "finish_reason": finish[i],
            }
            for i in range(n_choices)
        ]
        return {
            "id": rid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage(done),
        }

    async def _stream_completion(job, inbox, rid, model, body):
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        want_top = bool(body.logprobs)
        now = int(time.time())
        offsets: dict[int, int] = {}

        def chunk(index, text, finish_reason=None, logprobs=None):
            c = {
                "id": rid,
                "object": "text_completion",
                "created": now,
                "model": model,
                "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}],
            }
            if include_usage:
                c["usage"] = None
            return sse(c)

        try:
            async for events in events_of(job, inbox, None):
                for e in events:
                    if isinstance(e, Failed):
                        yield sse(failure(e).body())
                        yield "data: [DONE]\n\n"
                        return
                    if isinstance(e, Delta) and (e.text or body.logprobs is not None):
                        lp = None
                        if body.logprobs is not None:
                            lp = {
                                "tokens": [],
                                "token_logprobs": [],
                                "top_logprobs": [] if want_top else None,
                                "text_offset": [],
                            }
                            offsets[e.choice] = _legacy_logprobs(
                                lp, top_entries(e.tokens), offsets.get(e.choice, 0), want_top
                            )
                        yield chunk(e.choice, e.text, logprobs=lp)
                    elif isinstance(e, Finish):
                        yield chunk(e.choice, "", e.reason)
                    elif isinstance(e, Done) and include_usage:
                        yield sse(
                            {
                                "id": rid,
                                "object": "text_completion",
                                "created": now,
                                "model": model,
                                "choices": [],
                                "usage": usage(e),
                            }
                        )
            yield "data: [DONE]\n\n"
        finally:
            sched.cancel(job)

    return app


def _legacy_logprobs(out: dict, entries: list[dict], offset: int, want_top: bool) -> int:
    """Append chat-style entries to a /v1/completions logprobs object; returns the next text offset."""
    for e in entries:
        out["tokens"].append(e["token"])
        out["token_logprobs"].append(e["logprob"])
        if want_top:
            out["top_logprobs"].append({t["token"]: t["logprob"] for t in e["top_logprobs"]})
        out["text_offset"].append(offset)
        offset += len(e["token"])
    return offset
