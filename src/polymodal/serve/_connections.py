"""uvicorn's HTTP protocols with a deadline on the request line and headers (slowloris).

uvicorn bounds the idle time between requests (``timeout_keep_alive``) but not the time a client takes to send a
request's headers: a client that opens a connection and trickles or withholds them holds it for ever. Here each
connection must deliver complete headers within ``header_timeout_s`` of opening, and again of each response
finishing; otherwise it is closed. The body has its own deadline in the app (``ServeConfig.body_timeout_s``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# Set by ``serve`` in the main process and by ``app_from_env`` in each worker, before connections are accepted.
HEADER_TIMEOUT_S = 10.0


class _HeaderDeadline:
    """Mixin: close the connection when a request's headers have not all arrived in time."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._disarm()
        self._headers_done = False
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._on_header_timeout)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _waiting_for_headers(self) -> bool:
        return not self._headers_done

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()


class H11HeaderDeadline(_HeaderDeadline, H11Protocol):
    def _waiting_for_headers(self) -> bool:
        # h11 leaves IDLE only once a whole request line and header block is parsed
        return self.conn.their_state is h11.IDLE


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: uvicorn's "auto" is h11
    HttpToolsHeaderDeadline: type | None = None
else:

    class HttpToolsHeaderDeadline(_HeaderDeadline, HttpToolsProtocol):  # type: ignore[no-redef]
        def on_headers_complete(self) -> None:
            self._headers_done = True
            super().on_headers_complete()


def protocol_class() -> type:
    """The protocol uvicorn's "auto" picks (httptools when installed, else h11), with the header deadline."""
    return HttpToolsHeaderDeadline or H11HeaderDeadline
