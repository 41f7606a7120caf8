"""OpenAI-compatible routes, so the ``openai`` client (and whatever is built on it) talks to a polymodal service.

- ``GET /v1/models``: the one model served (its id is the run folder's name);
- ``POST /v1/chat/completions``: an instruct run or a causal LM (the bundled SmolLM2), streamed as server-sent
  events or not; image and audio content parts (``image_url`` with a data: URL, ``input_audio``) for an instruct
  run with those encoders;
- ``POST /v1/embeddings``: text embeddings of a classifier run's text encoder, or an align run's joint space;
- ``POST /v1/audio/transcriptions``: an asr run or a Whisper folder (``json``, ``text`` or ``verbose_json``).

They sit behind the same gate as the native routes (token, readiness, bounded queue, body size, deadline) and
join the same batchers: concurrent chats are generated together (static batching: the batch that is queued when
the model is free runs as one ``generate`` call; a streamed chat runs alone, its tokens sent as they are decoded).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .inference import ChatItem, chat_options
from .limits import RawInputs, RequestRejected, decode_base64
from .schemas import error_responses

_CODES = (401, 404, 413, 415, 422, 429, 500, 503, 504)


# --- request bodies (the subset of OpenAI's that a local model can honour; unknown fields are ignored, as the
# --- official client sends several we have no use for) ----------------------------------------------------------

class _ImageURL(BaseModel):
    url: str = Field(description="a data: URL (data:image/png;base64,...); remote URLs are not fetched")


class _InputAudio(BaseModel):
    data: str = Field(description="the audio file, base64-encoded")
    format: str = Field("wav", description="wav, flac or ogg")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "image_url", "input_audio"]
    text: str | None = None
    image_url: _ImageURL | None = None
    input_audio: _InputAudio | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}]}]})

    model: str = Field(description="the id /v1/models lists")
    messages: list[ChatMessage] = Field(min_length=1, description="the conversation, ending with a user turn")
    max_tokens: int | None = Field(None, ge=1, le=4096, description="most tokens to generate")
    max_completion_tokens: int | None = Field(None, ge=1, le=4096, description="same as max_tokens (newer name)")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    n: int = Field(1, ge=1, le=1, description="one answer per request")
    stream: bool = Field(False, description="send the answer as server-sent events, token by token")


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str] = Field(description="a text or a list of texts (token arrays are not accepted)")
    encoding_format: Literal["float", "base64"] = "float"


# --- responses -----------------------------------------------------------------------------------------------------

class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "polymodal"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def register(app: FastAPI, service: Any, decode: Callable[..., dict[str, Any]], secured: list) -> None:
    """Add the OpenAI-compatible routes to ``app``; ``decode`` is the service's media decoder (limits enforced).
    The OpenAPI page lists only the routes ``service.routes`` names (what the served run answers)."""
    created = int(time.time())
    extra = {"security": secured}

    def check_model(name: str) -> None:
        if name != service.model_name:
            raise RequestRejected(404, "model_not_found", f"model {name!r} is not served here; this service serves "
                                                          f"{service.model_name!r} (GET /v1/models)")

    def route(name: str) -> None:
        if name not in service.batchers:
            raise service.not_served({"chat": "/v1/chat/completions", "transcribe": "/v1/audio/transcriptions",
                                      "embed": "/v1/embeddings"}[name])

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise RequestRejected(415, "unsupported_content_type", f"content type {ctype or '(none)'}: send "
                                                                   "application/json")
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise RequestRejected(422, "invalid_request", f"{where}: {first['msg']}") from None

    async def run_one(request: Request, raw: RawInputs, name: str) -> Any:
        return await service.batchers[name].submit(await service.decode(raw), request.state.ticket,
                                                   request.state.deadline)

    @app.get("/v1/models", response_model=ModelList, responses=error_responses(401, 429, 503),
             openapi_extra=extra, summary="the model served (OpenAI-compatible)")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=service.model_name, created=created)])

    @app.post("/v1/chat/completions", responses=error_responses(*_CODES), summary="answer a conversation "
              "(OpenAI-compatible; stream: server-sent events)", include_in_schema="chat" in service.routes,
              openapi_extra={**extra, "requestBody": {"required": True, "content": {"application/json": {
                  "schema": _chat_schema(service.cfg.max_new_tokens)}}}})
    async def chat(request: Request) -> Response:
        route("chat")
        body: ChatRequest = await parse(request, ChatRequest)
        check_model(body.model)
        tmp = Path(tempfile.mkdtemp(prefix="polymodal-chat-"))  # the attachments, until the answer is generated
        try:
            turns = await run_in_threadpool(_turns, body, service, decode, tmp)
            item = ChatItem(turns, _options(body, service))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not body.stream:
            try:
                r = await service.batchers["chat"].submit(item, request.state.ticket, request.state.deadline)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": now, "model": service.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r["text"]},
                             "finish_reason": r["finish_reason"], "logprobs": None}],
                "usage": {"prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"],
                          "total_tokens": r["prompt_tokens"] + r["completion_tokens"]}})
        # The request is admitted and valid before the 200 goes out; an error after it can only end the stream.
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        item.on_text = lambda s: loop.call_soon_threadsafe(pieces.put_nowait, s)
        job = asyncio.create_task(service.batchers["chat"].submit(item, request.state.ticket, request.state.deadline))

        def finished(_: asyncio.Task) -> None:
            pieces.put_nowait(None)
            shutil.rmtree(tmp, ignore_errors=True)

        job.add_done_callback(finished)
        include_usage = bool((await _stream_options(request)).get("include_usage"))
        return StreamingResponse(_sse(rid, now, service.model_name, pieces, job, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/embeddings", responses=error_responses(*_CODES), summary="text embeddings (OpenAI-compatible)",
              include_in_schema="embeddings" in service.routes,
              openapi_extra={**extra, "requestBody": {"required": True, "content": {"application/json": {
                  "schema": EmbeddingRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
    async def embeddings(request: Request) -> JSONResponse:
        route("embed")
        body: EmbeddingRequest = await parse(request, EmbeddingRequest)
        check_model(body.model)
        if "text" not in service.modalities:
            raise RequestRejected(422, "unsupported_modality", "this run has no text encoder; /v1/embeddings "
                                                               "embeds text (use /v1/embed for its media)")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > service.cfg.max_batch_size:
            raise RequestRejected(413 if texts else 422, "bad_input", f"input: send 1 to {service.cfg.max_batch_size} "
                                                                      f"texts, got {len(texts)}")
        decoded = [await service.decode(RawInputs(text=t), f"input[{i}]") for i, t in enumerate(texts)]
        batcher = service.batchers["embed"]
        vectors = [r["text"] for r in await asyncio.gather(*(batcher.submit(d, request.state.ticket,
                                                                            request.state.deadline) for d in decoded))]
        tokens = sum(service.backend.token_count(t) for t in texts)
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
                 if body.encoding_format == "base64" else v} for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": service.model_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.post("/v1/audio/transcriptions", responses=error_responses(*_CODES),
              summary="the transcript of an audio file (OpenAI-compatible)",
              include_in_schema="transcriptions" in service.routes, openapi_extra={
                  **extra, "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                      "type": "object", "required": ["file", "model"],
                      "properties": {"file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
                                     "language": {"type": "string"}, "prompt": {"type": "string"},
                                     "temperature": {"type": "number"},
                                     "response_format": {"type": "string",
                                                         "enum": ["json", "text", "verbose_json"]}}}}}}})
    async def transcriptions(request: Request) -> Response:
        route("transcribe")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            raise RequestRejected(415, "unsupported_content_type", f"content type {ctype or '(none)'}: send "
                                                                   "multipart/form-data with file and model")
        cap = service.cfg.max_body_bytes
        async with request.form(max_files=1, max_fields=8, max_part_size=cap) as form:
            upload, model = form.get("file"), form.get("model")
            fmt = form.get("response_format") or "json"
            if not isinstance(upload, UploadFile):
                raise RequestRejected(422, "missing_file", "file: send the audio file as a multipart upload")
            if not isinstance(model, str):
                raise RequestRejected(422, "missing_model", f"model: send the model id ({service.model_name!r})")
            if fmt not in ("json", "text", "verbose_json"):
                raise RequestRejected(422, "bad_response_format", f"response_format {fmt!r}: use json, text or "
                                                                  "verbose_json")
            check_model(model)
            data = await upload.read()
        r = await run_one(request, RawInputs(audio=data), "transcribe")
        if fmt == "text":
            return PlainTextResponse(r["text"] + "\n")
        if fmt == "json":
            return JSONResponse({"text": r["text"]})
        segments = [{"id": i, "start": s["start"], "end": s["end"], "text": s["text"]}
                    for i, s in enumerate(r["segments"])]
        return JSONResponse({"task": "transcribe", "language": str(form.get("language") or "unknown"),
                             "duration": r["duration_s"], "text": r["text"], "segments": segments})


def _chat_schema(most_tokens: int) -> dict[str, Any]:
    """ChatRequest's schema with this server's token limit."""
    schema = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in ("max_tokens", "max_completion_tokens"):
        for option in schema["properties"][name].get("anyOf", []):
            if option.get("type") == "integer":
                option["maximum"] = most_tokens
    return schema


def _options(body: ChatRequest, service: Any) -> Any:
    most_tokens = service.cfg.max_new_tokens
    asked = body.max_completion_tokens or body.max_tokens
    if asked is not None and asked > most_tokens:
        raise RequestRejected(422, "too_many_tokens", f"max_tokens: at most {most_tokens} on this server (serve "
                                                      f"--max-new-tokens), got {asked}")
    return chat_options(service.backend.model.defaults, most_tokens, asked, body.temperature, body.top_p, body.seed)


_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "WAV": ".wav",
           "FLAC": ".flac", "OGG": ".ogg"}


def _turns(body: ChatRequest, service: Any, decode: Callable[..., dict[str, Any]], tmp: Path) -> list[Any]:
    """The request's messages as instruct ``Turn``s; each image or audio part is checked with the service's limits
    and written to ``tmp`` (the instruct run encodes attachments from files)."""
    from ..instruct.data import PLACEHOLDERS, Turn
    from .limits import sniff_format

    turns = []
    for i, msg in enumerate(body.messages):
        role = "system" if msg.role == "developer" else msg.role
        if isinstance(msg.content, str):
            turns.append(Turn(role, msg.content))
            continue
        text, files = [], {"image": [], "audio": []}
        for j, part in enumerate(msg.content):
            where = f"messages[{i}].content[{j}]"
            if part.type == "text":
                text.append(part.text or "")
                continue
            modality = "image" if part.type == "image_url" else "audio"
            if modality not in service.modalities:
                raise RequestRejected(422, "unsupported_modality", f"{where}: this model takes no {modality} (it "
                                                                   f"takes {', '.join(service.modalities)})")
            if role != "user":
                raise RequestRejected(422, "bad_message", f"{where}: only user messages may carry {modality}")
            if part.type == "image_url":
                if part.image_url is None or not part.image_url.url.startswith("data:"):
                    raise RequestRejected(422, "remote_url", f"{where}: send the image inline as a data: URL "
                                                             "(data:image/png;base64,...); URLs are not fetched")
                data = decode_base64(part.image_url.url, where)
            else:
                if part.input_audio is None:
                    raise RequestRejected(422, "bad_part", f"{where}: input_audio needs data and format")
                data = decode_base64(part.input_audio.data, where)
            try:
                decode(RawInputs(**{modality: data}), service.cfg, service.sample_rates)  # limits and validity
            except RequestRejected as e:
                raise RequestRejected(e.status, e.kind, f"{where}: {e.message}") from None
            path = tmp / f"m{i}-{j}{_SUFFIX.get(sniff_format(data, modality) or '', '')}"
            path.write_bytes(data)
            files[modality].append(path)
            text.append(PLACEHOLDERS[modality])
        turns.append(Turn(role, "\n".join(text), tuple(files["image"]), tuple(files["audio"])))
    if not turns or turns[-1].role != "user":
        raise RequestRejected(422, "bad_messages", "messages: the conversation must end with a user message")
    if any(not t.content.strip() for t in turns):
        raise RequestRejected(422, "empty_message", "messages: a message has no content")
    if sum(len(t.content) for t in turns) > service.cfg.max_text_chars:
        raise RequestRejected(413, "text_too_long", f"messages: more than {service.cfg.max_text_chars:,} characters "
                                                    "in all; shorten the conversation")
    return turns


async def _stream_options(request: Request) -> dict[str, Any]:
    try:
        options = json.loads(await request.body()).get("stream_options") or {}
    except (ValueError, AttributeError):
        return {}
    return options if isinstance(options, dict) else {}


async def _sse(rid: str, created: int, model: str, pieces: asyncio.Queue, job: asyncio.Task,
               include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them: a role delta, content deltas, the finish reason, ``[DONE]``."""
    def event(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""})
    while (piece := await pieces.get()) is not None:
        if piece:
            yield event({"content": piece})
    try:
        r = job.result()
    except Exception as e:  # the deadline or the model: the 200 is already out, so the stream says it
        yield f"data: {json.dumps({'error': {'message': str(e) or type(e).__name__, 'type': type(e).__name__}})}\n\n"
        return
    yield event({}, r["finish_reason"])
    if include_usage:
        yield event({}, usage={"prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"],
                               "total_tokens": r["prompt_tokens"] + r["completion_tokens"]})
    yield "data: [DONE]\n\n"
