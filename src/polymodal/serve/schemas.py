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


class Embeddings(BaseModel):
    """Pooled encoder outputs of the modalities given; a modality not given is absent (null)."""

    text: list[float] | None = Field(None, description="(dim,) pooled text embedding")
    image: list[float] | None = Field(None, description="(dim,) pooled image embedding")
    audio: list[float] | None = Field(None, description="(dim,) pooled audio embedding")


class EmbedResponse(BaseModel):
    embeddings: Embeddings


class TranscriptSegment(BaseModel):
    start: float = Field(description="seconds from the start of the audio")
    end: float = Field(description="seconds from the start of the audio")
    text: str


class TranscribeResponse(BaseModel):
    """The transcript of one audio clip; long audio is cut at pauses and each segment timed."""

    text: str = Field(description="the whole transcript; empty when no speech was recognised")
    segments: list[TranscriptSegment] = Field(description="timed pieces of the transcript")
    duration_s: float = Field(description="length of the audio in seconds")


class ErrorResponse(BaseModel):
    """Every error the service itself answers: what is wrong and how to fix it."""

    detail: str = Field(description="what is wrong, and what to change")
    kind: str = Field(description="a short machine-readable kind, e.g. too_many_pixels, queue_full, deadline")


class Health(BaseModel):
    status: str = Field(description="alive, ready, loading, draining or failed")
    pid: int = Field(description="the answering worker process")
    detail: str | None = Field(None, description="why it is not ready")


def request_body_schema() -> dict[str, Any]:
    """The OpenAPI requestBody of the /v1 routes: JSON with base64 media, or multipart uploads."""
    upload = {"type": "string", "format": "binary"}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "multipart/form-data": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"text": {"type": "string"}, "image": upload, "audio": upload},
            }},
        },
    }


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these status codes, all with the ErrorResponse body."""
    why = {
        401: "missing or wrong bearer token", 404: "this service does not serve that route (a classifier has no "
                                                  "/v1/transcribe, a recogniser no /v1/predict)", 413: "body, text, image pixels or audio length over a limit",
        415: "neither JSON nor multipart", 422: "invalid request or media (corrupt, truncated, format not allowed)",
        429: "queue full; retry after Retry-After seconds", 500: "the model failed on an input that passed every check",
        503: "model loading, or server draining", 504: "the request deadline passed",
    }
    return {c: {"model": ErrorResponse, "description": why[c]} for c in codes}
