"""Policy server: a checkpoint behind openpi's websocket protocol (`pirecon serve`).

    wire.py     msgpack + numpy arrays in openpi_client's wire format
    obs_map.py  request keys -> dataset keys (LIBERO / ALOHA / DROID presets), request checks
    server.py   PolicyServer (asyncio websockets, one inference thread, /healthz)
    client.py   PolicyClient, a small synchronous client
    command.py  `pirecon serve` flags
"""
