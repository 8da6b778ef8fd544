"""The OpenAI API surface the server speaks: request bodies, validation, response objects.

Requests are pydantic models of the fields OpenAI clients send for
`/v1/completions` and `/v1/chat/completions`, plus one extension object,
`ram` (sent by OpenAI clients through `extra_body`), that chooses the
alignment of the request:

  {"ram": {"mode": "weighted_product", "aligners": {"polite": 1.0, "cite": 0.5},
           "proposal_temperature": 0.7, "proposal_top_p": 0.95, "kl_threshold": 0.1}}

Each response choice carries a `ram` object too when log-probs are asked
for: the token ids, P's log-prob of each token and each aligner's
(`log_softmax` of the raw logits at T = 1, as `DecodeRecord` has them).

A bad request raises `RequestError` (HTTP status, OpenAI error type, the
field it names, a message that says the fix); `error_body` renders it as
OpenAI does: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Fields OpenAI defines that change sampling in ways the RAM decoder does not
# implement; a request that sets them to a non-default value is refused, not
# silently served differently.
_UNSUPPORTED = {
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "best_of": None,
    "suffix": None,
    "logit_bias": None,
}


# Log-probs of alternative tokens are not computed by the decoder: `logprobs`
# (completions) and `top_logprobs` (chat) accept 0 only.


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, OpenAI error `type`, the `param` at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code=None):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status
        self.code = code
        self.type = {400: "invalid_request_error", 404: "invalid_request_error"}.get(
            status, "server_error" if status >= 500 else "rate_limit_error"
        )


def error_body(error: RequestError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


def validation_error(e: ValidationError) -> RequestError:
    """The first pydantic problem as a `RequestError` naming the field."""
    first = e.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    return RequestError(f"{param}: {first.get('msg', 'invalid value')}", param)


class RamOptions(BaseModel):
    """The request's alignment: the RAM mode, the aligners and P's own warper."""

    model_config = ConfigDict(extra="forbid")

    mode: str | None = None
    aligners: dict[str, float] | None = None
    aligner_temperature: float | None = Field(default=None, ge=0)
    proposal_temperature: float | None = Field(default=None, ge=0)
    proposal_top_p: float | None = Field(default=None, gt=0, le=1)
    proposal_top_k: int | None = Field(default=None, ge=0)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)
    kl_threshold: float | None = Field(default=None, ge=0)


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**31)
    user: str | None = None
    ram: RamOptions | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise RequestError("stop: at most 4 stop sequences.", "stop")
        if any(not s for s in stops):
            raise RequestError("stop: stop sequences must be non-empty strings.", "stop")
        return stops

    def check_unsupported(self) -> None:
        extra = self.model_extra or {}
        for name, default in _UNSUPPORTED.items():
            if name in extra and extra[name] not in (default, None):
                raise RequestError(
                    f"{name}: not supported by this server; leave it at its default ({default}).",
                    name,
                )

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Common):
    """`POST /v1/completions`."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=0)
    echo: bool = False

    def prompts(self) -> list[str | list[int]]:
        """One or more prompts: strings, or token id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise RequestError("prompt: empty; send a string or a list of token ids.", "prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            parts = []
            for part in self.content:
                if part.get("type") != "text":
                    raise RequestError(
                        f"messages: content part of type {part.get('type')!r} is not supported; "
                        "send text parts only.",
                        "messages",
                    )
                parts.append(part.get("text", ""))
            return "".join(parts)
        return self.content or ""


class ChatCompletionRequest(_Common):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=0)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def conversation(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
