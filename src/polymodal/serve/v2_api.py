"""The Open Inference Protocol (KServe v2, Triton's HTTP API), so ``tritonclient.http`` and KServe clients work
unchanged.

Tensors by kind of service (``GET /v2/models/{name}`` says the same):

- classifier: inputs ``TEXT``, ``IMAGE``, ``AUDIO`` (BYTES, shape [n] or [n, 1]; image and audio are file bytes),
  any subset with the same n; outputs ``PROBABILITIES`` (FP32 [n, classes]) and ``LABEL`` (BYTES [n]); an align
  run instead outputs ``EMBEDDING_TEXT`` / ``_IMAGE`` / ``_AUDIO`` (FP32 [n, dim]) for the inputs given;
- transcriber: input ``AUDIO`` (BYTES [n] file bytes, or FP32 [n, samples] of 16 kHz mono); output ``TEXT``;
- chat: input ``TEXT`` (BYTES [n], one user message each); output ``TEXT`` (BYTES [n], the answers).

Both the JSON form and the binary tensor extension (``Inference-Header-Content-Length``, which tritonclient uses
by default) are read; answers are JSON. Every example joins the service's batcher as the native routes' do.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .limits import RawInputs, RequestRejected, check_inputs
from .schemas import error_responses

HEADER_LENGTH = "inference-header-content-length"
_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2"}


def _signature(service: Any) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) metadata of the served model."""
    def t(name: str, dtype: str, shape: list[int]) -> dict:
        return {"name": name, "datatype": dtype, "shape": shape}

    if service.kind == "transcriber":
        return [t("AUDIO", "BYTES", [-1])], [t("TEXT", "BYTES", [-1])]
    if service.kind == "chat":
        return [t("TEXT", "BYTES", [-1])], [t("TEXT", "BYTES", [-1])]
    inputs = [t(m.upper(), "BYTES", [-1]) for m in service.modalities]
    if service.backend is not None and service.backend.is_align:
        return inputs, [t(f"EMBEDDING_{m.upper()}", "FP32", [-1, -1]) for m in service.modalities]
    return inputs, [t("PROBABILITIES", "FP32", [-1, len(service.run.labels) if service.run else -1]),
                    t("LABEL", "BYTES", [-1])]


def _split_binary(body: bytes, header_length: str) -> tuple[dict, bytes]:
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise RequestRejected(422, "bad_header_length", f"Inference-Header-Content-Length: {header_length!r} is not "
                                                        f"a length within the body ({len(body)} bytes)")
    return _json(body[:n]), body[n:]


def _json(data: bytes) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestRejected(422, "bad_json", f"the inference request is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise RequestRejected(422, "bad_request", 'the inference request needs "inputs": a non-empty list of tensors')
    return doc


def _bytes_elements(blob: bytes, name: str) -> list[bytes]:
    """Triton's binary BYTES serialisation: per element a little-endian uint32 length, then the bytes."""
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise RequestRejected(422, "bad_tensor", f"{name}: truncated BYTES element length at byte {at}")
        (n,) = struct.unpack_from("<I", blob, at)
        at += 4
        if at + n > len(blob):
            raise RequestRejected(422, "bad_tensor", f"{name}: a BYTES element of {n} bytes overruns the data")
        out.append(blob[at:at + n])
        at += n
    return out


def read_tensors(doc: dict, binary: bytes) -> dict[str, tuple[str, list[Any]]]:
    """name -> (datatype, elements in row-major order: bytes for BYTES, numbers otherwise)."""
    tensors, at = {}, 0
    for i, spec in enumerate(doc["inputs"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("datatype"), str) \
                or not isinstance(spec.get("shape"), list) or not all(isinstance(d, int) and d >= 0 for d in spec["shape"]):
            raise RequestRejected(422, "bad_tensor", f"inputs[{i}]: a tensor needs name, datatype and shape (a list "
                                                     "of non-negative integers)")
        name, dtype, shape = spec["name"], spec["datatype"], spec["shape"]
        if dtype != "BYTES" and dtype not in _DTYPES:
            raise RequestRejected(422, "bad_datatype", f"{name}: datatype {dtype} is not supported; use BYTES or FP32")
        size = int(np.prod(shape)) if shape else 1
        params = spec.get("parameters") if isinstance(spec.get("parameters"), dict) else {}
        if "binary_data_size" in params:
            n = params["binary_data_size"]
            if not isinstance(n, int) or n < 0 or at + n > len(binary):
                raise RequestRejected(422, "bad_tensor", f"{name}: binary_data_size {n!r} overruns the binary data")
            blob, at = binary[at:at + n], at + n
            values: list[Any] = _bytes_elements(blob, name) if dtype == "BYTES" else \
                np.frombuffer(blob, dtype=_DTYPES[dtype]).tolist() if len(blob) % np.dtype(_DTYPES[dtype]).itemsize == 0 \
                else None
            if values is None:
                raise RequestRejected(422, "bad_tensor", f"{name}: {len(blob)} bytes is not a whole number of {dtype}")
        else:
            data = spec.get("data")
            if not isinstance(data, list):
                raise RequestRejected(422, "bad_tensor", f"{name}: no data (send \"data\" or binary_data_size)")
            values = list(np.asarray(data, dtype=object).reshape(-1)) if data else []
            if dtype == "BYTES":
                if not all(isinstance(v, str) for v in values):
                    raise RequestRejected(422, "bad_tensor", f"{name}: BYTES data in JSON are strings")
                values = [v.encode("utf-8", "surrogatepass") for v in values]
            elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise RequestRejected(422, "bad_tensor", f"{name}: {dtype} data must be numbers")
        if len(values) != size:
            raise RequestRejected(422, "bad_tensor", f"{name}: shape {shape} holds {size} elements, the data "
                                                     f"{len(values)}")
        tensors[name] = (dtype, values, shape)
    return tensors


def register(app: FastAPI, service: Any) -> None:
    """Add the v2 routes to ``app``."""

    def check_name(name: str) -> None:
        if name != service.model_name:
            raise RequestRejected(404, "model_not_found", f"model {name!r} is not served here; this service serves "
                                                          f"{service.model_name!r}")

    @app.get("/v2", summary="server metadata (Open Inference Protocol)")
    async def server_metadata() -> dict:
        return {"name": "polymodal", "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="the process is up (Open Inference Protocol)")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", summary="the model is loaded (Open Inference Protocol)",
             responses={503: {"description": "loading or draining"}})
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @app.get("/v2/models/{name}", responses=error_responses(404, 503), summary="model metadata: its tensors")
    async def metadata(name: str) -> JSONResponse:
        check_name(name)
        if not service.ready:
            raise RequestRejected(503, "loading", "the model is not loaded yet")
        inputs, outputs = _signature(service)
        return JSONResponse({"name": name, "versions": ["1"], "platform": "pytorch", "inputs": inputs,
                             "outputs": outputs})

    @app.get("/v2/models/{name}/ready", responses=error_responses(404), summary="the model is loaded")
    async def model_ready(name: str) -> JSONResponse:
        check_name(name)
        return JSONResponse({"name": name, "ready": service.ready}, status_code=200 if service.ready else 503)

    async def infer(request: Request, name: str) -> JSONResponse:
        check_name(name)
        body = await request.body()
        header = request.headers.get(HEADER_LENGTH)
        doc, binary = _split_binary(body, header) if header is not None else (_json(body), b"")
        tensors = read_tensors(doc, binary)
        items = _examples(service, tensors)
        cfg = service.cfg
        if len(items) > cfg.max_batch_size:
            raise RequestRejected(413, "too_many_instances", f"{len(items)} examples in one request; the limit is "
                                                             f"{cfg.max_batch_size}: split it")
        route = {"transcriber": "transcribe", "chat": "chat"}.get(service.kind,
                                                                  "embed" if service.backend.is_align else "predict")
        # FP32 audio samples and chat items arrive ready; file bytes are checked and decoded as on /v1
        decoded = [await service.decode(it, f"example {i}") if isinstance(it, RawInputs) else it
                   for i, it in enumerate(items)]
        batcher = service.batchers[route]
        results = await asyncio.gather(*(batcher.submit(d, request.state.ticket, request.state.deadline)
                                         for d in decoded))
        outputs = _outputs(service, results)
        wanted = doc.get("outputs")
        if isinstance(wanted, list) and wanted:
            names = {o.get("name") for o in wanted if isinstance(o, dict)}
            unknown = names - {o["name"] for o in outputs}
            if unknown:
                raise RequestRejected(422, "unknown_output", f"outputs {sorted(map(str, unknown))} do not exist; "
                                                             f"this model has {[o['name'] for o in outputs]}")
            outputs = [o for o in outputs if o["name"] in names]
        answer = {"model_name": name, "model_version": "1", "outputs": outputs}
        if isinstance(doc.get("id"), str):
            answer["id"] = doc["id"]
        return JSONResponse(answer)

    body = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["inputs"],
        "properties": {"id": {"type": "string"}, "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "datatype", "shape", "data"],
            "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                           "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                           "data": {"type": "array"}}}},
                       "outputs": {"type": "array", "items": {"type": "object", "properties": {
                           "name": {"type": "string"}}}}}}}}}
    codes = error_responses(401, 404, 413, 415, 422, 429, 500, 503, 504)
    app.post("/v2/models/{name}/infer", responses=codes, openapi_extra={"requestBody": body},
             summary="run the model on named tensors (Open Inference Protocol)")(infer)

    @app.post("/v2/models/{name}/versions/{version}/infer", responses=codes, openapi_extra={"requestBody": body},
              summary="the same, for version 1 (the only one)")
    async def infer_version(request: Request, name: str, version: str) -> JSONResponse:
        if version != "1":
            raise RequestRejected(404, "version_not_found", f"version {version!r}: this service has version 1 only")
        return await infer(request, name)


def _examples(service: Any, tensors: dict[str, tuple[str, list[Any], list[int]]]) -> list[Any]:
    """Per example: RawInputs to check and decode, or (16 kHz FP32 audio) an already decoded input."""
    inputs, _ = _signature(service)
    known = {t["name"] for t in inputs}
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise RequestRejected(422, "unknown_input", f"inputs {unknown} do not exist; this model takes "
                                                    f"{sorted(known)} (GET /v2/models/{service.model_name})")
    sizes = set()
    for name, (dtype, values, shape) in tensors.items():
        n = shape[0] if shape else 1
        if dtype != "BYTES" and not (name == "AUDIO" and service.kind == "transcriber" and dtype == "FP32"):
            raise RequestRejected(422, "bad_datatype", f"{name}: send BYTES (FP32 only for AUDIO samples of a "
                                                       "recogniser)")
        if dtype == "BYTES" and len(values) != n:
            raise RequestRejected(422, "bad_tensor", f"{name}: shape {shape}: one element per example, [n] or [n, 1]")
        sizes.add(n)
    if len(sizes) != 1 or 0 in sizes:
        raise RequestRejected(422, "bad_tensor", "every input needs the same, non-zero, number of examples "
                                                 f"(first dimension); got {sorted(sizes)}")
    n = sizes.pop()
    items: list[Any] = []
    for i in range(n):
        raw = RawInputs()
        for name, (dtype, values, shape) in tensors.items():
            if dtype == "FP32":
                per = len(values) // n
                wave = np.asarray(values[i * per:(i + 1) * per], dtype=np.float32)
                if len(wave) > service.cfg.max_audio_seconds * 16_000 or not np.isfinite(wave).all() or not len(wave):
                    raise RequestRejected(422, "bad_audio", f"AUDIO example {i}: 1 to "
                                          f"{service.cfg.max_audio_seconds * 16_000:g} finite samples at 16 kHz")
                items.append({"audio": wave})
                break
            if name == "TEXT":
                try:
                    raw.text = values[i].decode("utf-8")
                except UnicodeDecodeError:
                    raise RequestRejected(422, "bad_text", f"TEXT example {i}: not UTF-8") from None
            else:
                setattr(raw, name.lower(), values[i])
        else:
            items.append(_chat_item(service, raw) if service.kind == "chat" else raw)
    return items


def _chat_item(service: Any, raw: RawInputs) -> Any:
    from ..instruct.data import Turn
    from .inference import ChatItem, chat_options

    check_inputs(raw, ("text",), service.cfg)
    return ChatItem([Turn("user", raw.text)], chat_options(service.backend.model.defaults, service.cfg.max_new_tokens))


def _outputs(service: Any, results: list[Any]) -> list[dict]:
    n = len(results)
    if service.kind == "transcriber":
        return [{"name": "TEXT", "datatype": "BYTES", "shape": [n], "data": [r["text"] for r in results]}]
    if service.kind == "chat":
        return [{"name": "TEXT", "datatype": "BYTES", "shape": [n], "data": [r["text"] for r in results]}]
    if service.backend.is_align:
        out = []
        for m in service.modalities:
            rows = [r.get(m) for r in results]
            if all(r is not None for r in rows):
                out.append({"name": f"EMBEDDING_{m.upper()}", "datatype": "FP32", "shape": [n, len(rows[0])],
                            "data": [x for r in rows for x in r]})
        return out
    labels = service.run.labels
    return [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [n, len(labels)],
             "data": [p for r in results for p in r]},
            {"name": "LABEL", "datatype": "BYTES", "shape": [n],
             "data": [labels[max(range(len(r)), key=r.__getitem__)] for r in results]}]
