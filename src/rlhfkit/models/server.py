"""`rlhfkit serve-model`: an OpenAI-compatible HTTP server around a local model or a policy
rlhfkit trained, so any OpenAI client can talk to it (and the endpoint backend of the
Constitutional AI steps is tested against a real server).

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, each with
`logprobs` as OpenAI defines them (chat: `logprobs: true` and `top_logprobs: N`;
completions: `logprobs: N`). One model, one batch at a time; requests queue for it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from rlhfkit.errors import RlhfkitError
from rlhfkit.models.backends import Generated, LocalBackend

MAX_TOKENS_LIMIT = 4096
TOP_LOGPROBS_LIMIT = 20


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=TOP_LOGPROBS_LIMIT)


class CompletionRequest(BaseModel):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    seed: int | None = None
    logprobs: int | None = Field(None, ge=0, le=TOP_LOGPROBS_LIMIT)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def _usage(prompt_tokens: int, generated: list[Generated]) -> dict[str, int]:
    completion = sum(len(g.tokens) for g in generated)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _answer(kind: str, prefix: str, model: str, choices: list, usage: dict) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def create_model_app(backend: LocalBackend, served_name: str | None = None) -> FastAPI:
    app = FastAPI(title="rlhfkit serve-model", docs_url=None, redoc_url=None)
    name = served_name or backend.name

    def check_model(requested: str | None) -> None:
        if requested not in (None, name):
            raise HTTPException(404, f"this server serves '{name}', not '{requested}'")

    def count_tokens(texts: list[str], special: bool) -> int:
        return sum(len(backend.tokenizer(t, add_special_tokens=special).input_ids) for t in texts)

    @app.exception_handler(HTTPException)
    async def http_error(_, error: HTTPException):
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        return _error(400, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(RlhfkitError)
    async def model_error(_, error: RlhfkitError):
        return _error(400, str(error))

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "rlhfkit"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        check_model(request.model)
        text = backend.chat_text([m.model_dump() for m in request.messages])
        top = request.top_logprobs if request.logprobs else 0
        generated = await run_in_threadpool(
            backend.generate,
            [text] * request.n,
            request.max_completion_tokens or request.max_tokens or 256,
            request.temperature,
            request.top_p,
            request.seed or 0,
            top,
            False,
            request.logprobs,
        )
        choices = []
        for index, g in enumerate(generated):
            logprobs = None
            if request.logprobs:
                logprobs = {
                    "content": [
                        {
                            "token": token,
                            "logprob": lp,
                            "bytes": list(token.encode()),
                            "top_logprobs": [
                                {"token": t, "logprob": v, "bytes": list(t.encode())}
                                for t, v in list(alternatives.items())[:top]
                            ],
                        }
                        for token, lp, alternatives in zip(
                            g.tokens,
                            g.logprobs,
                            g.top_logprobs or [{}] * len(g.tokens),
                            strict=True,
                        )
                    ]
                }
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": g.text},
                    "finish_reason": g.finish_reason,
                    "logprobs": logprobs,
                }
            )
        usage = _usage(count_tokens([text], False) * request.n, generated)
        return _answer("chat.completion", "chatcmpl", name, choices, usage)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> dict[str, Any]:
        check_model(request.model)
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if not prompts:
            raise HTTPException(400, "prompt: give at least one")
        texts = [p for p in prompts for _ in range(request.n)]
        generated = await run_in_threadpool(
            backend.generate,
            texts,
            request.max_tokens,
            request.temperature,
            request.top_p,
            request.seed or 0,
            request.logprobs or 0,
            True,  # raw text: the tokenizer's special tokens, as the judge's reading has
            request.logprobs is not None,
        )
        choices = []
        for index, g in enumerate(generated):
            logprobs = None
            if request.logprobs is not None:
                offsets, at = [], 0
                for token in g.tokens:
                    offsets.append(at)
                    at += len(token)
                logprobs = {
                    "tokens": g.tokens,
                    "token_logprobs": g.logprobs,
                    "top_logprobs": g.top_logprobs if request.logprobs else None,
                    "text_offset": offsets,
                }
            choices.append(
                {
                    "index": index,
                    "text": g.text,
                    "finish_reason": g.finish_reason,
                    "logprobs": logprobs,
                }
            )
        usage = _usage(count_tokens(texts, True), generated)
        return _answer("text_completion", "cmpl", name, choices, usage)

    return app
