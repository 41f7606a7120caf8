"""``ServeConfig``: every setting of the HTTP service, validated before the model is loaded."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
AUDIO_FORMATS = ("WAV", "FLAC", "OGG")


@dataclass(frozen=True)
class ServeConfig:
    """How ``polymodal serve`` admits, batches and limits requests. Each field feeds a ``--flag`` of the command."""

    host: str = "127.0.0.1"  # interface to listen on; 0.0.0.0 exposes the service beyond this machine
    port: int = 8000  # TCP port; 0 picks a free one
    workers: int = 1  # uvicorn worker processes on the same port, each with its own copy of the model
    max_batch_size: int = 32  # most requests run through the model together; 1 turns batching off
    max_delay_ms: float = 0.0  # how long a batch waits to fill up; 0 takes whatever is queued (as Triton does)
    max_queue: int = 64  # requests admitted but not yet in a batch; beyond it the answer is 429
    bucket_size: int = 8  # text runs: a batch runs as length-sorted sub-batches of this many (less padding); 0: one
    retry_after_s: int = 1  # the Retry-After of a 429
    deadline_ms: float = 30_000.0  # default time a request may take, end to end, before a 504
    max_deadline_ms: float = 600_000.0  # the most a client may ask for with the X-Deadline-Ms header
    max_body_bytes: int = 16 * 1024 * 1024  # request body, JSON or multipart (base64 adds a third)
    body_timeout_s: float = 30.0  # the whole body must arrive within this, before the request takes a queue place
    header_timeout_s: float = 10.0  # a connection's request line and headers must arrive within this, or it closes
    max_image_pixels: int = 40_000_000  # decoded pixels per image, read from the header before decoding
    max_aspect_ratio: float = 20.0  # long side / short side: resizing a thin strip's short side would blow it up
    max_audio_seconds: float = 60.0  # per audio clip, read from the header before decoding
    max_text_chars: int = 20_000  # per text; the encoder truncates to its token limit anyway
    max_new_tokens: int = 512  # chat: the most tokens a request may ask to generate (max_tokens); above it a 422
    image_formats: tuple[str, ...] = IMAGE_FORMATS  # accepted image containers, by their leading bytes
    audio_formats: tuple[str, ...] = AUDIO_FORMATS  # accepted audio containers, by their leading bytes
    api_key: str | None = None  # bearer token required on /v1 routes; None: open
    drain_timeout_s: float = 30.0  # after SIGTERM, how long in-flight requests may take before the process exits
    threads: int | None = None  # torch intra-op threads for inference; None: torch's default

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65_535, "port", "must be 0..65535"),
            (self.workers >= 1, "workers", "must be at least 1"),
            (self.max_batch_size >= 1, "max_batch_size", "must be at least 1"),
            (self.max_delay_ms >= 0, "max_delay_ms", "must be 0 or more"),
            (self.max_queue >= 1, "max_queue", "must be at least 1"),
            (self.bucket_size >= 0, "bucket_size", "must be 0 or more"),
            (self.retry_after_s >= 0, "retry_after_s", "must be 0 or more"),
            (self.deadline_ms > 0, "deadline_ms", "must be positive"),
            (self.max_deadline_ms >= self.deadline_ms, "max_deadline_ms", "must be at least deadline_ms"),
            (self.max_body_bytes >= 1024, "max_body_bytes", "must be at least 1024"),
            (self.body_timeout_s > 0, "body_timeout_s", "must be positive"),
            (self.header_timeout_s > 0, "header_timeout_s", "must be positive"),
            (self.max_image_pixels >= 1, "max_image_pixels", "must be at least 1"),
            (self.max_aspect_ratio >= 1, "max_aspect_ratio", "must be at least 1"),
            (self.max_audio_seconds > 0, "max_audio_seconds", "must be positive"),
            (self.max_text_chars >= 1, "max_text_chars", "must be at least 1"),
            (self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1"),
            (set(self.image_formats) <= set(IMAGE_FORMATS), "image_formats", f"must be among {', '.join(IMAGE_FORMATS)}"),
            (set(self.audio_formats) <= set(AUDIO_FORMATS), "audio_formats", f"must be among {', '.join(AUDIO_FORMATS)}"),
            (self.api_key is None or len(self.api_key) >= 8, "api_key", "must be at least 8 characters"),
            (self.drain_timeout_s >= 0, "drain_timeout_s", "must be 0 or more"),
            (self.threads is None or self.threads >= 1, "threads", "must be at least 1"),
        ]
        for ok, field, rule in checks:
            if not ok:
                raise ConfigError(f"serve.{field}: {rule}, got {getattr(self, field)!r}")
