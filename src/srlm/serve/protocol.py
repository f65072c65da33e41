"""The OpenAI wire format that `srlm serve` speaks: request and response models, and errors.

Requests are validated by these models (which also make the OpenAPI spec); a parameter srlm
does not implement is refused with a 400 naming it, never silently ignored. Errors are OpenAI's
`{"error": {"message", "type", "param", "code"}}`. Extra request fields beyond OpenAI's, as vLLM
has them: `top_k`, `min_p`, `ignore_eos`, and `thinking_budget` (at most that many tokens inside
<think>...</think>). Chat replies carry the thinking apart, as `reasoning_content` (vLLM, DeepSeek).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

MAX_STOP = 4
MAX_STOP_CHARS = 256
INT64 = 2**63


class ApiError(Exception):
    """A request the server refuses: HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _valid_unicode(text: str) -> str:
    """JSON can smuggle in lone surrogates (\\ud800), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (a lone surrogate escape)") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
StopText = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS), AfterValidator(_valid_unicode)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    # extra keys (name, tool_call_id, ...) are passed to the chat template as they are
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    reasoning_content: Text | None = None


Temperature = Annotated[float, Field(ge=0, le=2, description="0 = greedy")]
TopP = Annotated[float, Field(gt=0, le=1)]
Seed = Annotated[int, Field(ge=-INT64, lt=INT64)]
Stop = StopText | Annotated[list[StopText], Field(max_length=MAX_STOP)] | None
Penalty = Annotated[float, Field(ge=-2, le=2, description="only 0 is supported")]


class _Sampling(_Strict):
    model: str | None = Field(None, description="the served model's id (GET /v1/models); may be left out")
    max_tokens: int | None = Field(None, ge=1, description="new tokens at most (default: up to the context end)")
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: int = Field(1, ge=1, description="completions per prompt")
    stop: Stop = Field(None, description=f"up to {MAX_STOP} strings; the text ends before the first one found")
    seed: Seed | None = Field(None, description="the same seed gives the same completion, whatever else runs")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, float] | None = Field(None, description="only an empty map is supported")
    user: str | None = None
    # beyond OpenAI, as vLLM has them
    top_k: int = Field(0, ge=-1, description="keep the k most likely tokens (0 or -1 = off)")
    min_p: float = Field(0.0, ge=0, lt=1, description="drop tokens below min_p x the most likely one")
    ignore_eos: bool = Field(False, description="do not stop on the end-of-sequence tokens")
    thinking_budget: int | None = Field(
        None, ge=0, description="at most this many tokens inside <think>...</think>, then </think> is forced"
    )


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="the same as max_tokens (wins over it)")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


Prompt = (
    Text
    | Annotated[list[Text], Field(min_length=1)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[list[int]], Field(min_length=1)]
)


class CompletionRequest(_Sampling):
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=1, description="new tokens at most (default 16, as OpenAI)")
    logprobs: int | None = Field(None, ge=0, le=5, description="also the logprobs of this many most likely tokens")
    echo: bool = Field(False, description="only false is supported")


# ---------------------------------------------------------------- responses (for the spec)
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    reasoning_content: str | None = Field(None, description="the text between <think> and </think>")


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    running_rows: int
    running_requests: int
    waiting_requests: int
    steps: int
