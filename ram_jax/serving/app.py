"""The HTTP layer: OpenAI routes over the slot engine (FastAPI on uvicorn).

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with
`stream: true` as server-sent events), `GET /v1/models`, `GET /health`,
`GET /metrics`. A handler validates the request (`protocol`), resolves it to
engine jobs (`requests`: ids, settings, keys; one job per prompt and
choice), submits them all, and turns their token events into OpenAI
objects (`text.TextStream`). A stop string, seen on the host, cancels the
job, which frees its slot; so does a client that goes away mid-request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from ram_jax.serving import protocol as api
from ram_jax.serving.engine import Engine, QueueFull
from ram_jax.serving.requests import Resolver
from ram_jax.serving.text import TextStream


def create_app(engine: Engine, resolver: Resolver) -> FastAPI:
    """The ASGI app serving `engine`; `resolver` maps requests to jobs."""
    app = FastAPI(title="ram_jax", docs_url=None, redoc_url=None)
    metrics = engine.metrics

    @app.exception_handler(api.RequestError)
    async def _refused(request: Request, e: api.RequestError):
        return JSONResponse(api.error_body(e), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        err = api.RequestError(f"{param or 'body'}: {first.get('msg', 'invalid')}", param)
        return JSONResponse(api.error_body(err), status_code=400)

    @app.get("/health")
    async def health():
        status = "failed" if engine.error else "ok"
        body = {
            "status": status,
            "slots": engine.slots,
            "busy": engine.busy_slots(),
            "queued": engine.queued(),
        }
        return JSONResponse(body, status_code=500 if engine.error else 200)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": resolver.model_cards()}

    async def parse(request: Request, model_cls):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise api.RequestError("body: not valid JSON; send one JSON object.", None) from None
        if not isinstance(body, dict):
            raise api.RequestError("body: expected a JSON object.", None)
        try:
            return model_cls.model_validate(body)
        except ValidationError as e:
            raise api.validation_error(e) from None

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, api.CompletionRequest)
        return await _serve(request, "completions", req, resolver.completion(req), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse(request, api.ChatCompletionRequest)
        return await _serve(request, "chat", req, resolver.chat(req), chat=True)

    async def _serve(request: Request, route: str, req, jobs, chat: bool):
        try:
            handles = engine.submit(jobs)
        except QueueFull as e:
            metrics.requests.labels(route, "rejected").inc()
            raise api.RequestError(str(e), None, status=429) from None
        rid = api.new_id("chatcmpl" if chat else "cmpl")
        streams = [TextStream(resolver.tok, job) for job in jobs]
        if req.stream:
            body = _sse(route, req, rid, handles, streams, chat)
            return StreamingResponse(body, media_type="text/event-stream")
        drains = [_drain(h, s) for h, s in zip(handles, streams, strict=True)]
        watch = asyncio.create_task(_watch_disconnect(request, handles))
        try:
            await asyncio.gather(*drains)
        except RuntimeError as e:  # the engine cancelled it (shutdown, failure)
            metrics.requests.labels(route, "failed").inc()
            raise api.RequestError(str(e), None, status=503) from None
        finally:
            watch.cancel()
            for h in handles:
                h.cancel()
        metrics.requests.labels(route, "ok").inc()
        return _final(req, rid, streams, chat)

    async def _watch_disconnect(request: Request, handles) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.05)
        for h in handles:
            h.cancel()

    async def _drain(handle, stream: TextStream) -> None:
        async for event in handle.events():
            stream.add(event)
            if stream.finished:
                break

    async def _sse(route, req, rid, handles, streams, chat) -> AsyncIterator[str]:
        created = api.now()
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i):
            try:
                async for event in handles[i].events():
                    delta = streams[i].add(event)
                    await queue.put((i, delta, streams[i].finish_reason))
                    if streams[i].finished:
                        break
            except RuntimeError as e:
                await queue.put((i, e, None))
            finally:
                handles[i].cancel()
                await queue.put((i, None, None))

        tasks = [asyncio.create_task(pump(i)) for i in range(len(handles))]
        left, status = len(handles), "ok"
        try:
            if chat:
                for i in range(len(handles)):
                    yield _event(_chat_chunk(req, rid, created, i, {"role": "assistant"}))
            while left:
                i, delta, finish = await queue.get()
                if delta is None:
                    left -= 1
                    continue
                if isinstance(delta, Exception):
                    status = "failed"
                    yield _event(api.error_body(api.RequestError(str(delta), None, status=503)))
                    continue
                if not delta.text and not finish:
                    continue
                if chat:
                    piece = {"content": delta.text} if delta.text else {}
                    yield _event(_chat_chunk(req, rid, created, i, piece, finish))
                else:
                    yield _event(_text_chunk(req, rid, created, i, delta.text, finish))
            if req.include_usage():
                tail = _chat_chunk(req, rid, created, None, None) if chat else _head(req, rid)
                yield _event(tail | {"choices": [], "usage": _usage(req, streams)})
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:  # the client went away
            status = "disconnected"
            raise
        finally:
            for h in handles:
                h.cancel()
            for t in tasks:
                t.cancel()
            metrics.requests.labels(route, status).inc()

    def _usage(req, streams) -> dict:
        prompt = sum(s.prompt_tokens for s in streams[:: req.n])
        return api.usage(prompt, sum(s.completion_tokens for s in streams))

    def _head(req, rid) -> dict:
        return {"id": rid, "object": "text_completion", "created": api.now(), "model": req.model}

    def _final(req, rid, streams, chat: bool) -> dict:
        choices = []
        for i, s in enumerate(streams):
            if chat:
                choice = {
                    "index": i,
                    "message": {"role": "assistant", "content": s.text},
                    "logprobs": _chat_logprobs(s) if req.logprobs else None,
                    "finish_reason": s.finish_reason,
                }
                wants = req.logprobs
            else:
                wants = req.logprobs is not None
                choice = {
                    "index": i,
                    "text": (resolver.tok.decode(list(s.job.prompt_ids)) if req.echo else "")
                    + s.text,
                    "logprobs": _completion_logprobs(s) if wants else None,
                    "finish_reason": s.finish_reason,
                }
            if wants:
                choice["ram"] = s.ram_extension(resolver.aligner_names)
            choices.append(choice)
        return {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": api.now(),
            "model": req.model,
            "choices": choices,
            "usage": _usage(req, streams),
        }

    def _chat_chunk(req, rid, created, index, delta, finish=None) -> dict:
        out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model}
        if index is None:
            return out
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return out | {"choices": [choice]}

    def _text_chunk(req, rid, created, index, text, finish) -> dict:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        return _head(req, rid) | {"created": created, "choices": [choice]}

    return app


def _completion_logprobs(s: TextStream) -> dict:
    """OpenAI's completions `logprobs` with P's log-prob of each token."""
    tokens = s.token_strings()
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": list(s.logprobs_p),
        "top_logprobs": None,
        "text_offset": offsets,
    }


def _chat_logprobs(s: TextStream) -> dict:
    """OpenAI's chat `logprobs` with P's log-prob of each token."""
    content = [
        {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
        for t, lp in zip(s.token_strings(), s.logprobs_p, strict=True)
    ]
    return {"content": content}


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
