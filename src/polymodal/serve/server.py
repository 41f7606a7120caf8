"""Running the service: uvicorn with a graceful drain on SIGTERM, in one process or several on one port.

On SIGTERM the server stops admitting (``/readyz`` and ``/v1`` routes answer 503, so a load balancer takes the
replica out), lets the requests in flight finish for up to ``drain_timeout_s``, then exits with status 0. A
second SIGTERM, or SIGINT (Ctrl+C), shuts down at once the ordinary uvicorn way.

Scale-out: ``workers > 1`` runs uvicorn's own process supervisor, which binds the port once and starts workers
that all accept on it (the kernel spreads connections over them); each worker loads its own copy of the model
and batches its own requests. ``PROMETHEUS_MULTIPROC_DIR`` is set for them so ``/metrics`` adds up all workers.
There SIGTERM is uvicorn's own graceful shutdown: each worker stops accepting connections and finishes the
requests in flight (up to ``drain_timeout_s``), but it closes its socket at once rather than answering
``/readyz`` with 503 first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from ..errors import ConfigError
from ..classify.run import Run
from . import _connections
from ._metrics import MULTIPROC_ENV
from .app import Service, create_app
from .config import ServeConfig

log = logging.getLogger(__name__)
RUN_ENV = "POLYMODAL_SERVE_RUN"  # how worker processes learn what to serve (they are spawned, not forked)
CONFIG_ENV = "POLYMODAL_SERVE_CONFIG"
# After the drain, uvicorn's own wait for idle connections to close; they are idle by then.
_CLOSE_TIMEOUT_S = 5


def _service_of(app: Any) -> Service | None:
    """The ``Service`` inside an app, through the middleware wrappers uvicorn adds."""
    for _ in range(16):
        service = getattr(getattr(app, "state", None), "service", None)
        if isinstance(service, Service):
            return service
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with SIGTERM turned into: stop admitting, finish what is in flight, then exit."""

    _drain_until: float | None = None
    failed = False  # the model did not load: exit with status 1

    def _service(self) -> Service | None:
        return _service_of(getattr(self.config, "loaded_app", None) or self.config.app)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        service = self._service()
        if sig == signal.SIGTERM and self._drain_until is None and service is not None and not self.should_exit:
            service.draining = True
            self._drain_until = time.monotonic() + service.cfg.drain_timeout_s
            log.warning("SIGTERM: draining %d requests in flight (up to %g s), then exiting",
                        service.admission.in_flight, service.cfg.drain_timeout_s)
            return  # not recorded as a captured signal: uvicorn would re-raise it on exit, and the exit must be 0
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        service = self._service()
        if self._drain_until is not None and service is not None and not self.should_exit:
            if service.admission.in_flight == 0 or time.monotonic() >= self._drain_until:
                self.should_exit = True
        if service is not None and service.load_error and not self.should_exit:
            self.should_exit = True
            self.failed = True
        return await super().on_tick(counter)


def app_from_env() -> Any:
    """The app factory of worker processes: run folder and config from the environment."""
    cfg = ServeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(os.environ[CONFIG_ENV]).items()})
    _connections.HEADER_TIMEOUT_S = cfg.header_timeout_s
    return create_app(os.environ[RUN_ENV], cfg)


def serve(run: Run | str | Path, cfg: ServeConfig = ServeConfig(), log_level: str = "info") -> int:
    """Serve a run until SIGTERM (drained) or SIGINT; the exit status: 0, or 1 if the model failed to load.

    Args:
        run: a run folder, or a loaded ``Run`` (one worker only: other workers load the folder themselves).
    """
    if isinstance(run, Run) and cfg.workers > 1:
        raise ConfigError("serve.workers: several workers each load the run folder; pass its path, not a loaded Run")
    _connections.HEADER_TIMEOUT_S = cfg.header_timeout_s
    common = dict(host=cfg.host, port=cfg.port, log_level=log_level, timeout_graceful_shutdown=_CLOSE_TIMEOUT_S,
                  http=_connections.protocol_class())
    if cfg.workers == 1:
        server = DrainingServer(uvicorn.Config(create_app(run, cfg), **common))
        server.run()
        return 1 if server.failed else 0
    os.environ[RUN_ENV] = str(Path(run).resolve())
    os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(cfg))
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="polymodal-metrics-")
    try:
        # uvicorn's supervisor builds its own Server in each worker, so a worker's SIGTERM is uvicorn's graceful
        # shutdown: it stops accepting, lets the requests in flight finish (up to drain_timeout_s), then exits.
        common["timeout_graceful_shutdown"] = max(1, round(cfg.drain_timeout_s))
        uvicorn.run("polymodal.serve.server:app_from_env", factory=True, workers=cfg.workers, **common)
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
            del os.environ[MULTIPROC_ENV]
    return 0
