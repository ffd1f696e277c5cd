"""Limits that keep `imgcls serve` answering when clients are large, slow or hostile.

- BodyLimit (ASGI middleware): a request with both Content-Length and Transfer-Encoding is
  400 and its connection closed (RFC 9112 section 6.1, request smuggling); a body over the
  size limit is answered 413 from its Content-Length, or as soon as the streamed bytes pass
  the limit, before it is read whole;
  a body that has not fully arrived `body_timeout` seconds after the app first asked for it
  is answered 408 and its connection closed. After a 413 the connection stays open while
  uvicorn reads and drops the rest of the body (closing at once would reset it under a
  client still sending, which then never sees the 413); header_timeout_protocol bounds that
  drain to `seconds` after the answer.
- LingeringTransport: a close sends the answer and a FIN, then drops what the client still
  sends (at most `seconds`), so a client sending a refused body reads its answer.
- header_timeout_protocol: uvicorn's HTTP/1.1 protocol with a deadline for the request
  line and headers. uvicorn's own timeout_keep_alive only runs between two requests, so a
  client that opens connections and sends a header byte now and then ("slowloris") would
  hold them for ever; with this, each is closed after `seconds`.
- SERVER_LIMITS: the uvicorn settings `serve` runs with (a bound on concurrent connections,
  beyond which clients get 503 instead of the server's memory growing).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

BODY_TIMEOUT_SECONDS = 60.0  # a 10 MB upload at 1.5 Mbit/s still arrives
HEADER_TIMEOUT_SECONDS = 10.0
# uvicorn answers 503 at once to a connection that would be the 64th open one (it counts
# the asking one), so 63 uploads of up to --max-upload-mb each bound what requests can take.
SERVER_LIMITS = {"timeout_keep_alive": 5, "limit_concurrency": 64}


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


def refusal(status: int, message: str, *, close: bool = False) -> JSONResponse:
    """A JSON error; `close` also closes the connection once it is sent."""
    return JSONResponse({"error": message}, status_code=status, headers={"connection": "close"} if close else None)


class BodyLimit:
    """ASGI middleware refusing bodies over `limit` bytes (413) or slower than `timeout` s (408)."""

    def __init__(self, app, limit: int, timeout: float | None = BODY_TIMEOUT_SECONDS):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if b"content-length" in headers and b"transfer-encoding" in headers:
            # RFC 9112 section 6.1: the pair may smuggle a request past a proxy that reads the
            # other framing; answer 400 and close, so nothing after this request is served.
            message = "a request may not carry both Content-Length and Transfer-Encoding."
            return await refusal(400, message, close=True)(scope, receive, send)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        seen, complete, started, deadline = 0, False, False, None

        async def guarded_receive():
            nonlocal seen, complete, deadline
            if complete:  # after the body only a disconnect can come: no deadline then
                return await receive()
            if self.timeout is None:
                message = await receive()
            else:
                loop = asyncio.get_running_loop()
                deadline = deadline or loop.time() + self.timeout
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
                except TimeoutError:
                    raise BodyTooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
                complete = not message.get("more_body", False)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send)
        except BodyTooSlow:
            if started:
                raise
            log.info("408: a request body took longer than %g s", self.timeout)
            message = f"the request body did not arrive within {self.timeout:g} s."
            await refusal(408, message, close=True)(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        megabytes = self.limit / 1e6
        message = f"request body over the limit of {megabytes:g} MB (--max-upload-mb)."
        await refusal(413, message)(scope, receive, send)


def header_timeout_protocol(seconds: float = HEADER_TIMEOUT_SECONDS):
    """uvicorn's h11 protocol class, closing connections whose request head (request line and
    headers) is not complete `seconds` after the connection opened or its last response
    (which also ends the drain of a refused body that keeps coming)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(LingeringTransport(transport, self.loop, seconds))
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.transport.lingering:  # the answer is sent: what still comes is dropped
                return
            super().data_received(data)
            if self._head_done():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request's head must come in time too

        def connection_lost(self, exc) -> None:
            self._disarm()
            self.transport.stop_lingering()
            super().connection_lost(exc)

        def eof_received(self) -> bool | None:
            if self.transport.lingering:  # the client has sent everything: close now
                self.transport.stop_lingering()
                return None
            return super().eof_received()

        def _head_done(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expire(self) -> None:
            self._head_timer = None
            if not self._head_done() and not self.transport.is_closing():
                log.info("closed a connection whose request headers took longer than %g s", seconds)
                self.transport.close()

    return HeaderTimeoutProtocol


class LingeringTransport:
    """A transport whose close() first half-closes and drops what the client still sends, for
    at most `seconds` (a "lingering close", as Apache and nginx do). Closing a socket with unread
    data makes the system reset the connection, and a client still sending a refused body (a 413
    to `Connection: close`, a 408) then loses the answer before it reads it. Written by hand:
    uvicorn closes at once and no library wraps asyncio transports for this."""

    def __init__(self, transport, loop: asyncio.AbstractEventLoop, seconds: float):
        self._transport, self._loop, self._seconds = transport, loop, seconds
        self._timer: asyncio.TimerHandle | None = None
        self.lingering = False

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.lingering or self._transport.is_closing():
            return
        if not self._transport.can_write_eof():
            self._transport.close()
            return
        self.lingering = True
        self._transport.write_eof()  # the answer, then end of stream: the client reads both
        self._transport.resume_reading()  # keep reading (and dropping) so that nothing is reset
        self._timer = self._loop.call_later(self._seconds, self.stop_lingering)

    def stop_lingering(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.lingering and not self._transport.is_closing():
            self._transport.close()
