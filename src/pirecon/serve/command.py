"""`pirecon serve --policy.path=CKPT [--host 127.0.0.1] [--port 8000] [--serve.preset=libero] [--serve.obs_map=JSON]`

Serves a checkpoint to robot clients over openpi's websocket protocol, so openpi_client's
WebsocketClientPolicy (and the LIBERO / ALOHA / DROID example clients) work unchanged:
metadata on connect, msgpack observations in, {"actions": (chunk_size, action_dim) in robot units,
"server_timing": {...}} out; GET /healthz answers 200. Ctrl-C stops it. Each reply is the whole
chunk; clients run its first n_action_steps (in the metadata) before asking again. A bad request
gets a text frame naming the problem and that connection closes (code 1011).

Request keys -> dataset keys. The checkpoint reads the keys of the dataset it was trained on
(`observation.images.<camera>`, `observation.state`, `task`); the obs map says which request key
feeds each one:
  --serve.preset=libero|aloha|droid   start from openpi's example client keys (listed below); each
                                      preset maps onto default dataset keys, which you retarget:
  --serve.obs_map='{"observation/image": "observation.images.top", "observation/wrist_image": "wrist"}'
                                      request key -> dataset key, applied on top of the preset
                                      (a bare camera name means observation.images.<name>; null
                                      drops a preset key, e.g. '{"images/cam_low": null}').
Without a preset, clients send the dataset keys as they are, plus `prompt` for the task.
A request key `a/b` is the key "a/b" itself, or "b" inside the dict "a" (ALOHA's images/cam_high).
Several request keys mapped to observation.state are joined in order (DROID's joint_position +
gripper_position). Images are uint8 (H, W, 3) or (3, H, W), any size (resized with padding).
The server checks the map against the checkpoint's cameras at start-up and names what is missing.

Listening: 127.0.0.1 (this machine) unless --host says otherwise (--host=0.0.0.0: every interface).
--serve.api_key (or $PIRECON_SERVE_API_KEY) makes every client send `Authorization: Api-Key <key>`,
as openpi_client's WebsocketClientPolicy(api_key=...) does; /healthz stays open.
Requests are checked: images 1..4096 pixels a side, a state within 1e4 normalised units of the
training data; a non-finite output is an error frame, never actions.

Other flags: --use_ema (EMA weights), --policy.num_inference_steps (denoising steps; default the
checkpoint's), --policy.n_action_steps (advertised in the metadata), --seed, --policy.device,
--serve.reseed_each_request (same observation -> same actions), --serve.default_prompt.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from pirecon.configs.parse import format_help, parse_flags
from pirecon.configs.policy import RTC_MODES
from pirecon.configs.serve import API_KEY_ENV, ServeConfig
from pirecon.errors import ConfigError
from pirecon.serve.obs_map import (ObsMapper, checkpoint_camera_keys, checkpoint_state_dim, presets_help,
                                   resolve_obs_map)
from pirecon.serve.server import PolicyServer, build_metadata


def build_server(cfg: ServeConfig):
    """Load the checkpoint and wire runner, obs map and metadata into a PolicyServer."""
    from pirecon.inference import PolicyRunner  # lazy: torch, not needed for --help
    from pirecon.model.placement import resolve_device  # lazy: torch, not needed for --help

    if not cfg.policy.path:
        raise ConfigError("--policy.path: expected a checkpoint folder (e.g. OUT/checkpoints/last)")
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"--port={cfg.port}: expected 0..65535 (0 picks a free port)")
    if cfg.serve.max_message_mb <= 0:
        raise ConfigError(f"--serve.max_message_mb={cfg.serve.max_message_mb}: expected a positive number")
    if cfg.policy.num_inference_steps is not None and cfg.policy.num_inference_steps <= 0:
        raise ConfigError(f"--policy.num_inference_steps={cfg.policy.num_inference_steps}: expected a positive integer")
    if cfg.policy.rtc_mode not in RTC_MODES:
        raise ConfigError(f"--policy.rtc_mode={cfg.policy.rtc_mode!r}: expected one of {list(RTC_MODES)}")
    device = resolve_device(cfg.policy.device)
    preset = None if cfg.serve.preset in (None, "", "none") else cfg.serve.preset
    # Check the preset's name before the (slow) checkpoint load.
    resolve_obs_map(preset, {}, None)
    runner = PolicyRunner.from_checkpoint(cfg.policy.path, use_ema=cfg.use_ema, device=device,
                                          n_action_steps=cfg.policy.n_action_steps,
                                          num_steps=cfg.policy.num_inference_steps, seed=cfg.seed,
                                          tokenizer_path=cfg.policy.tokenizer_path)
    trained_delay = runner.policy.config.rtc_training_max_delay
    if cfg.policy.rtc_mode == "trained" and trained_delay <= 0:
        raise ConfigError(f"--policy.rtc_mode=trained: {cfg.policy.path} was trained without training-time real-time "
                          f"chunking (rtc_training_max_delay=0); use --policy.rtc_mode=guided, or train with "
                          f"--policy.rtc_training_max_delay=D")
    runner.rtc_mode = cfg.policy.rtc_mode
    if runner.preprocessor.action_dim is None:
        raise ConfigError(f"--policy.path={cfg.policy.path}: the checkpoint does not say its real action dim "
                          f"(no data_info.json action_dim nor norm stats with 'actions')")
    camera_keys = checkpoint_camera_keys(runner.preprocessor)
    obs_map = resolve_obs_map(preset, cfg.serve.obs_map, camera_keys)
    mapper = ObsMapper(obs_map, camera_keys=camera_keys, state_dim=checkpoint_state_dim(runner.preprocessor),
                       default_prompt=cfg.serve.default_prompt)
    metadata = build_metadata(runner, mapper, preset=preset, checkpoint=str(cfg.policy.path), use_ema=cfg.use_ema,
                              reseed_each_request=cfg.serve.reseed_each_request)
    return PolicyServer(runner, mapper, metadata, host=cfg.host, port=cfg.port, seed=cfg.seed,
                        reseed_each_request=cfg.serve.reseed_each_request,
                        max_message_bytes=cfg.serve.max_message_mb * 2**20, api_key=api_key(cfg))


def api_key(cfg: ServeConfig) -> str | None:
    """--serve.api_key, else $PIRECON_SERVE_API_KEY, else None (no authentication)."""
    return cfg.serve.api_key or os.environ.get(API_KEY_ENV) or None


def rtc_note(cfg: ServeConfig, trained_delay: int) -> str:
    """One start-up line: how requests carrying prev_actions are served."""
    if cfg.policy.rtc_mode == "trained":
        return (f"pirecon serve: real-time chunking (requests with prev_actions + inference_delay) in trained mode: "
                f"the first inference_delay <= {trained_delay} actions are given clean, no guidance")
    hint = (f"; the checkpoint was trained with rtc_training_max_delay={trained_delay}: "
            f"--policy.rtc_mode=trained needs no guidance") if trained_delay else ""
    return f"pirecon serve: real-time chunking (requests with prev_actions) in guided mode{hint}"


def exposure_note(cfg: ServeConfig) -> str | None:
    """One start-up line when the server is reachable from other machines."""
    if cfg.host in ("127.0.0.1", "localhost", "::1"):
        return None
    auth = "clients need the API key" if api_key(cfg) else \
        "WITHOUT authentication: anyone who reaches this port drives the robot (set --serve.api_key)"
    return f"pirecon serve: --host={cfg.host} listens beyond this machine, {auth}"


def run(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(format_help("serve", __doc__, ServeConfig, extra=presets_help()), end="")
        return 0
    cfg = parse_flags(argv, ServeConfig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.WARNING)  # our own log names each client
    server = build_server(cfg)
    print(rtc_note(cfg, server.metadata["rtc_training_max_delay"]), flush=True)
    note = exposure_note(cfg)
    if note:
        print(note, flush=True)

    def ready(host: str, port: int) -> None:
        print(f"pirecon serve: metadata {json.dumps(server.metadata)}", flush=True)
        print(f"pirecon serve: listening on ws://{host}:{port} (health: http://{host}:{port}/healthz); "
              f"Ctrl-C stops", flush=True)

    try:
        server.run(ready)
    except OSError as exc:  # e.g. the port is taken
        raise ConfigError(f"--host={cfg.host} --port={cfg.port}: cannot listen ({exc.strerror or exc})") from None
    print(f"pirecon serve: stopped after {server.served} replies and {server.rejected} error frames", flush=True)
    return 0
