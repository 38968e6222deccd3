"""A websocket policy server speaking openpi's protocol (REFERENCE.md §6).

    connect          -> the server sends one msgpack message: the metadata (`build_metadata`)
    binary msgpack   -> {"actions": (chunk_size, action_dim) float32 in robot units,
                         "server_timing": {"infer_ms", "queue_ms", "total_ms", ["prev_total_ms"]}}
    a bad message    -> a text frame naming the problem, then close code 1011 (that connection only)
    GET /healthz     -> 200 "OK" (never needs the API key)

Real-time chunking (optional request keys, ignored by plain openpi clients who never send them):
    "prev_actions"       (P, action_dim) float, robot units: the previous chunk's actions still to
                         run from this observation on
    "inference_delay"    int d: how many of them run while this chunk is computed (default 0)
    "execution_horizon"  int s, the paper's execution horizon (default: chunk_size - P)
The metadata's "rtc_mode" says how they are used: "guided" (guidance toward prev_actions) or
"trained" (the first inference_delay actions, at most the metadata's "rtc_training_max_delay",
are given clean to a policy trained so; execution_horizon plays no part).

With an API key, a connection must send `Authorization: Api-Key <key>` (what openpi_client's
`WebsocketClientPolicy(api_key=...)` sends); other handshakes get HTTP 401. The reply never holds a
non-finite action: such an output becomes an error frame.

Inference runs on one worker thread, so requests from several clients are served one at a time
and in full, while the event loop stays free for handshakes, health checks and decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any, Callable, Iterator

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from pirecon.errors import InputError, PireconError
from pirecon.serve.obs_map import ObsMapper
from pirecon.serve.wire import packb, unpackb

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"


def build_metadata(runner, mapper: ObsMapper, preset: str | None = None, **extra: Any) -> dict[str, Any]:
    """What a client needs to know: policy kind, action shape, cameras and the request keys."""
    cfg = runner.policy.config
    pre = runner.preprocessor
    return {
        "server": "pirecon",
        "policy_type": cfg.type,
        "action_dim": pre.action_dim,
        "action_horizon": cfg.chunk_size,  # openpi's name for the chunk length
        "chunk_size": cfg.chunk_size,
        "n_action_steps": runner.n_action_steps,
        "num_inference_steps": runner.num_steps or cfg.num_inference_steps,
        "state_dim": mapper.state_dim,
        "camera_keys": list(mapper.images.values()),
        "camera_names": list(cfg.camera_names),
        "image_resolution": cfg.image_resolution,
        "preset": preset,
        "obs_map": dict(mapper.obs_map),
        "default_prompt": mapper.default_prompt,
        "rtc_mode": getattr(runner, "rtc_mode", "guided"),  # how requests with prev_actions are sampled
        "rtc_training_max_delay": cfg.rtc_training_max_delay,
        **extra,
    }


def _authorised(header: str | None, api_key: str) -> bool:
    """`Authorization: Api-Key <key>` against the server's key, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "api-key" and hmac.compare_digest(given.strip().encode(), api_key.encode())


class PolicyServer:
    """Serve `runner` (a PolicyRunner) to openpi websocket clients.

    mapper:   request -> observation in dataset keys (see `obs_map.ObsMapper`).
    metadata: sent to every client on connect.
    reseed_each_request: re-seed the sampling noise before every request, so a reply depends on
              the observation alone (reproducible); otherwise the noise stream runs on across requests.
    """

    def __init__(self, runner, mapper: ObsMapper, metadata: dict[str, Any], host: str = "127.0.0.1", port: int = 8000,
                 seed: int = 0, reseed_each_request: bool = False, max_message_bytes: int | None = 256 * 2**20,
                 api_key: str | None = None):
        self.runner = runner
        self.mapper = mapper
        self.metadata = metadata
        self.host, self.port = host, port
        self.seed = seed
        self.reseed_each_request = reseed_each_request
        self.max_message_bytes = max_message_bytes
        self.api_key = api_key or None
        self._packed_metadata = packb(metadata)
        self._executor: ThreadPoolExecutor | None = None
        self.served = 0  # replies sent
        self.rejected = 0  # error frames sent (bad requests and server errors); each closed its connection

    # Inference (worker thread) ----------------------------------------------------------------
    def _infer(self, obs: dict, submitted: float, guide: dict) -> tuple[Any, float, float]:
        started = time.monotonic()
        if self.reseed_each_request:
            self.runner.generator.manual_seed(self.seed)
        actions = self.runner.predict_chunk(obs, **guide)
        if not np.isfinite(actions).all():
            raise InputError("the policy produced non-finite actions for this observation (is it far outside the "
                             "training data?); nothing was sent to the robot")
        return actions, (started - submitted) * 1e3, (time.monotonic() - started) * 1e3

    # Connections (event loop) -----------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request):
        """Before the websocket handshake: /healthz answers at once; the API key is checked."""
        if request.path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "OK\n")
        if self.api_key is not None and not _authorised(request.headers.get("Authorization"), self.api_key):
            log.warning("client %s: refused (missing or wrong API key)", connection.remote_address)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong API key: send the header "
                                      "'Authorization: Api-Key <key>' (openpi: WebsocketClientPolicy(api_key=...))\n")
        return None

    async def _reply(self, message: str | bytes) -> dict[str, Any]:
        received = time.monotonic()
        if isinstance(message, str):
            raise InputError("got a text frame; send each observation as a binary msgpack message "
                             "(openpi_client's msgpack_numpy.packb)")
        request = unpackb(message)
        obs = self.mapper(request)
        guide = self._rtc_keys(request)
        loop = asyncio.get_running_loop()
        actions, queue_ms, infer_ms = await loop.run_in_executor(self._executor, self._infer, obs, time.monotonic(),
                                                                 guide)
        timing = {"infer_ms": infer_ms, "queue_ms": queue_ms, "total_ms": (time.monotonic() - received) * 1e3}
        return {"actions": actions, "server_timing": timing}

    def _rtc_keys(self, request: dict) -> dict:
        """The optional real-time chunking keys of a request, checked; {} when absent."""
        if not isinstance(request, dict) or "prev_actions" not in request:
            return {}
        try:
            prev = np.asarray(request["prev_actions"], dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError("'prev_actions' is not a numeric array; expected (steps, action_dim) floats") from None
        chunk, width = self.metadata["chunk_size"], self.metadata["action_dim"]
        if prev.ndim != 2 or not 0 < prev.shape[0] <= chunk or prev.shape[1] != width or not np.isfinite(prev).all():
            raise InputError(f"'prev_actions' has shape {prev.shape}; expected finite (1..{chunk}, {width}) actions "
                             f"in robot units")
        guide = {"prefix_actions": prev}
        max_delay = prev.shape[0]
        why = ""
        if self.metadata.get("rtc_mode") == "trained":
            max_delay = min(max_delay, self.metadata["rtc_training_max_delay"])
            why = f" (this server's policy was trained with delays up to {self.metadata['rtc_training_max_delay']})"
        for key, low, high in (("inference_delay", 0, max_delay), ("execution_horizon", 0, chunk - 1)):
            if key in request:
                value = request[key]
                if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or \
                        not low <= int(value) <= high:
                    raise InputError(f"{key!r} is {value!r}; expected an integer in {low}..{high}"
                                     + (why if key == "inference_delay" else ""))
                guide[key] = int(value)
        return guide

    async def _handler(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        log.info("client %s connected", peer)
        try:
            await ws.send(self._packed_metadata)
            prev_total_ms = None
            while True:
                message = await ws.recv()
                start = time.monotonic()
                try:
                    reply = await self._reply(message)
                except Exception as exc:  # noqa: BLE001 - every failure is reported to the client
                    await self._fail(ws, exc)
                    return
                if prev_total_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total_ms
                await ws.send(packb(reply))
                self.served += 1
                prev_total_ms = (time.monotonic() - start) * 1e3
        except ConnectionClosed:
            pass
        finally:
            log.info("client %s disconnected", peer)

    async def _fail(self, ws: ServerConnection, exc: Exception) -> None:
        """Text frame with the message, then close 1011 — as openpi's server does."""
        self.rejected += 1
        if isinstance(exc, PireconError):
            text = f"bad request: {exc}"
            log.warning("client %s: %s", ws.remote_address, text)
        else:
            text = f"internal server error: {type(exc).__name__}: {exc}"
            log.error("client %s: %s\n%s", ws.remote_address, text, traceback.format_exc())
        with contextlib.suppress(ConnectionClosed):
            await ws.send(text)
            await ws.close(code=CloseCode.INTERNAL_ERROR, reason="error in the previous frame")

    # Serving ----------------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Future, ready: Callable[[str, int], None] | None = None) -> None:
        """Serve until `stop` is done; `ready(host, port)` is called once the socket listens."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pirecon-infer")
        try:
            async with serve(self._handler, self.host, self.port, compression=None, max_size=self.max_message_bytes,
                             process_request=self._process_request) as server:
                host, port = next(iter(server.sockets)).getsockname()[:2]
                if ready is not None:
                    ready(host, port)
                await stop
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def run(self, ready: Callable[[str, int], None] | None = None) -> None:
        """Serve in the calling (main) thread until SIGINT (Ctrl-C) or SIGTERM."""

        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.getsignal(sig) for sig in signals}

        async def main() -> None:
            loop = asyncio.get_running_loop()
            stop = loop.create_future()
            for sig in signals:
                loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
            await self.serve(stop, ready)

        try:
            asyncio.run(main())
        finally:  # asyncio leaves the default handlers behind; put back whatever was there
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)


@contextlib.contextmanager
def serve_in_thread(server: PolicyServer, timeout: float = 30.0) -> Iterator[str]:
    """Run `server` on a background thread; yields its `ws://host:port` URL (port 0 picks a free one)."""
    loop = asyncio.new_event_loop()
    stop = loop.create_future()
    bound: dict[str, Any] = {}
    started = threading.Event()

    def ready(host: str, port: int) -> None:
        bound.update(host=host, port=port)
        started.set()

    def main() -> None:
        try:
            loop.run_until_complete(server.serve(stop, ready))
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting thread
            bound["error"] = exc
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="pirecon-serve", daemon=True)
    thread.start()
    if not started.wait(timeout) or "error" in bound:
        raise RuntimeError(f"the policy server did not start: {bound.get('error', 'timed out')!r}")
    host = "127.0.0.1" if bound["host"] in ("0.0.0.0", "::") else bound["host"]
    try:
        yield f"ws://{host}:{bound['port']}"
    finally:
        loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None))
        thread.join(timeout)
