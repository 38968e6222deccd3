import os
import signal
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from pirecon.serve.client import PolicyClient, ServerError
from pirecon.serve.obs_map import PRESETS, example_request, lookup
from pirecon.serve.server import serve_in_thread
from pirecon.serve.wire import packb, unpackb
from tests.serve.helpers import make_checkpoint, reference_runner, server_for

# openpi's LIBERO client keys, retargeted onto the simulator dataset the checkpoint was trained on.
RETARGET = {"observation/image": "top", "observation/wrist_image": "observation.images.wrist"}
SIM_CAMERAS = ["observation.images.top", "observation.images.wrist"]


def libero_request(seed: int) -> dict:
    return example_request("libero", seed=seed, state_dims={"observation/state": 3}, prompt="reach the red block")


def sim_obs(request: dict) -> dict:
    """The same observation written by hand in the dataset's keys (images stay (H, W, 3))."""
    return {"observation.images.top": request["observation/image"],
            "observation.images.wrist": request["observation/wrist_image"],
            "observation.state": request["observation/state"], "task": request["prompt"]}


def healthz(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url.replace("ws://", "http://") + "/healthz", timeout=timeout) as response:
        return response.status, response.read().decode()


def test_round_trip_matches_policy_runner(trained_checkpoint):
    server = server_for(trained_checkpoint, preset="libero", obs_map=RETARGET, seed=3)
    requests = [libero_request(i) for i in range(3)]
    requests[1]["observation/image"] = np.ascontiguousarray(requests[1]["observation/image"].transpose(2, 0, 1))
    with serve_in_thread(server) as url, PolicyClient(url) as client:
        meta = client.metadata
        replies = [client.infer(r) for r in requests]
    assert meta["server"] == "pirecon" and meta["policy_type"] == "pi0" and meta["preset"] == "libero"
    assert (meta["action_dim"], meta["chunk_size"], meta["action_horizon"], meta["n_action_steps"]) == (3, 4, 4, 2)
    assert meta["camera_keys"] == SIM_CAMERAS and meta["state_dim"] == 3
    assert meta["obs_map"] == {"observation/image": "observation.images.top",
                               "observation/wrist_image": "observation.images.wrist",
                               "observation/state": "observation.state", "prompt": "task"}
    runner = reference_runner(trained_checkpoint, seed=3)
    for i, (request, reply) in enumerate(zip(requests, replies)):
        expected = runner.predict_chunk(sim_obs(libero_request(i)))  # (chunk_size, real action dim), robot units
        assert reply["actions"].shape == (4, 3) and reply["actions"].dtype == np.float32
        np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5, atol=1e-5)
        assert reply["server_timing"]["infer_ms"] > 0
        assert ("prev_total_ms" in reply["server_timing"]) == (i > 0)
    assert not np.allclose(replies[0]["actions"], replies[2]["actions"])


@pytest.mark.parametrize("preset, state_dim, action_dim", [("libero", 8, 7), ("aloha", 14, 14), ("droid", 8, 7)])
def test_presets_end_to_end(tmp_path, sim_tokenizer, preset, state_dim, action_dim):
    """A checkpoint trained on each robot's dataset keys serves that robot's openpi client as is."""
    fields = PRESETS[preset].fields
    cameras = [f.target for f in fields if f.kind == "image"]
    checkpoint = make_checkpoint(tmp_path / preset, sim_tokenizer, cameras, state_dim, action_dim)
    request = example_request(preset, seed=5)
    with serve_in_thread(server_for(checkpoint, preset=preset)) as url, PolicyClient(url) as client:
        assert client.metadata["camera_keys"] == cameras
        reply = client.infer(request)
    obs = {f.target: lookup(request, f.key) for f in fields if f.kind == "image"}  # raw layout (ALOHA: CHW)
    obs["observation.state"] = np.concatenate([lookup(request, f.key) for f in fields if f.kind == "state"])
    obs["task"] = request["prompt"]
    expected = reference_runner(checkpoint).predict_chunk(obs)
    assert reply["actions"].shape == (4, action_dim)
    np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5, atol=1e-5)


def test_healthz(trained_checkpoint):
    with serve_in_thread(server_for(trained_checkpoint, preset="libero", obs_map=RETARGET)) as url:
        assert healthz(url) == (200, "OK\n")
        with pytest.raises(urllib.error.HTTPError) as info:  # elsewhere a plain GET is not a websocket upgrade
            urllib.request.urlopen(url.replace("ws://", "http://") + "/", timeout=5)
        info.value.close()  # else the server waits out its close timeout for this socket when stopping
        assert info.value.code == 426


def test_api_key_is_required_when_set_and_healthz_stays_open(trained_checkpoint):
    from websockets.exceptions import InvalidStatus

    server = server_for(trained_checkpoint, preset="libero", obs_map=RETARGET, api_key="s3cret key")
    with serve_in_thread(server) as url:
        for key in (None, "wrong", "s3cret"):
            with pytest.raises(InvalidStatus) as refused:
                PolicyClient(url, api_key=key)
            assert refused.value.response.status_code == 401
            assert b"Api-Key" in refused.value.response.body
        with PolicyClient(url, api_key="s3cret key") as client:
            assert client.infer(libero_request(0))["actions"].shape == (4, 3)
        assert healthz(url) == (200, "OK\n")
    assert server.served == 1


def test_a_non_finite_output_becomes_an_error_frame(trained_checkpoint):
    server = server_for(trained_checkpoint, preset="libero", obs_map=RETARGET)
    predict = server.runner.predict_chunk
    server.runner.predict_chunk = lambda obs: predict(obs) * np.array([1.0, np.nan, 1.0], np.float32)
    with serve_in_thread(server) as url, PolicyClient(url) as client:
        with pytest.raises(ServerError, match="bad request: the policy produced non-finite actions"):
            client.infer(libero_request(0))
    assert (server.served, server.rejected) == (0, 1)


def test_event_loop_is_not_blocked_by_inference(trained_checkpoint):
    server = server_for(trained_checkpoint, preset="libero", obs_map=RETARGET)
    entered, release = threading.Event(), threading.Event()
    predict = server.runner.predict_chunk

    def slow_predict(obs):
        entered.set()
        assert release.wait(30)
        return predict(obs)

    server.runner.predict_chunk = slow_predict
    replies = []
    with serve_in_thread(server) as url:
        with PolicyClient(url) as first:
            worker = threading.Thread(target=lambda: replies.append(first.infer(libero_request(0))))
            worker.start()
            assert entered.wait(30)
            # Inference is stuck in the worker thread: health checks and new clients still get answers.
            start = time.monotonic()
            assert healthz(url, timeout=2) == (200, "OK\n")
            with PolicyClient(url, timeout=2) as second:
                assert second.metadata["chunk_size"] == 4
            assert time.monotonic() - start < 2
            assert not replies
            release.set()
            worker.join(30)
    assert replies and replies[0]["actions"].shape == (4, 3)


def _malformed(i: int) -> tuple[object, str]:
    """(frame to send, text the error must contain) — 9 kinds of bad request, in turn."""
    good = libero_request(i)
    kind = i % 9
    if kind == 0:
        return b"\xc1" + bytes([i % 256]), "not valid msgpack"
    if kind == 1:
        return "observation as text", "text frame"
    if kind == 2:
        key = ["observation/image", "observation/wrist_image", "observation/state", "prompt"][i % 4]
        del good[key]
        return packb(good), f"the request has no {key!r}"
    if kind == 3:
        good["observation/image"] = good["observation/image"][..., 0]
        return packb(good), "'observation/image' has shape (224, 224); expected an image"
    if kind == 4:
        good["observation/state"] = np.zeros(5, np.float32)
        return packb(good), "'observation/state' has shape (5,); the checkpoint expects observation.state with 3 dims"
    if kind == 5:
        good["observation/wrist_image"] = good["observation/wrist_image"].astype(np.float64)
        return packb(good), "'observation/wrist_image' has dtype float64; expected uint8"
    if kind == 7:  # finite but absurd: the model's answer would be NaN (it was, before the check)
        good["observation/state"] = np.array([1e38, -1e38, 0.0])
        return packb(good), "observation.state dims [0, 1] (1e+38, -1e+38) lie beyond 10000 normalised units"
    if kind == 8:
        good["observation/image"] = np.zeros((1, 20000, 3), np.uint8)
        return packb(good), "'observation/image' has shape (1, 20000, 3); expected at most 4096 pixels a side"
    return packb([1, 2, 3]), "a request must be a msgpack map"


def test_malformed_requests_get_an_error_frame_and_the_server_keeps_serving(trained_checkpoint):
    server = server_for(trained_checkpoint, preset="libero", obs_map=RETARGET)
    with serve_in_thread(server) as url:
        for i in range(200):
            frame, fragment = _malformed(i)
            with connect(url, compression=None, max_size=None) as ws:
                unpackb(ws.recv(10))  # metadata
                ws.send(frame)
                error = ws.recv(10)
                assert isinstance(error, str) and error.startswith("bad request: "), (i, error)
                assert fragment in error, (i, error)
                with pytest.raises(ConnectionClosedError) as closed:
                    ws.recv(10)
                assert closed.value.rcvd.code == 1011
        assert server.rejected == 200
        with PolicyClient(url) as client:
            assert client.infer(libero_request(0))["actions"].shape == (4, 3)
            # Our client turns the error frame into an exception naming the problem.
            bad = libero_request(1)
            del bad["prompt"]
            with pytest.raises(ServerError, match="the request has no 'prompt'"):
                client.infer(bad)
        assert healthz(url)[0] == 200
    assert server.served == 1


def test_concurrent_clients_get_their_own_replies(trained_checkpoint):
    server = server_for(trained_checkpoint, preset="libero", obs_map=RETARGET, seed=7, reseed=True)
    n_clients, n_requests = 4, 3
    requests = {(c, k): libero_request(10 * c + k) for c in range(n_clients) for k in range(n_requests)}
    replies, errors = {}, []
    barrier = threading.Barrier(n_clients)

    def client_loop(c: int, url: str) -> None:
        try:
            with PolicyClient(url) as client:
                barrier.wait(30)
                for k in range(n_requests):
                    replies[c, k] = client.infer(requests[c, k])["actions"]
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with serve_in_thread(server) as url:
        threads = [threading.Thread(target=client_loop, args=(c, url)) for c in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors and len(replies) == n_clients * n_requests
    assert server.served == n_clients * n_requests
    runner = reference_runner(trained_checkpoint)
    for key, request in requests.items():
        runner.generator.manual_seed(7)  # --serve.reseed_each_request: the reply depends on the observation only
        np.testing.assert_allclose(replies[key], runner.predict_chunk(sim_obs(request)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(replies[0, 0], replies[1, 0])


def test_ctrl_c_stops_the_server_cleanly(trained_checkpoint):
    """`PolicyServer.run` (the CLI's loop) handles SIGINT itself and returns."""
    server = server_for(trained_checkpoint, preset="libero", obs_map=RETARGET)
    outcome = {}

    def ready(host: str, port: int) -> None:
        def drive() -> None:
            try:
                with PolicyClient(f"ws://127.0.0.1:{port}") as client:
                    outcome["shape"] = client.infer(libero_request(0))["actions"].shape
            finally:
                os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=drive, daemon=True).start()

    previous = signal.getsignal(signal.SIGINT)
    server.run(ready)  # returns only once SIGINT has stopped it
    assert signal.getsignal(signal.SIGINT) == previous
    assert outcome["shape"] == (4, 3) and server.served == 1


def test_real_time_chunking_keys_guide_the_reply_and_are_checked(trained_checkpoint):
    server = server_for(trained_checkpoint, preset="libero", obs_map=RETARGET, seed=3, reseed=True)
    with serve_in_thread(server) as url, PolicyClient(url) as client:
        plain = client.infer(libero_request(0))["actions"]  # (4, 3)
        target = plain[:3] + 0.5  # "the previous chunk's remaining actions", away from the plain answer
        guided = client.infer({**libero_request(0), "prev_actions": target, "inference_delay": 2})["actions"]
        assert np.abs(guided[:2] - target[:2]).mean() < 0.5 * np.abs(plain[:2] - target[:2]).mean()
        assert np.array_equal(client.infer(libero_request(0))["actions"], plain)  # without the keys: as before
        with pytest.raises(ServerError, match=r"'prev_actions' has shape \(3, 5\); expected finite \(1..4, 3\)"):
            client.infer({**libero_request(0), "prev_actions": np.zeros((3, 5), np.float32)})
    with serve_in_thread(server) as url, PolicyClient(url) as client:
        with pytest.raises(ServerError, match=r"'inference_delay' is 9; expected an integer in 0..3"):
            client.infer({**libero_request(0), "prev_actions": target, "inference_delay": 9})


def test_trained_real_time_chunking_keeps_the_delayed_actions(tmp_path, sim_tokenizer):
    """--policy.rtc_mode=trained on a checkpoint trained with rtc_training_max_delay=2: the reply's first
    inference_delay actions are prev_actions' (up to the normalisation round trip); execution_horizon
    plays no part; a delay past the trained range is a named error; a plain request is unchanged."""
    from pirecon.errors import ConfigError

    fields = PRESETS["libero"].fields
    cameras = [f.target for f in fields if f.kind == "image"]
    checkpoint = make_checkpoint(tmp_path / "rtc", sim_tokenizer, cameras, 8, 7, rtc_training_max_delay=2)
    request = example_request("libero", seed=5)
    previous = np.linspace(-1, 1, 21, dtype=np.float32).reshape(3, 7)
    with serve_in_thread(server_for(checkpoint, preset="libero", reseed=True, rtc_mode="trained")) as url, \
            PolicyClient(url) as client:
        assert (client.metadata["rtc_mode"], client.metadata["rtc_training_max_delay"]) == ("trained", 2)
        plain = client.infer(request)["actions"]
        held = client.infer({**request, "prev_actions": previous, "inference_delay": 2})["actions"]
        np.testing.assert_allclose(held[:2], previous[:2], rtol=1e-4, atol=1e-4)
        assert np.abs(plain[:2] - previous[:2]).max() > 0.1  # not so without the keys
        with_horizon = client.infer({**request, "prev_actions": previous, "inference_delay": 2,
                                     "execution_horizon": 1})["actions"]
        assert np.array_equal(with_horizon, held)
        assert np.array_equal(client.infer(request)["actions"], plain)
        with pytest.raises(ServerError, match=r"'inference_delay' is 3; expected an integer in 0..2 \(this server's "
                                              r"policy was trained with delays up to 2\)"):
            client.infer({**request, "prev_actions": previous, "inference_delay": 3})
    plain_checkpoint = make_checkpoint(tmp_path / "plain", sim_tokenizer, cameras, 8, 7)
    with pytest.raises(ConfigError, match=r"--policy.rtc_mode=trained: .* was trained without training-time real-time "
                                          r"chunking \(rtc_training_max_delay=0\)"):
        server_for(plain_checkpoint, preset="libero", rtc_mode="trained")
    assert server_for(plain_checkpoint, preset="libero").metadata["rtc_mode"] == "guided"
