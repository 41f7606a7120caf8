"""The HTTP service of a trained run or model: ``create_app(run, cfg)`` -> a FastAPI app.

What it serves (``inference.source_kind``): a classify or align run (``/v1/predict``, ``/v1/embed``), an asr run or
Whisper folder (``/v1/transcribe``), an instruct run or causal LM (chat); beside the native routes, the
OpenAI-compatible ones (``openai_api``) and the Open Inference Protocol v2 (``v2_api``), all behind the same gate.

Why FastAPI on uvicorn: the request and response bodies are pydantic models, so the OpenAPI schema at
``/openapi.json`` is the code itself, not a document kept beside it; uvicorn is the most used ASGI server,
supports several worker processes on one port (the scale-out used here) and a graceful shutdown; both are small
pure-Python installs from PyPI. Triton or TorchServe would add a model repository format and a JVM or C++
server for one PyTorch model; Ray Serve a cluster runtime; BentoML and LitServe wrap the same ASGI stack.

A request on a ``/v1`` route (or ``/v2/models/NAME/infer``) passes, in order: the bearer token (401), the drain and readiness check (503), the body, read within ``body_timeout_s`` (408) and ``max_body_bytes`` (413) before the request takes a place in
the bounded queue (429 with Retry-After; a stalled upload never holds one), parsing
(415/422), the checks that need no decoding (413/422), decoding with limits in a thread (413/422), and the
dynamic batcher, within the request's deadline (504).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .. import run_folder
from ..classify.run import Run
from . import inference, openai_api, v2_api
from ._metrics import Metrics
from .batch_api import Many, parse_many, submit_many
from .batcher import Admission, Batcher, DeadlineExceeded, InferenceFailed
from .config import ServeConfig
from .limits import MODALITIES, RawInputs, RequestRejected, check_inputs, decode_base64, decode_inputs
from .schemas import EmbedBatchResponse, EmbedResponse, Embeddings, ErrorResponse, Health, PredictBatchResponse, \
    PredictRequest, PredictResponse, TranscribeBatchResponse, TranscribeResponse, error_responses, request_body_schema

log = logging.getLogger(__name__)
DEADLINE_HEADER = "x-deadline-ms"
_ROUTES = ("/v1/predict", "/v1/embed", "/v1/transcribe", "/livez", "/readyz", "/metrics", "/openapi.json", "/docs",
           "/v1/models", "/v1/chat/completions", "/v1/embeddings", "/v1/audio/transcriptions", "/v2",
           "/v2/health/live", "/v2/health/ready")


class Service:
    """The state behind the app: the model (once loaded), the queue's gate, the batchers, the drain flag."""

    def __init__(self, run: Run | inference.Backend | str | Path, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.admission = Admission(cfg.max_queue, self.metrics)
        # already loaded (a Backend: the replicas of serve.on_ray load before they take traffic), or loaded by start()
        self.backend: inference.Backend | None = run if isinstance(run, inference.Backend) else None
        source = self.backend.source if self.backend is not None else run
        self.run: Run | None = source if isinstance(source, Run) else None
        self._source = source if isinstance(source, Run) else Path(source)
        # an asr run or a Whisper folder is a transcriber, an instruct run or a causal LM a chat model, anything
        # else a classifier run (an align run answers embeddings only)
        self.kind = inference.source_kind(source)
        self.routes = _served_routes(self.kind, source)
        self.load_error: str | None = None
        self.draining = False
        self.batchers: dict[str, Batcher] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polymodal-infer")
        self._tasks: list[asyncio.Task] = []

    @property
    def ready(self) -> bool:
        return bool(self.batchers) and not self.draining

    @property
    def model_name(self) -> str:
        """The model's id on the OpenAI and v2 routes: the run folder's name (or the model reference)."""
        return (self._source.path if isinstance(self._source, Run) else self._source).name or "model"

    @property
    def sample_rates(self) -> dict[str, int | None]:
        return self.backend.sample_rates if self.backend is not None else {}

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.backend.modalities if self.backend is not None else ()

    def status(self) -> tuple[str, str | None]:
        if self.load_error:
            return "failed", self.load_error
        if self.draining:
            return "draining", "shutting down: finishing the requests in flight"
        if not self.batchers:
            return "loading", "the model is loading"
        return "ready", None

    async def start(self) -> None:
        """Load the model (in the inference thread, so the loop already answers /livez and /readyz) and start
        batching."""
        loop = asyncio.get_running_loop()
        try:
            if self.cfg.threads is not None:
                import torch

                await loop.run_in_executor(self._executor, torch.set_num_threads, self.cfg.threads)
            if self.backend is None:
                self.backend = await loop.run_in_executor(self._executor, inference.load_backend, self._source,
                                                          self.cfg.bucket_size)
        except Exception as e:
            log.exception("loading the model failed")
            self.load_error = f"loading {self.model_name} failed: {e}"
            return
        if self.kind == "classifier":
            self.run = self.backend.model
        for name, fn in self.backend.fns.items():
            b = Batcher(name, fn, self._executor, self.cfg.max_batch_size, self.cfg.max_delay_ms, self.metrics)
            self._tasks.append(asyncio.create_task(b.run(), name=f"polymodal-batcher-{name}"))
            self.batchers[name] = b

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def decode(self, raw: RawInputs, where: str = "") -> dict[str, Any]:
        """One example checked (the limits its headers tell) and decoded, in a thread; ``where`` names it in an error
        (``instances[2]: ...``) when a request holds several."""
        try:
            check_inputs(raw, self.modalities, self.cfg)
            return await run_in_threadpool(_decode, raw, self.cfg, self.sample_rates)
        except RequestRejected as e:
            if not where:
                raise
            raise RequestRejected(e.status, e.kind, f"{where}: {e.message}") from None

    def not_served(self, path: str) -> RequestRejected:
        """The 404 of a route this model does not answer, naming the routes it does."""
        what = {"transcriber": "a speech recogniser", "chat": "a chat model", "classifier": "a classifier run"}[self.kind]
        served = ", ".join(ROUTE_PATHS[r] for r in self.routes)
        return RequestRejected(404, "not_served", f"{path} is not served here: this service runs {what} ({served})")

    async def handle(self, request: Request, route: str) -> Any:
        """Parse, check, decode and batch one admitted request: the result of the route's batch function, or for a
        batched request (several examples) a ``Many`` of them."""
        if route not in self.batchers:
            raise self.not_served(f"/v1/{route}")
        ticket, deadline = request.state.ticket, request.state.deadline
        raw = await read_inputs(request)
        if isinstance(raw, list):
            return await submit_many(self, raw, route, ticket, deadline)
        decoded = await self.decode(raw)
        if time.monotonic() >= deadline:
            raise DeadlineExceeded
        return await self.batchers[route].submit(decoded, ticket, deadline)


# route name -> path, of the routes that depend on what is served (the OpenAPI page lists only those served)
ROUTE_PATHS = {"predict": "/v1/predict", "embed": "/v1/embed", "embeddings": "/v1/embeddings",
               "transcribe": "/v1/transcribe", "transcriptions": "/v1/audio/transcriptions",
               "chat": "/v1/chat/completions"}


def _served_routes(kind: str, run: Run | str | Path) -> tuple[str, ...]:
    if kind == "transcriber":
        return ("transcribe", "transcriptions")
    if kind == "chat":
        return ("chat",)
    task = run.task if isinstance(run, Run) else run_folder.run_task(run) if run_folder.is_run(run) else "classify"
    return ("embed", "embeddings") if task == "align" else ("predict", "embed", "embeddings")


def _decode(raw: RawInputs, cfg: ServeConfig, rates: dict[str, int | None]) -> dict[str, Any]:
    try:
        return decode_inputs(raw, cfg, rates)
    except RequestRejected:
        raise
    except Exception as e:
        # Whatever a decoder raises on client bytes is the input's fault, not the server's.
        log.warning("decoding failed", exc_info=True)
        raise RequestRejected(422, "undecodable_media", f"the media could not be decoded ({type(e).__name__}: {e})") from e


async def read_inputs(request: Request) -> RawInputs | list[RawInputs]:
    """The request body (JSON with base64 media, or multipart uploads) -> ``RawInputs``; a batched JSON body
    (``{"instances": [...]}``, ``{"inputs": [...]}`` or a list, see ``batch_api``) -> one per example.

    Raises:
        RequestRejected: 415 for another content type, 422 for a malformed body.
        RequestValidationError: the JSON does not match ``PredictRequest``.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        data = await request.body()
        many = parse_many(data)
        if many is not None:
            return many
        try:
            body = PredictRequest.model_validate_json(data)
        except ValidationError as e:
            raise RequestValidationError(e.errors(include_url=False, include_context=False)) from None
        return RawInputs(body.text, *(None if v is None else decode_base64(v, f) for f, v in
                                      (("image", body.image), ("audio", body.audio))))
    if ctype == "multipart/form-data":
        cap = request.app.state.service.cfg.max_body_bytes
        async with request.form(max_files=2, max_fields=3, max_part_size=cap) as form:
            unknown = sorted(set(form.keys()) - set(MODALITIES))
            if unknown or any(len(form.getlist(k)) > 1 for k in form.keys()):
                raise RequestRejected(422, "bad_form", f"form fields must be text, image and audio, each at most once; "
                                                       f"got {', '.join(form.keys())}")
            raw = RawInputs()
            for field in MODALITIES:
                value = form.get(field)
                if value is None:
                    continue
                if isinstance(value, UploadFile):
                    data = await value.read()
                    setattr(raw, field, data.decode("utf-8", "replace") if field == "text" else data)
                else:
                    setattr(raw, field, value if field == "text" else decode_base64(value, field))
            return raw
    raise RequestRejected(415, "unsupported_content_type",
                          f"content type {ctype or '(none)'}: send application/json or multipart/form-data")


def _prediction(labels: list[str], probs: list[float]) -> PredictResponse:
    best = max(range(len(probs)), key=probs.__getitem__)
    return PredictResponse(label=labels[best], probabilities=dict(zip(labels, probs)))


def _error(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "kind": kind}, status_code=status, headers=headers)


class Gate:
    """ASGI middleware for every request: metrics, and on ``/v1`` routes token, readiness, admission, body size.

    It reads the whole body (up to ``max_body_bytes``) before the app sees it, so a too-large upload is refused
    whatever its framing (Content-Length or chunked) and never reaches a parser.
    """

    def __init__(self, app: Any, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        route = path if path in _ROUTES else "/v2/models/{name}/infer" if _is_v2_infer(path) else "other"
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if path.startswith("/v1/") or _is_v2_infer(path):
                await self._gated(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            m = self.service.metrics
            m.requests.labels(route, str(status)).inc()
            m.latency_seconds.labels(route).observe(time.perf_counter() - start)

    async def _gated(self, scope: dict, receive: Any, send: Any) -> None:
        svc, cfg = self.service, self.service.cfg
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if cfg.api_key is not None:
            token = headers.get("authorization", "")
            scheme, _, given = token.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), cfg.api_key.encode()):
                await _error(401, "unauthorized", "send the API key as 'Authorization: Bearer KEY'",
                             {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        status, why = svc.status()
        if status != "ready":
            await _error(503, status, why or status, {"Retry-After": str(cfg.retry_after_s)})(scope, receive, send)
            return
        try:
            deadline_ms = _deadline_ms(headers.get(DEADLINE_HEADER), cfg)
        except RequestRejected as e:
            await _error(e.status, e.kind, e.message)(scope, receive, send)
            return
        # The body first, within body_timeout_s and max_body_bytes, and only then a queue place: a client that
        # sends its headers and then stalls holds a connection, never a place that others need.
        try:
            body = await asyncio.wait_for(_read_body(receive, headers, cfg.max_body_bytes), cfg.body_timeout_s)
        except asyncio.TimeoutError:
            await _error(408, "body_timeout", f"the request body did not arrive within {cfg.body_timeout_s:g} s; "
                         "send it at once", {"Connection": "close"})(scope, _disconnected, send)
            return
        if body is None:
            await _error(413, "body_too_large", f"the request body exceeds the limit of {cfg.max_body_bytes:,} "
                         "bytes; send smaller media", {"Connection": "close"})(scope, receive, send)
            return
        ticket = svc.admission.try_admit()
        if ticket is None:
            await _error(429, "queue_full", f"the queue is full ({cfg.max_queue} requests waiting); retry later",
                         {"Retry-After": str(cfg.retry_after_s)})(scope, _replay(body, receive), send)
            return
        try:
            state = scope.setdefault("state", {})
            state["ticket"], state["deadline"] = ticket, time.monotonic() + deadline_ms / 1000
            await self.app(scope, _replay(body, receive), send)
        finally:
            ticket.finish()


def _is_v2_infer(path: str) -> bool:
    return path.startswith("/v2/models/") and path.endswith("/infer")


async def _disconnected() -> dict:
    return {"type": "http.disconnect"}


def _deadline_ms(value: str | None, cfg: ServeConfig) -> float:
    if value is None:
        return cfg.deadline_ms
    try:
        ms = float(value)
    except ValueError:
        ms = float("nan")
    if not 0 < ms <= cfg.max_deadline_ms:  # also refuses NaN
        raise RequestRejected(422, "bad_deadline",
                              f"X-Deadline-Ms: {value!r} is not a number of milliseconds in (0, {cfg.max_deadline_ms:g}]")
    return ms


async def _read_body(receive: Any, headers: dict[str, str], limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed ``limit`` bytes."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replayed


def create_app(run: Run | inference.Backend | str | Path, cfg: ServeConfig = ServeConfig()) -> FastAPI:
    """The service of a run: a loaded ``Run`` or ``inference.Backend``, or a run folder, Whisper folder or causal
    LM reference loaded in the background after start-up.

    ``/readyz`` answers 503 until the model is loaded, and again once ``Service.draining`` is set.
    """
    service = Service(run, cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(service.start())
        yield
        loading.cancel()
        await service.stop()

    app = FastAPI(title="polymodal", version="1", lifespan=lifespan,
                  description="Class probabilities and embeddings from a trained polymodal run, transcripts "
                              "from a speech recogniser, or chat answers from an instruct run or language model; "
                              "native, OpenAI-compatible and Open Inference Protocol (v2) routes.")
    app.state.service = service
    app.add_middleware(Gate, service=service)
    body = request_body_schema(cfg)
    secured = [{"bearer": []}] if cfg.api_key is not None else []

    @app.exception_handler(RequestRejected)
    async def rejected(_: Request, e: RequestRejected) -> JSONResponse:
        return _error(e.status, e.kind, e.message)

    @app.exception_handler(DeadlineExceeded)
    async def deadline(_: Request, e: DeadlineExceeded) -> JSONResponse:
        return _error(504, "deadline", "the request's deadline passed before its result was ready; "
                                       "retry later or send a longer X-Deadline-Ms")

    @app.exception_handler(InferenceFailed)
    async def failed(_: Request, e: InferenceFailed) -> JSONResponse:
        return _error(500, "inference_failed", f"{e}; the server log has the traceback")

    codes = (401, 404, 413, 415, 422, 429, 500, 503, 504)
    batched = ' (several: {"instances": [...]}, {"inputs": [...]} or a JSON list)'

    @app.post("/v1/predict", response_model=PredictResponse | PredictBatchResponse, responses=error_responses(*codes),
              openapi_extra={"requestBody": body, "security": secured},
              summary="class probabilities of an example" + batched, include_in_schema="predict" in service.routes)
    async def predict(request: Request) -> PredictResponse | PredictBatchResponse:
        probs = await service.handle(request, "predict")
        labels = service.run.labels
        if isinstance(probs, Many):
            return PredictBatchResponse(predictions=[_prediction(labels, p) for p in probs])
        return _prediction(labels, probs)

    @app.post("/v1/embed", response_model=EmbedResponse | EmbedBatchResponse, responses=error_responses(*codes),
              openapi_extra={"requestBody": body, "security": secured},
              summary="embeddings per modality (an align run: its joint space)" + batched,
              include_in_schema="embed" in service.routes)
    async def embed(request: Request) -> EmbedResponse | EmbedBatchResponse:
        result = await service.handle(request, "embed")
        if isinstance(result, Many):
            return EmbedBatchResponse(embeddings=[Embeddings(**r) for r in result])
        return EmbedResponse(embeddings=Embeddings(**result))

    @app.post("/v1/transcribe", response_model=TranscribeResponse | TranscribeBatchResponse,
              responses=error_responses(*codes), openapi_extra={"requestBody": body, "security": secured},
              summary="the transcript of an audio clip (an asr run or a Whisper model)" + batched,
              include_in_schema="transcribe" in service.routes)
    async def transcribe(request: Request) -> TranscribeResponse | TranscribeBatchResponse:
        result = await service.handle(request, "transcribe")
        if isinstance(result, Many):
            return TranscribeBatchResponse(transcripts=[TranscribeResponse(**r) for r in result])
        return TranscribeResponse(**result)

    @app.get("/livez", response_model=Health, summary="the process is up")
    async def livez() -> Health:
        return Health(status="alive", pid=os.getpid())

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}},
             summary="the model is loaded and the server admits requests")
    async def readyz() -> Response:
        status, why = service.status()
        health = Health(status=status, pid=os.getpid(), detail=why)
        return JSONResponse(health.model_dump(), status_code=200 if status == "ready" else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        data, ctype = service.metrics.exposition()
        return Response(data, media_type=ctype)

    openai_api.register(app, service, _decode, secured)
    v2_api.register(app, service)
    _add_security_scheme(app, cfg)
    return app


def _add_security_scheme(app: FastAPI, cfg: ServeConfig) -> None:
    if cfg.api_key is None:
        return
    original = app.openapi

    def openapi() -> dict[str, Any]:
        schema = original()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = \
            {"type": "http", "scheme": "bearer"}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["create_app", "Service", "ErrorResponse"]
