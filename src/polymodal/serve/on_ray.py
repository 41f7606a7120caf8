"""Scale-out on Ray Serve: the same app (routes, limits, batching, metrics) in each replica, Ray in front.

``polymodal serve RUN --ray --replicas 2`` (or ``--min-replicas 1 --max-replicas 4`` for autoscaling) starts a
local Ray instance, or joins a cluster with ``--ray-address auto``, and deploys one Serve application of two
deployments:

- ``Model`` (the replicas): each loads the model, builds the service's app around it (``create_app``) and runs
  every request through that app in-process (``call_asgi``): token, limits, queue (429), batcher, deadlines and
  metrics are the plain server's. Ray caps a replica's ongoing requests at ``max_queue + max_batch_size`` and lets
  at most ``max_queue`` more wait for one (then 503 with Retry-After); autoscaling follows ongoing requests per
  replica (``target_ongoing_requests``, Ray's own metric). A replica whose model failed fails Ray's health check.
- ``Front`` (one replica, no CPU reserved): Ray's HTTP proxy sends every request to it, and it forwards the request
  to a replica through a handle. A replica that dies before its answer starts (killed, out of memory) raises
  ``RayActorError`` there, and the front sends the request to another replica (``RETRIES`` in all), then answers
  503: a request is never lost to a dead replica. An answer comes back in one piece (so it cannot be cut in half),
  an event stream (chat with ``"stream": true``) chunk by chunk (a stream whose replica dies just ends). Without
  the front, Ray's proxy answers a plain 500 for every request a dying replica held (it maps RayActorError to 500
  and does not retry an HTTP request a replica has taken).

Batching: each replica batches with the service's own dynamic batcher (``batcher.Batcher``), the one the plain
server uses; Ray's ``@serve.batch`` is not layered on top, as a second batcher in front of the first would only add
its wait. What Ray adds is placement, replica restarts, autoscaling and its proxy.

Not the same as the plain server: ``/metrics`` answers for the one replica the request reached (scrape the
replicas, or Ray's own metrics, for the sum); SIGTERM is Ray's graceful shutdown (each replica finishes its
requests in flight within ``graceful_shutdown_timeout_s`` = ``drain_timeout_s``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import ServeConfig

APP_NAME = "polymodal"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """How many replicas, and where Ray runs."""

    replicas: int = 2  # fixed number of replicas (ignored when max_replicas is set)
    min_replicas: int = 1  # autoscaling lower bound
    max_replicas: int | None = None  # autoscaling upper bound; None: a fixed number of replicas
    target_ongoing_requests: float = 8.0  # autoscaling: requests in flight per replica that Ray aims for
    cpus_per_replica: float = 1.0  # Ray CPUs each replica reserves (its torch threads follow, unless serve.threads)
    address: str | None = None  # a Ray cluster to join ("auto", "ray://host:10001"); None: start a local one

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"serve --replicas: must be at least 1, got {self.replicas}")
        if self.max_replicas is not None and not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"serve --min-replicas/--max-replicas: need 1 <= min <= max, got {self.min_replicas} "
                              f"and {self.max_replicas}")
        if self.target_ongoing_requests <= 0 or self.cpus_per_replica <= 0:
            raise ConfigError("serve: target_ongoing_requests and cpus_per_replica must be positive")


def application(source: str | os.PathLike, cfg: ServeConfig = ServeConfig(), options: RayOptions = RayOptions()) -> Any:
    """The Ray Serve application (``serve.run`` it, or hand it to ``serve deploy``) of a run folder or model: a
    ``Front`` deployment that Ray's proxy sends every request to, and the ``Model`` replicas it forwards them to."""
    try:
        from ray import serve
    except ImportError:
        raise ConfigError("serve --ray needs Ray Serve: pip install 'polymodal[ray]'") from None
    source = str(Path(source).resolve()) if Path(source).exists() else str(source)
    threads = cfg.threads or max(1, int(options.cpus_per_replica))
    replica_cfg = ServeConfig(**{**asdict(cfg), "threads": threads})

    class Model:
        """One replica: the model loaded, then the service's app around it, called in-process per request."""

        def __init__(self):
            import torch

            from .app import create_app
            from .inference import load_backend

            torch.set_num_threads(threads)
            self.app = create_app(load_backend(source, replica_cfg.bucket_size), replica_cfg)
            self._started: asyncio.Future | None = None

        async def __call__(self, request: dict[str, Any]):
            if self._started is None:  # the app's lifespan (its batchers start), once, on this replica's loop
                self._lifespan = self.app.router.lifespan_context(self.app)
                self._started = asyncio.ensure_future(self._ready())
            await self._started
            async for piece in call_asgi(self.app, request):
                yield piece

        async def _ready(self) -> None:
            await self._lifespan.__aenter__()
            while self.app.state.service.status()[0] == "loading":  # the model is loaded: only the batchers start
                await asyncio.sleep(0.005)

        def check_health(self) -> None:  # Ray restarts a replica whose model failed (the app would answer 503)
            status, why = self.app.state.service.status()
            if status == "failed":
                raise RuntimeError(why)

    class Front:
        """Ray's proxy sends every request here; it forwards it to a Model replica and, if that replica dies before
        answering, to another (``RETRIES`` times), then answers 503: a killed replica loses no request."""

        def __init__(self, model: Any):
            self.model = model

        async def __call__(self, request: Any) -> Any:
            return await forward(self.model, request, cfg.retry_after_s)

    scaling: dict[str, Any] = {"num_replicas": options.replicas} if options.max_replicas is None else {
        "autoscaling_config": {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                               "target_ongoing_requests": options.target_ongoing_requests}}
    model = serve.deployment(Model, name="model", max_ongoing_requests=cfg.max_queue + cfg.max_batch_size,
                             max_queued_requests=cfg.max_queue, graceful_shutdown_timeout_s=cfg.drain_timeout_s,
                             ray_actor_options={"num_cpus": options.cpus_per_replica}, **scaling)
    front = serve.deployment(Front, name=APP_NAME, num_replicas=1, max_ongoing_requests=FRONT_ONGOING,
                             ray_actor_options={"num_cpus": 0})
    return front.bind(model.bind())


RETRIES = 3  # replicas tried for one request before the front answers 503
FRONT_ONGOING = 1000  # requests the front holds at once (it only waits on the replicas)


async def forward(model: Any, request: Any, retry_after_s: int) -> Any:
    """``request`` (a Starlette request) answered by a Model replica through its handle; a replica that dies before
    its answer starts is replaced by another, up to ``RETRIES``; then 503. Ray's back-pressure (``max_queued_requests``
    reached) is a 503 too, with Retry-After."""
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError
    from starlette.responses import JSONResponse, Response, StreamingResponse

    sent = {"method": request.method, "path": request.url.path, "query": request.url.query.encode("latin-1"),
            "headers": [(k, v) for k, v in request.headers.items()], "body": await request.body(),
            "client": (request.client.host, request.client.port) if request.client else None}
    why = "no replica answered"
    for _ in range(RETRIES):
        pieces = model.options(stream=True).remote(sent)
        try:
            start = await pieces.__anext__()
        except (RayActorError, ActorUnavailableError) as e:  # the replica died before answering: try another
            why = f"the replica was lost ({type(e).__name__})"
            continue
        except BackPressureError:
            return JSONResponse({"detail": f"every replica's queue is full; retry after {retry_after_s} s",
                                 "kind": "queue_full"}, 503, headers={"Retry-After": str(retry_after_s)})
        headers = {k: v for k, v in start["headers"] if k.lower() != "content-length"}
        if "body" in start:  # the whole answer in one piece: nothing left that a dying replica could lose
            return Response(start["body"], status_code=start["status"], headers=headers)
        return StreamingResponse(_rest(pieces), status_code=start["status"], headers=headers)
    return JSONResponse({"detail": f"{why}, {RETRIES} times; retry after {retry_after_s} s", "kind": "replica_lost"},
                        503, headers={"Retry-After": str(retry_after_s)})


async def _rest(pieces: Any):
    """A stream's chunks; if its replica dies mid-stream the stream just ends (what was sent cannot be re-sent)."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    try:
        async for piece in pieces:
            yield piece
    except (RayActorError, ActorUnavailableError):
        log.warning("a streamed answer ended early: its replica was lost")


async def call_asgi(app: Any, request: dict[str, Any]):
    """Run one HTTP request through an ASGI app in this process: ``{"status", "headers", "body"}`` in one piece, or
    for an event stream ``{"status", "headers"}`` first and then the body's chunks as they are sent."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request["method"],
             "scheme": "http", "path": request["path"], "raw_path": request["path"].encode("latin-1"),
             "query_string": request["query"], "root_path": "", "client": request["client"], "server": None,
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request["headers"]]}
    messages: asyncio.Queue[dict] = asyncio.Queue()
    delivered = False
    closed = asyncio.Event()

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request["body"], "more_body": False}
        await closed.wait()  # the client stays connected until the answer is out
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await messages.put(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    try:
        while True:
            get = asyncio.ensure_future(messages.get())
            done, _ = await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                task.result()  # the app ended without finishing its answer: its error, if any
                return
            m = get.result()
            if m["type"] == "http.response.start":
                start = {"status": m["status"], "headers": [(k.decode("latin-1"), v.decode("latin-1"))
                                                            for k, v in m.get("headers", [])]}
                streamed = any(k == "content-type" and v.startswith("text/event-stream") for k, v in start["headers"])
                if streamed:
                    yield start
                body: list[bytes] = []
            elif m["type"] == "http.response.body":
                if streamed and m.get("body"):
                    yield m["body"]
                elif not streamed:
                    body.append(m.get("body", b""))
                if not m.get("more_body", False):
                    if not streamed:
                        yield {**start, "body": b"".join(body)}
                    return
    finally:
        closed.set()
        await task


def start(source: str | os.PathLike, cfg: ServeConfig = ServeConfig(), options: RayOptions = RayOptions()) -> Any:
    """Deploy on Ray (starting a local instance unless ``options.address``) and wait until every replica is up;
    the application's handle."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    return serve.run(application(source, cfg, options), name=APP_NAME, route_prefix="/")


def serve_on_ray(source: str | os.PathLike, cfg: ServeConfig = ServeConfig(), options: RayOptions = RayOptions()) -> int:
    """``polymodal serve --ray``: deploy, then wait until Ctrl+C or SIGTERM, then shut the application down."""
    import signal

    import ray
    from ray import serve

    start(source, cfg, options)
    print(f"polymodal on Ray Serve: http://{cfg.host}:{cfg.port} ({_describe(options)}); Ctrl+C stops", flush=True)
    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    serve.shutdown()
    ray.shutdown()
    return 0


def _describe(options: RayOptions) -> str:
    if options.max_replicas is None:
        return f"{options.replicas} replicas"
    return f"{options.min_replicas} to {options.max_replicas} replicas, autoscaled"
