"""Scale-out on Ray Serve: the same app (routes, limits, batching, metrics) in each replica, Ray in front.

``polymodal serve RUN --ray --replicas 2`` (or ``--min-replicas 1 --max-replicas 4`` for autoscaling) starts a
local Ray instance, or joins a cluster with ``--ray-address auto``, and deploys one Serve application whose ingress
is ``create_app``: every replica builds the app itself (a builder function, so nothing unpicklable travels) after
loading the model, so Ray sends it traffic only once it can answer. Ray's proxy picks a replica per request
(power of two choices on queue length) and caps a replica's ongoing requests at ``max_queue + max_batch_size``;
beyond that a request waits in Ray's router, up to ``max_queue`` of them (then Ray answers 503 with Retry-After),
and each replica still refuses with its own 429 when its queue is full. Autoscaling follows ongoing requests per
replica (``target_ongoing_requests``, Ray's own metric).

Batching: each replica batches with the service's own dynamic batcher (``batcher.Batcher``), the one the plain
server uses; Ray's ``@serve.batch`` is not layered on top, as a second batcher in front of the first would only add
its wait. What Ray adds is placement, replica restarts, autoscaling and its proxy.

A replica that dies (killed, out of memory) is restarted by Ray's controller; the requests it held at that moment
are answered 500 by Ray's proxy (Ray does not retry an HTTP request once a replica has it, since it cannot know
whether it ran), the others go to the live replicas: clients should retry a 500 from the proxy as they retry a 503.

Not the same as the plain server: ``/metrics`` answers for the one replica the request reached (scrape the
replicas, or Ray's own metrics, for the sum); SIGTERM is Ray's graceful shutdown (each replica finishes its
requests in flight within ``graceful_shutdown_timeout_s`` = ``drain_timeout_s``).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import ServeConfig

APP_NAME = "polymodal"


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
    """The Ray Serve application (``serve.run`` it, or hand it to ``serve deploy``) of a run folder or model."""
    try:
        from ray import serve
    except ImportError:
        raise ConfigError("serve --ray needs Ray Serve: pip install 'polymodal[ray]'") from None
    source = str(Path(source).resolve()) if Path(source).exists() else str(source)
    threads = cfg.threads or max(1, int(options.cpus_per_replica))
    replica_cfg = ServeConfig(**{**asdict(cfg), "threads": threads})

    def build_app() -> Any:  # runs in each replica: load the model, then build the app around it
        import torch

        from .app import create_app
        from .inference import load_backend

        torch.set_num_threads(threads)
        return create_app(load_backend(source, replica_cfg.bucket_size), replica_cfg)

    class Replica:
        def check_health(self) -> None:  # Ray restarts a replica whose model failed (the app would answer 503)
            status, why = self.app.state.service.status()
            if status == "failed":
                raise RuntimeError(why)

    scaling: dict[str, Any] = {"num_replicas": options.replicas} if options.max_replicas is None else {
        "autoscaling_config": {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                               "target_ongoing_requests": options.target_ongoing_requests}}
    deployment = serve.deployment(
        serve.ingress(build_app)(Replica), name=APP_NAME,
        max_ongoing_requests=cfg.max_queue + cfg.max_batch_size, max_queued_requests=cfg.max_queue,
        graceful_shutdown_timeout_s=cfg.drain_timeout_s,
        ray_actor_options={"num_cpus": options.cpus_per_replica}, **scaling)
    return deployment.bind()


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
