"""Shared test fixtures. `../shared` (beside the checkout) holds real data and the tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

# Tiny models are dominated by per-op overhead: one thread per process is as fast and avoids
# oversubscribing a small machine when tests start subprocesses or DataLoader workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "REFERENCE.md").is_file():
        pytest.skip(f"{SHARED} is absent: tests that need the shared fixtures and tokenizer are skipped")
    return SHARED


@pytest.fixture(scope="session")
def gr00t_fixture(shared_dir) -> Path:
    path = shared_dir / "fixtures" / "gr00t_pick_n_place"
    if not (path / "meta" / "info.json").is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def gemma_tokenizer_path(shared_dir) -> Path:
    path = shared_dir / "assets" / "gemma_tokenizer.model"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fresh_accelerator():
    """A clean accelerate state around the test: accelerate allows one mixed-precision setting per
    process, so a bfloat16 run beside float32 ones needs its state reset before and after."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def sim_dataset(tmp_path_factory) -> Path:
    """A small LeRobot v3.0 dataset of expert demos from the built-in simulator (32x32 cameras)."""
    from pirecon.sim import record_dataset
    return record_dataset(tmp_path_factory.mktemp("sim") / "data", episodes=4, seed=0, image_size=32)


@pytest.fixture(scope="session")
def sim_tokenizer(tmp_path_factory) -> Path:
    """A tiny SentencePiece model over the simulator's prompts (fits the tiny variant's vocabulary)."""
    from pirecon.data.tokenizer import train_tiny_tokenizer
    from pirecon.sim import SimEnv
    return train_tiny_tokenizer(SimEnv().all_tasks(), tmp_path_factory.mktemp("tok") / "tok.model")
