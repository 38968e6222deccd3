"""A minimal robot-side client for `pirecon serve` (examples/serve_robot.sh) or openpi's serve_policy.py.

    python examples/robot_client.py --host localhost --port 8000 --prompt "put the bowl on the plate"
    [--api_key KEY]   (default $PIRECON_SERVE_API_KEY: the key of a server started with one)

Uses openpi_client's WebsocketClientPolicy when it is installed (`pip install openpi-client`), else
pirecon's own PolicyClient; both speak the same protocol. The request is built from the server's
metadata: one image for every request key the server maps to a camera, a state vector of the
checkpoint's width, and the prompt. Replace `read_sensors` with your robot's camera frames and joint
readings, and `send_to_robot` with your controller; as written they send random images and zero
states and print what the robot would execute, so the script also checks a server end to end.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def connect(host: str, port: int, api_key: str | None = None):
    """(policy, metadata, name): anything with .infer(obs) -> {"actions": (H, action_dim), ...}."""
    try:
        from openpi_client.websocket_client_policy import WebsocketClientPolicy
    except ImportError:
        from pirecon.serve.client import PolicyClient
        client = PolicyClient(f"ws://{host}:{port}", api_key=api_key)
        return client, client.metadata, "pirecon.serve.client.PolicyClient"
    policy = WebsocketClientPolicy(host=host, port=port, api_key=api_key)
    return policy, policy.get_server_metadata(), "openpi_client.WebsocketClientPolicy"


def request_layout(metadata: dict) -> tuple[list[str], list[str], str | None]:
    """(image request keys, state request keys, prompt request key) from a pirecon server's metadata.

    Without pirecon's metadata (an openpi server), assume openpi's LIBERO client keys.
    """
    obs_map = metadata.get("obs_map")
    if not obs_map:
        return ["observation/image", "observation/wrist_image"], ["observation/state"], "prompt"
    images = [key for key, target in obs_map.items() if target.startswith("observation.image")]
    states = [key for key, target in obs_map.items() if target == "observation.state"]
    prompts = [key for key, target in obs_map.items() if target == "task"]
    return images, states, (prompts[0] if prompts else None)


def read_sensors(images: list[str], states: list[str], state_dim: int, rng: np.random.Generator) -> dict:
    """Stand-in for the robot: (224, 224, 3) uint8 frames and a zero state (split over the state keys)."""
    obs = {key: rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8) for key in images}
    for i, key in enumerate(states):  # several state keys (DROID: joints + gripper) are joined in order
        width = state_dim // len(states) + (1 if i < state_dim % len(states) else 0)
        obs[key] = np.zeros(width, dtype=np.float32)
    return obs


def send_to_robot(action: np.ndarray) -> None:
    """Stand-in for the robot controller: execute one action (robot units)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api_key", default=os.environ.get("PIRECON_SERVE_API_KEY"),
                        help="the server's API key (default: $PIRECON_SERVE_API_KEY)")
    parser.add_argument("--prompt", default="put the bowl on the plate")
    parser.add_argument("--requests", type=int, default=3, help="action chunks to request")
    args = parser.parse_args()

    policy, metadata, client = connect(args.host, args.port, args.api_key)
    images, states, prompt_key = request_layout(metadata)
    state_dim = int(metadata.get("state_dim") or 8)
    n_action_steps = int(metadata.get("n_action_steps") or 5)  # openpi's LIBERO client replans every 5
    print(f"connected with {client}: {metadata.get('policy_type', '?')} policy, action_dim "
          f"{metadata.get('action_dim', '?')}, chunk {metadata.get('chunk_size', '?')}, executing {n_action_steps} "
          f"actions per chunk; request keys {images + states + ([prompt_key] if prompt_key else [])}")
    rng = np.random.default_rng(0)
    for i in range(args.requests):
        obs = read_sensors(images, states, state_dim, rng)
        if prompt_key:
            obs[prompt_key] = args.prompt
        start = time.perf_counter()
        reply = policy.infer(obs)
        actions = np.asarray(reply["actions"])  # (chunk_size, action_dim), robot units
        latency_ms = (time.perf_counter() - start) * 1000
        for action in actions[:n_action_steps]:
            send_to_robot(action)
        infer_ms = reply.get("server_timing", {}).get("infer_ms", float("nan"))
        print(f"request {i + 1}: actions {actions.shape}, first {np.round(actions[0].astype(np.float64), 3).tolist()}, "
              f"round trip {latency_ms:.0f} ms (server inference {infer_ms:.0f} ms)")
    if hasattr(policy, "close"):  # pirecon's PolicyClient; openpi's closes with the process
        policy.close()


if __name__ == "__main__":
    main()
