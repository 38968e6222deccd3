"""The real openpi_client (its own virtualenv: it pins numpy<2) against `pirecon serve` run from the CLI."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.serve.helpers import make_checkpoint, reference_runner

OPENPI_CLIENT = "openpi-client==0.1.2"
# websocket_client_policy imports typing_extensions, which openpi-client 0.1.2 does not declare.
UNDECLARED = ("typing_extensions",)

# Run with the venv's python: openpi's LIBERO example client, as in examples/libero/main.py.
CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from openpi_client import image_tools, websocket_client_policy

    host, port, out, api_key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    try:  # without the server's API key the handshake is refused
        websocket_client_policy.WebsocketClientPolicy(host=host, port=port)
        refused = None
    except Exception as exc:
        refused = str(exc)
    policy = websocket_client_policy.WebsocketClientPolicy(host=host, port=port, api_key=api_key)
    rng = np.random.default_rng(0)
    frame = lambda: rng.integers(0, 256, size=(256, 320, 3), dtype=np.uint8)
    obs = {
        "observation/image": image_tools.convert_to_uint8(image_tools.resize_with_pad(frame(), 224, 224)),
        "observation/wrist_image": image_tools.convert_to_uint8(image_tools.resize_with_pad(frame(), 224, 224)),
        "observation/state": np.concatenate([rng.standard_normal(7), [0.04]]),  # float64, as LIBERO's client sends
        "prompt": "put the bowl on the plate",
    }
    result = policy.infer(obs)
    np.savez(out, image=obs["observation/image"], wrist_image=obs["observation/wrist_image"],
             state=obs["observation/state"], actions=result["actions"])
    try:
        policy.infer({"observation/image": obs["observation/image"], "prompt": "x"})
        error = None
    except RuntimeError as exc:  # the client's reaction to the server's error frame
        error = str(exc)
    print(json.dumps({"metadata": policy.get_server_metadata(), "timing": result["server_timing"],
                      "dtype": str(result["actions"].dtype), "error": error, "refused": refused}))
""")


@pytest.fixture(scope="session")
def openpi_python(tmp_path_factory) -> Path:
    """A fresh virtualenv with openpi-client from PyPI, built once per test session."""
    venv = tmp_path_factory.mktemp("openpi_client_venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", OPENPI_CLIENT, *UNDECLARED],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.skip(f"pip could not install {OPENPI_CLIENT} into a fresh virtualenv (no PyPI?): "
                    f"{result.stderr.strip()[-800:]}")
    return python


def _start_server(argv: list[str], timeout: float = 180.0) -> tuple[subprocess.Popen, int, queue.Queue]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pirecon", "serve", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)], daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        match = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", line)
        if match:
            return proc, int(match.group(1)), lines
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(seen))


@pytest.mark.slow
def test_openpi_websocket_client_policy_unchanged(openpi_python, sim_tokenizer, tmp_path):
    cameras = ["observation.images.image", "observation.images.image2"]
    checkpoint = make_checkpoint(tmp_path / "libero_like", sim_tokenizer, cameras, state_dim=8, action_dim=7)
    proc, port, lines = _start_server([f"--policy.path={checkpoint}", "--host", "127.0.0.1", "--port", "0",
                                       "--serve.preset=libero", "--seed=11", "--serve.api_key=k-123"])
    try:
        script = tmp_path / "client.py"
        script.write_text(CLIENT_SCRIPT)
        out = tmp_path / "sent.npz"
        client = subprocess.run([str(openpi_python), str(script), "127.0.0.1", str(port), str(out), "k-123"],
                                capture_output=True, text=True, timeout=300)
        assert client.returncode == 0, client.stderr
        report = json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    log = []
    while (line := lines.get(timeout=10)) is not None:
        log.append(line)
    assert proc.returncode == 0, "".join(log)
    assert "pirecon serve: stopped after 1 replies and 1 error frames" in "".join(log)

    assert "HTTP 401" in report["refused"], report["refused"]
    meta = report["metadata"]
    assert meta["preset"] == "libero" and meta["action_dim"] == 7 and meta["chunk_size"] == 4
    assert meta["obs_map"]["observation/image"] == "observation.images.image"
    assert report["dtype"] == "float32" and report["timing"]["infer_ms"] > 0
    assert "Error in inference server" in report["error"]
    assert "the request has no 'observation/wrist_image'" in report["error"]

    sent = np.load(out)
    obs = {"observation.images.image": sent["image"], "observation.images.image2": sent["wrist_image"],
           "observation.state": sent["state"], "task": "put the bowl on the plate"}
    expected = reference_runner(checkpoint, seed=11).predict_chunk(obs)
    assert sent["actions"].shape == (4, 7)
    np.testing.assert_allclose(sent["actions"], expected, rtol=1e-5, atol=1e-5)
