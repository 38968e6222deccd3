"""The example scripts in examples/ and the cheap commands of docs/*.md, run for real.

Everything runs in one workspace folder that stands in for a user's machine: `data/libero` (a
LeRobot LIBERO-layout dataset), `data/my_robot` (a robot dataset with other camera names, PNG
frames, an 8-d action), `models/` (tiny pi05_base in LeRobot's layout, pi0_base in openpi's, a tiny
tokenizer). The scripts run there with their real-world defaults except for sizes (tiny models,
2 steps); the docs' commands run there with their `/data/...` and `/models/...` paths pointed at the
stand-ins and a few flags appended so that each finishes in seconds (RUN_FLAGS).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from tests.test_docs import ALL_COMMANDS, REPO_ROOT, parse_only

EXAMPLES = REPO_ROOT / "examples"
SCRIPTS = ("finetune_libero_pi05_lora.sh", "finetune_robot_camera_map.sh", "eval_libero.sh", "serve_robot.sh")
VENV_BIN = Path(sys.executable).parent
PIRECON = str(VENV_BIN / "pirecon") if (VENV_BIN / "pirecon").is_file() else f"{sys.executable} -m pirecon"

LIBERO_TASKS = ("pick up the black bowl between the plate and the ramekin and place it on the plate",
                "pick up the black bowl next to the cookie box and place it on the plate",
                "open the top drawer and put the bowl inside")
ROBOT_TASK = "pick up the red cube and put it in the box"
TINY = dict(variant="tiny", image_resolution=28, chunk_size=10, n_action_steps=5, max_state_dim=8, max_action_dim=8)
ROBOT_CAMERA_MAP = {"observation.images.front": "base_0_rgb", "observation.images.wrist": "left_wrist_0_rgb"}


# ---------------------------------------------------------------------------------------------
# Stand-in data and models


def write_libero_dataset(root: Path, episodes: int = 3, frames: int = 10, size: int = 32) -> Path:
    """LeRobot's LIBERO layout (HuggingFaceVLA/libero): image + image2 videos, 8-d state, 7-d action."""
    from pirecon.data.writer import LeRobotWriter

    video = {"dtype": "video", "shape": [size, size, 3], "names": ["height", "width", "channels"]}
    features = {"observation.images.image": video, "observation.images.image2": video,
                "observation.state": {"dtype": "float32", "shape": [8], "names": None},
                "action": {"dtype": "float32", "shape": [7], "names": None}}
    rng = np.random.default_rng(0)
    with LeRobotWriter(root, 10, features, robot_type="panda") as writer:
        for episode in range(episodes):
            for _ in range(frames):
                writer.add_frame({"observation.images.image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                                  "observation.images.image2": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                                  "observation.state": rng.normal(size=8).astype(np.float32),
                                  "action": rng.uniform(-1, 1, size=7).astype(np.float32)},
                                 task=LIBERO_TASKS[episode % len(LIBERO_TASKS)])
            writer.save_episode()
    return root


def write_robot_dataset(root: Path, episodes: int = 3, frames: int = 12) -> Path:
    """A robot's own names: front / wrist / side PNG cameras (24x32), 6-d state, 8-d action (arm + gripper + base)."""
    from pirecon.data.writer import LeRobotWriter

    image = {"dtype": "image", "shape": [24, 32, 3], "names": ["height", "width", "channels"]}
    cameras = ("observation.images.front", "observation.images.wrist", "observation.images.side")
    features = {key: image for key in cameras}
    features["observation.state"] = {"dtype": "float32", "shape": [6], "names": None}
    features["action"] = {"dtype": "float32", "shape": [8], "names": None}
    rng = np.random.default_rng(1)
    with LeRobotWriter(root, 15, features, robot_type="so100") as writer:
        for _ in range(episodes):
            for _ in range(frames):
                frame = {key: rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for key in cameras}
                frame["observation.state"] = rng.normal(size=6).astype(np.float32)
                frame["action"] = rng.normal(size=8).astype(np.float32)
                writer.add_frame(frame, task=ROBOT_TASK)
            writer.save_episode()
    return root


def write_tiny_base(folder: Path, kind: str, layout: str) -> Path:
    """A randomly initialised tiny policy exported to LeRobot's or openpi's folder layout."""
    import pirecon
    from pirecon.checkpoint.write_pirecon import save_policy
    from pirecon.checkpoint.export import export

    source = folder.with_name(folder.name + "_pirecon")
    save_policy(pirecon.load_policy(pirecon.PolicyConfig(type=kind, **TINY)), source)
    return export(source, folder, format=layout)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from pirecon.data.tokenizer import train_tiny_tokenizer
    from pirecon.sim import SimEnv

    ws = tmp_path_factory.mktemp("workspace")
    write_libero_dataset(ws / "data" / "libero")
    write_robot_dataset(ws / "data" / "my_robot")
    (ws / "models").mkdir()
    train_tiny_tokenizer([*LIBERO_TASKS, ROBOT_TASK, "put the bowl on the plate", *SimEnv().all_tasks()],
                         ws / "models" / "tokenizer.model")
    write_tiny_base(ws / "models" / "pi05_base", "pi05", "lerobot")
    write_tiny_base(ws / "models" / "pi0_base", "pi0", "openpi")
    return ws


def script_variables() -> set[str]:
    """The environment variables the example scripts read (`NAME=${NAME...}`)."""
    return {m.group(1) for name in SCRIPTS
            for m in re.finditer(r"^\s*([A-Z_]+)=\$\{\1", (EXAMPLES / name).read_text(), re.MULTILINE)}


def clean_env(**env: str) -> dict[str, str]:
    """os.environ without the scripts' variables (a STEPS=... in the caller's shell must not leak in), plus env."""
    names = script_variables()
    return {**{k: v for k, v in os.environ.items() if k not in names}, "OMP_NUM_THREADS": "1", **env}


def run_script(name: str, cwd: Path, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    full_env = clean_env(PIRECON=PIRECON, **env)
    res = subprocess.run(["bash", str(EXAMPLES / name)], cwd=cwd, env=full_env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"{name} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


def checkpoint_files(run: Path) -> tuple[Path, dict, dict]:
    last = run / "checkpoints" / "last"
    assert last.is_dir(), f"{run} has no checkpoints/last"
    return last, json.loads((last / "config.json").read_text()), json.loads((last / "data_info.json").read_text())


def logged_steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# The scripts' default command lines parse (fast: a recorder stands in for pirecon)


@pytest.fixture
def recorder(tmp_path) -> tuple[str, Path]:
    """An executable that records its command line instead of running pirecon."""
    record = tmp_path / "calls.jsonl"
    script = tmp_path / "record_pirecon"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        argv = sys.argv[1:]
        launcher = []
        if "-m" in argv:  # `$LAUNCH -m pirecon ...`
            i = argv.index("-m")
            launcher, argv = argv[:i], argv[i + 2:]
        with open({str(record)!r}, "a") as f:
            f.write(json.dumps({{"argv": argv, "launcher": launcher}}) + "\\n")
        """))
    script.chmod(0o755)
    return str(script), record


def recorded(name: str, recorder, **env: str) -> list[dict]:
    program, record = recorder
    record.unlink(missing_ok=True)
    res = subprocess.run(["bash", str(EXAMPLES / name)], env=clean_env(PIRECON=program, **env),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_script_variables_are_found():
    assert {"STEPS", "VARIANT", "PRETRAINED", "DATASET", "TOKENIZER", "OUTPUT", "EXTRA_FLAGS", "PIRECON", "CHECKPOINT",
            "PORT", "PRESET", "OBS_MAP", "CAMERA_MAP", "ACTION_DIMS", "LAUNCH"} <= script_variables()


def test_scripts_are_strict_shell_with_the_equivalent_commands_named():
    for name in SCRIPTS:
        text = (EXAMPLES / name).read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text, name
        assert "${PIRECON:-pirecon}" in text and "EXTRA_FLAGS" in text, name
        assert any(other in text for other in ("lerobot-train", "lerobot-eval", "serve_policy.py")), name
        assert os.access(EXAMPLES / name, os.X_OK), f"{name} is not executable"
        subprocess.run(["bash", "-n", str(EXAMPLES / name)], check=True)


def test_finetune_libero_defaults_are_a_real_run(recorder):
    calls = recorded("finetune_libero_pi05_lora.sh", recorder)
    assert [c["argv"][0] for c in calls] == ["doctor", "train"]
    assert parse_only(calls[0]["argv"]).dataset.root == "/data/libero"
    cfg = parse_only(calls[1]["argv"])
    # openpi's pi05_libero recipe (the preset) ...
    assert (cfg.preset, cfg.policy.type, cfg.policy.pretrained_path, cfg.policy.dtype) == (
        "pi05_libero", "pi05", "/models/pi05_base", "bfloat16")
    assert (cfg.policy.chunk_size, cfg.policy.optimizer_lr, cfg.policy.scheduler_warmup_steps, cfg.steps) == (
        10, 5e-5, 10_000, 30_000)
    assert (cfg.policy.loss_reduction, cfg.dataset.image_transforms.recipe, cfg.policy.normalization_mode) == (
        "all", "openpi", "quantile")
    assert cfg.dataset.image_transforms.enable and cfg.policy.use_dataset_stats
    # ... with LoRA as openpi's LoRA configs (ranks 16 / 32, no EMA), 32 per process, LeRobot's camera keys.
    assert cfg.policy.use_peft and cfg.policy.gradient_checkpointing
    assert (cfg.peft.preset, cfg.peft.r, cfg.ema_decay, cfg.batch_size) == ("openpi", None, None, 32)
    assert cfg.dataset.camera_map == {"observation.images.image": "base_0_rgb",
                                      "observation.images.image2": "left_wrist_0_rgb"}
    assert cfg.output_dir == "outputs/pi05_libero_lora" and cfg.policy.variant is None

    # Random weights of a variant, no doctor, several processes, extra flags with shell quoting.
    calls = recorded("finetune_libero_pi05_lora.sh", recorder, PRETRAINED="", VARIANT="tiny", CHECK_DATASET="false",
                     LAUNCH=f"{recorder[0]} launch --num_processes 8",
                     EXTRA_FLAGS="--ema_decay=0.999 --recon.views='[base_0_rgb, left_wrist_0_rgb]'")
    assert len(calls) == 1 and calls[0]["launcher"] == ["launch", "--num_processes", "8"]
    cfg = parse_only(calls[0]["argv"])
    assert (cfg.policy.variant, cfg.policy.pretrained_path, cfg.ema_decay) == ("tiny", None, 0.999)
    assert cfg.recon.views == ("base_0_rgb", "left_wrist_0_rgb")


def test_finetune_robot_defaults_are_a_real_run(recorder):
    calls = recorded("finetune_robot_camera_map.sh", recorder)
    assert [c["argv"][0] for c in calls] == ["doctor", "train"]
    cfg = parse_only(calls[1]["argv"])
    assert (cfg.preset, cfg.policy.type, cfg.policy.pretrained_path, cfg.policy.use_peft) == (
        "pi0_libero_low_mem_finetune", "pi0", "/models/pi0_base", True)
    assert (cfg.peft.preset, cfg.ema_decay, cfg.policy.dtype, cfg.batch_size) == ("openpi", None, "bfloat16", 32)
    assert cfg.dataset.camera_map == ROBOT_CAMERA_MAP
    assert (cfg.dataset.action_dims, cfg.dataset.state_dims, cfg.steps) == (None, None, 30000)
    calls = recorded("finetune_robot_camera_map.sh", recorder, ACTION_DIMS="[0,1,2,3,4,5,6]", STATE_DIMS="[0,1]",
                     USE_PEFT="false", DTYPE="float32", CAMERA_MAP='{"top": "base_0_rgb"}')
    cfg = parse_only(calls[1]["argv"])
    assert (cfg.dataset.action_dims, cfg.dataset.state_dims) == ([0, 1, 2, 3, 4, 5, 6], [0, 1])
    assert (cfg.policy.use_peft, cfg.policy.dtype, cfg.dataset.camera_map) == (False, "float32", {"top": "base_0_rgb"})
    assert (cfg.preset, cfg.ema_decay) == ("pi0_libero", 0.99)  # openpi's full fine-tune keeps an EMA


def test_eval_libero_defaults_are_the_standard_protocol(recorder):
    (call,) = recorded("eval_libero.sh", recorder)
    (cfg,), _ = parse_only(call["argv"])
    assert (cfg.env.type, cfg.env.task, cfg.eval.n_episodes, cfg.policy.n_action_steps) == ("libero", "libero_spatial",
                                                                                          500, 5)
    assert cfg.env.options == {"image_key": "observation.images.image", "wrist_image_key": "observation.images.image2"}
    assert (cfg.policy.path, cfg.policy.device) == ("outputs/pi05_libero_lora/checkpoints/last", "auto")
    assert cfg.output_dir == "outputs/eval/libero_spatial"
    (call,) = recorded("eval_libero.sh", recorder, SUITE="libero_10/3", MAX_STEPS="30", DEVICE="cpu")
    (cfg,), _ = parse_only(call["argv"])
    assert (cfg.env.task, cfg.env.options["max_steps"], cfg.policy.device) == ("libero_10/3", "30", "cpu")
    assert cfg.output_dir == "outputs/eval/libero_10_3"


def test_serve_defaults_match_the_libero_fine_tune(recorder):
    (call,) = recorded("serve_robot.sh", recorder)
    (cfg,), _ = parse_only(call["argv"])
    assert (cfg.serve.preset, cfg.policy.device, cfg.port, cfg.host) == ("libero", "cuda", 8000, "127.0.0.1")
    assert cfg.serve.obs_map == {"observation/wrist_image": "observation.images.image2"}
    (call,) = recorded("serve_robot.sh", recorder, PRESET="aloha", NUM_STEPS="5")
    (cfg,), _ = parse_only(call["argv"])
    assert (cfg.serve.preset, cfg.serve.obs_map, cfg.policy.num_inference_steps) == ("aloha", {}, 5)


# ---------------------------------------------------------------------------------------------
# The scripts, run for real with tiny models and 2 steps


# The presets name the full-size models: the tiny stand-ins type their own sizes over them.
TINY_FLAGS = "--policy.variant=tiny --policy.image_resolution=28 --policy.max_state_dim=8 --policy.max_action_dim=8"
FAST = dict(STEPS="2", BATCH_SIZE="2", NUM_WORKERS="0", LOG_FREQ="1", EXTRA_FLAGS=f"--progress_bar=false {TINY_FLAGS}")


@pytest.fixture(scope="module")
def libero_run(workspace) -> Path:
    ws = workspace
    res = run_script("finetune_libero_pi05_lora.sh", ws, DATASET=str(ws / "data/libero"),
                     PRETRAINED=str(ws / "models/pi05_base"), TOKENIZER=str(ws / "models/tokenizer.model"), **FAST)
    assert "0 error(s)" in res.stdout  # pirecon doctor ran first
    return ws / "outputs" / "pi05_libero_lora"  # the script's default OUTPUT, relative to the workspace


@pytest.fixture(scope="module")
def robot_run(workspace) -> Path:
    ws = workspace
    launch = (f"{VENV_BIN / 'accelerate'} launch --num_processes 1 --num_machines 1 --mixed_precision no "
              f"--dynamo_backend no")
    run_script("finetune_robot_camera_map.sh", ws, DATASET=str(ws / "data/my_robot"),
               PRETRAINED=str(ws / "models/pi0_base"), TOKENIZER=str(ws / "models/tokenizer.model"),
               ACTION_DIMS="[0,1,2,3,4,5,6]", VAL_EPISODES="1", LAUNCH=launch, **FAST)
    return ws / "outputs" / "my_robot_pi0"


@pytest.fixture(scope="module")
def recon_run(workspace) -> Path:
    ws = workspace
    run_script("finetune_robot_camera_map.sh", ws, DATASET=str(ws / "data/my_robot"),
               PRETRAINED=str(ws / "models/pi0_base"), TOKENIZER=str(ws / "models/tokenizer.model"),
               OUTPUT="outputs/my_robot_recon", CHECK_DATASET="false",
               **{**FAST, "EXTRA_FLAGS": f"--progress_bar=false {TINY_FLAGS} --recon.enable=true --recon.weight=0.5 "
                                         "--recon.views='[base_0_rgb,left_wrist_0_rgb]'"})
    return ws / "outputs" / "my_robot_recon"


@pytest.fixture(scope="module")
def lerobot_finetuned(workspace, libero_run) -> Path:
    """`/models/pi05_libero` of the docs: a fine-tuned LeRobot folder with statistics."""
    from pirecon.checkpoint.export import export
    return export(libero_run / "checkpoints" / "last", workspace / "models" / "pi05_libero", format="lerobot")


@pytest.mark.slow
def test_finetune_libero_pi05_lora(libero_run, workspace):
    last, config, info = checkpoint_files(libero_run)
    assert [r["step"] for r in logged_steps(libero_run)] == [1, 2]
    assert (last / "adapter").is_dir() and (last / "trainable.safetensors").is_file()  # LoRA, base referenced
    policy = config["policy"]
    assert (policy["type"], policy["dtype"], policy["gradient_checkpointing"]) == ("pi05", "bfloat16", True)
    assert policy["pretrained_path"] == str(workspace / "models" / "pi05_base")
    assert info["camera_map"] == {"observation.images.image": "base_0_rgb",
                                  "observation.images.image2": "left_wrist_0_rgb"}
    assert (info["action_dim"], info["normalization_mode"]) == (7, "quantile")  # the dataset's statistics


@pytest.mark.slow
def test_finetune_robot_camera_map_under_accelerate(robot_run, workspace):
    last, config, info = checkpoint_files(robot_run)
    assert [r["step"] for r in logged_steps(robot_run)] == [1, 2]
    assert config["policy"]["type"] == "pi0" and config["policy"]["pretrained_path"] == str(workspace / "models/pi0_base")
    assert info["camera_map"] == ROBOT_CAMERA_MAP
    assert (info["action_dims"], info["action_dim"], info["normalization_mode"]) == ([0, 1, 2, 3, 4, 5, 6], 7,
                                                                                   "mean_std")
    assert config["train"]["dataset"]["val_episodes"] == 1


@pytest.mark.slow
def test_finetune_robot_with_reconstruction(recon_run):
    rows = logged_steps(recon_run)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert math.isfinite(row["recon_loss"])
        assert row["loss"] == pytest.approx(row["action_loss"] + 0.5 * row["recon_loss"], rel=1e-4)
    _, config, _ = checkpoint_files(recon_run)
    assert config["train"]["recon"]["views"] == ["base_0_rgb", "left_wrist_0_rgb"]


def libero_missing() -> str | None:
    from pirecon.eval.libero import libero_available
    return libero_available()


@pytest.mark.slow
def test_eval_libero(libero_run, workspace):
    missing = libero_missing()
    if missing is not None:
        pytest.skip(f"LIBERO is not installed here ({missing}); the script's command line is checked by "
                    f"test_eval_libero_defaults_are_the_standard_protocol")
    run_script("eval_libero.sh", workspace, EPISODES="1", MAX_STEPS="3", REPLAN_STEPS="2", VIDEOS="1", DEVICE="cpu",
               OUTPUT="outputs/eval/example",
               EXTRA_FLAGS="--env.camera_size=64 --env.settle_steps=1 --eval.progress_bar=false")
    summary = json.loads((workspace / "outputs/eval/example/summary.json").read_text())
    assert summary["episodes"] == 1 and summary["env"]["type"] == "libero"
    assert summary["checkpoint"] == str((libero_run / "checkpoints" / "last").resolve())
    assert 1 <= json.loads((workspace / "outputs/eval/example/episodes.jsonl").read_text())["steps"] <= 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_robot_and_the_client(libero_run, workspace, tmp_path):
    from pirecon.serve.client import PolicyClient
    from pirecon.serve.obs_map import example_request

    port = free_port()
    log_path = tmp_path / "serve.log"
    env = clean_env(PIRECON=PIRECON, DEVICE="cpu", HOST="127.0.0.1", PORT=str(port))
    with open(log_path, "w") as log:
        server = subprocess.Popen(["bash", str(EXAMPLES / "serve_robot.sh")], cwd=workspace, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, f"the server exited ({server.returncode}):\n{log_path.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                    assert reply.status == 200
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert time.monotonic() < deadline, f"no /healthz answer:\n{log_path.read_text()[-4000:]}"
                time.sleep(0.5)

        with PolicyClient(f"ws://127.0.0.1:{port}") as client:
            meta = client.metadata
            assert meta["camera_keys"] == ["observation.images.image", "observation.images.image2"]
            assert meta["obs_map"]["observation/wrist_image"] == "observation.images.image2"
            actions = np.asarray(client.infer(example_request("libero"))["actions"])
        assert actions.shape == (10, 7) and np.isfinite(actions).all()

        res = subprocess.run([sys.executable, str(EXAMPLES / "robot_client.py"), "--host", "127.0.0.1", "--port",
                              str(port), "--requests", "2"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, res.stderr[-3000:]
        assert "connected with" in res.stdout and "request 2: actions (10, 7)" in res.stdout, res.stdout
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # Ctrl-C: the script exec'd the server, so this is its pid
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    assert "stopped after 3 replies" in log_path.read_text(), log_path.read_text()[-3000:]


# ---------------------------------------------------------------------------------------------
# The docs' cheap commands, run on the stand-ins


def placeholders(ws: Path) -> dict[str, str]:
    return {"/data/libero": str(ws / "data/libero"), "/data/my_robot": str(ws / "data/my_robot"),
            "/models/pi05_base": str(ws / "models/pi05_base"), "/models/pi0_base": str(ws / "models/pi0_base"),
            "/models/pi05_libero": str(ws / "models/pi05_libero"),
            "/models/paligemma_tokenizer.model": str(ws / "models/tokenizer.model")}


# Appended to a doc command (later flags win) so that it runs in seconds.
RUN_FLAGS = {
    "demo": ["--episodes=2", "--steps=2", "--eval_episodes=1"],
    "sim record": ["--episodes=2", "--image_size=32"],
    "sim preview": ["--image_size=32"],
    "eval": ["--eval.n_episodes=1", "--eval.max_videos=1", "--eval.progress_bar=false", "--policy.device=cpu"],
    "eval libero": ["--env.max_steps=3", "--env.camera_size=64", "--env.settle_steps=1"],
    "eval-offline": ["--max_samples=4", "--progress_bar=false", "--policy.device=cpu"],
    "recon-viz": ["--frames=2", "--steps=2"],
}
# Not run from the docs: the example scripts run the same commands (train, serve) or they need the network.
NOT_RUN = {"train": "run through examples/finetune_*.sh", "serve": "run through examples/serve_robot.sh",
           "push": "needs the network and a Hub token"}
# What each page's commands read besides the stand-in data.
PAGE_NEEDS = {"finetune-libero.md": ["libero_run"], "finetune-your-robot.md": ["robot_run"],
              "reconstruction.md": ["recon_run"], "migrating.md": ["libero_run", "lerobot_finetuned"],
              "serving.md": [], "lora-and-memory.md": [], "getting-started.md": [], "multi-gpu.md": []}


def runnable(argv: list[str]) -> tuple[list[str] | None, str | None]:
    """(argv with RUN_FLAGS appended, None) or (None, why it is not run)."""
    name = argv[0]
    if name in NOT_RUN:
        return None, NOT_RUN[name]
    extra = list(RUN_FLAGS.get(name, []))
    if name == "sim":
        extra = list(RUN_FLAGS.get(f"sim {argv[1]}", []))
    if name == "eval" and "--env.type=libero" in argv:
        missing = libero_missing()
        if missing is not None:
            return None, f"LIBERO unavailable: {missing}"
        extra += RUN_FLAGS["eval libero"]
    return [*argv, *extra], None


def test_every_doc_page_is_planned():
    pages = {c.page.name for c in ALL_COMMANDS if c.page.parent.name == "docs" and c.kind == "pirecon"}
    assert pages <= set(PAGE_NEEDS), f"add {sorted(pages - set(PAGE_NEEDS))} to PAGE_NEEDS"


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(PAGE_NEEDS))
def test_doc_commands_run(page, workspace, request, monkeypatch):
    from pirecon.cli import main

    for fixture in PAGE_NEEDS[page]:
        request.getfixturevalue(fixture)
    monkeypatch.chdir(workspace)
    commands = [c for c in ALL_COMMANDS if c.page.name == page and c.page.parent.name == "docs"
                and c.kind == "pirecon"]
    ran, skipped = [], []
    for command in commands:
        argv = command.pirecon_argv
        stand_ins = placeholders(workspace)
        unmapped = [m for t in argv for m in re.findall(r"(?:^|=)(/(?:data|models)/[\w.-]+)", t) if m not in stand_ins]
        assert not unmapped, f"{command}: no stand-in for {unmapped}; add it to placeholders()"
        for placeholder, path in stand_ins.items():
            argv = [token.replace(placeholder, path) for token in argv]
        argv, why = runnable(argv)
        if argv is None:
            skipped.append(f"{command} ({why})")
            continue
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(argv)
        assert code == 0, f"{command}\n`pirecon {shlex.join(argv)}` exited with {code}:\n" \
                          f"{out.getvalue()[-2000:]}\n{err.getvalue()[-3000:]}"
        ran.append(str(command))
    if not ran:
        pytest.skip(f"{page}: nothing cheap to run; {skipped}")
