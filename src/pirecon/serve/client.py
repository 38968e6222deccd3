"""A small synchronous client for `pirecon serve` (or any openpi policy server).

    with PolicyClient("ws://robot-server:8000", api_key=None) as client:
        client.metadata                      # sent by the server on connect
        reply = client.infer(request)        # reply["actions"]: (chunk_size, action_dim)

Same wire format and behaviour as openpi_client's WebsocketClientPolicy; a text frame from the
server (its error report) raises `ServerError` with the server's message.
"""

from __future__ import annotations

from typing import Any

from websockets.sync.client import connect

from pirecon.serve.wire import packb, unpackb


class ServerError(RuntimeError):
    """The server answered with an error frame (its text is the message)."""


class PolicyClient:
    def __init__(self, url: str, timeout: float | None = 60.0, api_key: str | None = None):
        self.url = url if url.startswith("ws") else f"ws://{url}"
        self.timeout = timeout
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None  # as openpi_client sends it
        # Entering the connection (instead of holding a bare connect()) is what websockets 17.1+ expects.
        self._ws = connect(self.url, compression=None, max_size=None, open_timeout=timeout,
                           additional_headers=headers).__enter__()
        self.metadata: dict[str, Any] = unpackb(self._ws.recv(timeout))

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        self._ws.send(packb(request))
        reply = self._ws.recv(self.timeout)
        if isinstance(reply, str):
            raise ServerError(reply)
        return unpackb(reply)

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
