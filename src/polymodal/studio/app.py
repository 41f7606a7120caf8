"""The studio's web app: one self-contained page (``static/index.html``: no CDN, no web fonts, no build step) and a
small JSON API over ``handlers`` (FastAPI, the ``serve`` stack). Every request's failure is one line of JSON
(``{"error": ...}``), shown on the page; nothing here decides anything the library does not.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations (``UploadFile``, imported
inside ``create_app``) at definition time.
"""

import base64
import hmac
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from .handlers import Studio, error_line

PASSWORD_ENV = "POLYMODAL_STUDIO_PASSWORD"


def create_app(runs_dir: str | Path = "runs", password: str | None = None):
    """The studio's FastAPI app over the runs folder ``runs_dir``; with ``password`` (default: the
    ``POLYMODAL_STUDIO_PASSWORD`` environment variable) every request needs HTTP basic auth with it (any user name)."""
    import json
    from contextlib import asynccontextmanager

    from fastapi import Body, FastAPI, File, Form, Request, UploadFile
    from fastapi.responses import (
        FileResponse,
        HTMLResponse,
        JSONResponse,
        Response,
        StreamingResponse,
    )

    password = password if password is not None else os.environ.get(PASSWORD_ENV) or None
    studio = Studio(runs_dir)
    @asynccontextmanager
    async def lifespan(app):
        yield
        studio.close()  # runs served from the page stop with the studio

    app = FastAPI(title="polymodal studio", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.studio = studio
    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if password:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = ""
            if scheme.lower() == "basic":
                try:
                    given = base64.b64decode(token).decode("utf-8").partition(":")[2]
                except ValueError:
                    given = ""
            if not hmac.compare_digest(given.encode(), password.encode()):
                return Response("password required", status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="polymodal studio"'})
        try:
            return await call_next(request)
        except Exception as e:  # noqa: BLE001 -- the page shows one line, never a traceback
            return JSONResponse({"error": error_line(e)}, status_code=400)

    def answer(fn, *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"error": error_line(e)}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/favicon.ico")
    def favicon() -> Response:  # no request of the page may fail (the browser asks for one)
        return Response(status_code=204)

    from . import handlers as h

    @app.get("/api/data")
    def data(manifest: str):
        return answer(h.data_view, manifest)

    def file_or_404(locate, *args):
        """The file ``locate(*args)`` names, or a 404 with its one-line reason (outside the allowed folder, missing)."""
        try:
            return FileResponse(locate(*args))
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"error": error_line(e)}, status_code=404)

    @app.post("/api/data/clean")
    def clean(body: Annotated[dict, Body()]):
        return answer(h.drop_bad_rows, body.get("manifest", ""), body.get("out", ""))

    @app.get("/api/media")
    def media(manifest: str, file: str):
        return file_or_404(h.media_file, manifest, file)

    @app.get("/api/config/fields")
    def fields():
        return answer(h.config_fields)

    @app.get("/api/config/encoders")
    def encoders(manifest: str):
        return answer(h.default_encoders, manifest)

    @app.post("/api/train")
    def train(body: Annotated[dict, Body()]):
        def start():
            job = studio.start(body.get("name", ""), body.get("manifest", ""), body.get("encoders") or {},
                               {k: str(v) for k, v in (body.get("fields") or {}).items()}, bool(body.get("resume")))
            return {"name": job.name, "status": job.status}
        return answer(start)

    @app.post("/api/runs/{name}/stop")
    def stop(name: str):
        return answer(lambda: {"name": name, "status": studio.stop(name).status})

    @app.get("/api/runs")
    def runs():
        return answer(lambda: {"runs_dir": str(studio.runs_dir), "runs": studio.runs()})

    @app.get("/api/runs/{name}")
    def run_status(name: str):
        def status():
            s = studio.status(name)
            return {**s, "eta": h.eta_text(s["eta_seconds"])}
        return answer(status)

    @app.get("/api/runs/{name}/report")
    def report(name: str):
        try:
            return FileResponse(studio.report(name), media_type="text/html")
        except Exception as e:  # noqa: BLE001
            return HTMLResponse(f"<p>{_escape(error_line(e))}</p>", status_code=400)

    @app.get("/api/compare")
    def compare(a: str, b: str):
        def both():
            out = studio.compare(a, b)
            return {"verdicts": out["verdicts"], "html": out["html"].read_text(encoding="utf-8")}
        return answer(both)

    @app.post("/api/runs/{name}/compress")
    def compress(name: str, body: Annotated[dict, Body()]):
        return answer(studio.compress, name, bool(body.get("int8", True)), float(body.get("prune") or 0))

    @app.post("/api/runs/{name}/export")
    def export(name: str, body: Annotated[dict, Body()]):
        return answer(studio.export, name, bool(body.get("int8", False)))

    @app.post("/api/runs/{name}/serve")
    def serve_start(name: str):
        return answer(studio.serve_start, name)

    @app.post("/api/runs/{name}/serve/stop")
    def serve_stop(name: str):
        return answer(studio.serve_stop, name)

    @app.get("/api/runs/{name}/serve")
    def serving(name: str):
        return answer(studio.serving, name)

    @app.get("/api/runs/{name}/{file:path}")
    def report_file(name: str, file: str):
        return file_or_404(studio.report_file, name, file)

    @app.post("/api/chat")
    def chat(body: Annotated[dict, Body()]):
        return answer(studio.chat, body.get("model", "smollm2"), body.get("history") or [], body.get("message", ""))

    @app.post("/api/chat/stream")
    async def chat_stream(model: Annotated[str, Form()] = "smollm2", history: Annotated[str, Form()] = "[]",
                          message: Annotated[str, Form()] = "", attachment: Annotated[UploadFile | None, File()] = None):
        """The answer as plain text, piece by piece as it is decoded (checks fail first, as one JSON error line)."""
        data = await attachment.read() if attachment is not None else b""
        try:
            turns = json.loads(history or "[]")
            from starlette.concurrency import run_in_threadpool

            pieces = await run_in_threadpool(studio.chat_stream, model, turns, message, 128,
                                             (attachment.filename or "file", data) if data else None)
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"error": error_line(e)}, status_code=400)
        return StreamingResponse(pieces, media_type="text/plain; charset=utf-8")

    async def answer_off_loop(fn, *args):
        """``answer`` in a worker thread: model work never blocks the page's other requests."""
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(answer, fn, *args)

    async def _bytes(upload) -> bytes | None:
        return (await upload.read()) or None if upload is not None else None

    @app.post("/api/classify")
    async def classify(run: Annotated[str, Form()], text: Annotated[str, Form()] = "",
                       image: Annotated[UploadFile | None, File()] = None,
                       audio: Annotated[UploadFile | None, File()] = None):
        return await answer_off_loop(studio.classify, run, text, await _bytes(image), await _bytes(audio))

    @app.post("/api/zeroshot")
    async def zeroshot(classes: Annotated[str, Form()], image: Annotated[UploadFile | None, File()] = None,
                       model: Annotated[str, Form()] = ""):
        return await answer_off_loop(studio.zero_shot, classes, await _bytes(image), model or None)

    @app.post("/api/transcribe")
    async def transcribe(audio: Annotated[UploadFile | None, File()] = None,
                         model: Annotated[str, Form()] = "whisper-base",
                         engine: Annotated[str, Form()] = "faster-whisper"):
        name = audio.filename if audio is not None and audio.filename else "recording.wav"
        return await answer_off_loop(studio.transcribe, await _bytes(audio), name, model or "whisper-base", engine)

    @app.post("/api/ask")
    def ask(body: Annotated[dict, Body()]):
        return answer(studio.ask, body.get("kb", ""), body.get("question", ""), body.get("mode", "generative"))

    @app.post("/api/upload")
    async def upload(file: Annotated[UploadFile, File()]):
        return await answer_off_loop(studio.upload, file.filename or "", await file.read())

    return app


def _escape(s: str) -> str:
    import html

    return html.escape(s)


def serve(runs_dir: str | Path = "runs", host: str = "127.0.0.1", port: int = 7860, password: str | None = None) -> None:
    """Run the studio with uvicorn until interrupted (``polymodal studio``)."""
    import uvicorn

    uvicorn.run(create_app(runs_dir, password), host=host, port=port, log_level="warning")
