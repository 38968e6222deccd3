"""Shared test fixtures. `../shared` (beside the checkout) holds real data and the tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
