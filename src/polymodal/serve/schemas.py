"""Request and response bodies of the HTTP API, as pydantic models: they are the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    """One example: any subset of the run's modalities (at least one). Media travel as base64 of the file bytes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "great food, slow service"}]})

    text: str | None = Field(None, description="the text; an empty string counts as not given")
    image: str | None = Field(None, description="the image file (PNG, JPEG, WEBP, BMP or GIF), base64-encoded; "
                                                "a data: URL is accepted too")
    audio: str | None = Field(None, description="the audio file (WAV, FLAC or OGG), base64-encoded; "
                                                "a data: URL is accepted too")


class PredictResponse(BaseModel):
    """The most probable label and every label's probability."""

    label: str = Field(description="the most probable label")
    probabilities: dict[str, float] = Field(description="label -> probability; they sum to 1")


class PredictBatchResponse(BaseModel):
    """One prediction per example of a batched request, in order."""

    predictions: list[PredictResponse]


class Embeddings(BaseModel):
    """Pooled encoder outputs of the modalities given; a modality not given is absent (null)."""

    text: list[float] | None = Field(None, description="(dim,) pooled text embedding")
    image: list[float] | None = Field(None, description="(dim,) pooled image embedding")
    audio: list[float] | None = Field(None, description="(dim,) pooled audio embedding")


class EmbedResponse(BaseModel):
    embeddings: Embeddings


class EmbedBatchResponse(BaseModel):
    embeddings: list[Embeddings] = Field(description="one per example of the batched request, in order")


class TranscriptSegment(BaseModel):
    start: float = Field(description="seconds from the start of the audio")
    end: float = Field(description="seconds from the start of the audio")
    text: str


class TranscribeResponse(BaseModel):
    """The transcript of one audio clip; long audio is cut at pauses and each segment timed."""

    text: str = Field(description="the whole transcript; empty when no speech was recognised")
    segments: list[TranscriptSegment] = Field(description="timed pieces of the transcript")
    duration_s: float = Field(description="length of the audio in seconds")


class TranscribeBatchResponse(BaseModel):
    transcripts: list[TranscribeResponse] = Field(description="one per clip of the batched request, in order")


class ErrorResponse(BaseModel):
    """Every error the service itself answers: what is wrong and how to fix it."""

    detail: str = Field(description="what is wrong, and what to change")
    kind: str = Field(description="a short machine-readable kind, e.g. too_many_pixels, queue_full, deadline")


class Health(BaseModel):
    status: str = Field(description="alive, ready, loading, draining or failed")
    pid: int = Field(description="the answering worker process")
    detail: str | None = Field(None, description="why it is not ready")


MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "BMP": "image/bmp", "GIF": "image/gif",
               "WAV": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg"}


def request_body_schema(cfg: Any = None) -> dict[str, Any]:
    """The OpenAPI requestBody of the /v1 routes: JSON with base64 media, or multipart uploads, with the service's
    real limits (``ServeConfig``: body bytes, text characters, image pixels and shape, audio seconds) and the media
    types it accepts (``image_formats``, ``audio_formats``)."""
    from .config import ServeConfig

    cfg = cfg or ServeConfig()
    image_types = [MEDIA_TYPES[f] for f in cfg.image_formats if f in MEDIA_TYPES]
    audio_types = [MEDIA_TYPES[f] for f in cfg.audio_formats if f in MEDIA_TYPES]
    limits = {
        "image": (f"an image file ({', '.join(cfg.image_formats)}): at most {cfg.max_image_pixels:,} pixels, the long "
                  f"side at most {cfg.max_aspect_ratio:g} times the short one"),
        "audio": f"an audio file ({', '.join(cfg.audio_formats)}): at most {cfg.max_audio_seconds:g} seconds",
    }
    body_note = f"; the whole request body at most {cfg.max_body_bytes:,} bytes (413 beyond)"
    text = {"type": "string", "maxLength": cfg.max_text_chars,
            "description": f"the text, at most {cfg.max_text_chars:,} characters; an empty string counts as not given"}
    # base64 turns 3 bytes into 4 characters: the most a media field can hold within the body limit
    b64 = 4 * (cfg.max_body_bytes // 3)
    json_schema = PredictRequest.model_json_schema()
    json_schema["properties"]["text"] = {**text, "anyOf": [{"type": "string"}, {"type": "null"}]}
    json_schema["properties"]["text"].pop("type")
    for m, types in (("image", image_types), ("audio", audio_types)):
        json_schema["properties"][m] = {
            "anyOf": [{"type": "string", "contentEncoding": "base64", "contentMediaType": types[0] if len(types) == 1
                       else f"{m}/*", "maxLength": b64}, {"type": "null"}],
            "description": f"{limits[m]}, base64-encoded (a data: URL is accepted too); accepted media types: "
                           f"{', '.join(types)}{body_note}"}
    upload = {m: {"type": "string", "format": "binary", "contentMediaType": f"{m}/*", "maxLength": cfg.max_body_bytes,
                  "description": f"{limits[m]}{body_note}"} for m in ("image", "audio")}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"anyOf": [json_schema, _batch_schema(json_schema, cfg.max_batch_size)]}},
            "multipart/form-data": {
                "schema": {"type": "object", "additionalProperties": False,
                           "properties": {"text": text, **upload}},
                "encoding": {"image": {"contentType": ", ".join(image_types)},
                             "audio": {"contentType": ", ".join(audio_types)}},
            },
        },
    }


def _batch_schema(one: dict[str, Any], most: int) -> dict[str, Any]:
    """The batched body: ``{"instances": [...]}``, ``{"inputs": [...]}`` or a list, of examples or plain texts."""
    example = {"anyOf": [{k: v for k, v in one.items() if k not in ("examples", "title")}, {"type": "string"}]}
    many = {"type": "array", "items": example, "minItems": 1, "maxItems": most,
            "description": f"at most {most} examples (serve --max-batch-size); each passes a single example's checks"}
    return {"anyOf": [{"type": "object", "additionalProperties": False, "required": ["instances"],
                       "properties": {"instances": many}},
                      {"type": "object", "additionalProperties": False, "required": ["inputs"],
                       "properties": {"inputs": {"anyOf": [many, example]}}},
                      many]}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these status codes, all with the ErrorResponse body."""
    why = {
        401: "missing or wrong bearer token", 404: "this service does not serve that route (a classifier has no "
                                                  "/v1/transcribe, a recogniser no /v1/predict), or that model", 413: "body, text, image pixels or audio length over a limit",
        415: "neither JSON nor multipart", 422: "invalid request or media (corrupt, truncated, format not allowed)",
        429: "queue full; retry after Retry-After seconds", 500: "the model failed on an input that passed every check",
        503: "model loading, or server draining", 504: "the request deadline passed",
    }
    return {c: {"model": ErrorResponse, "description": why[c]} for c in codes}
