"""Flags for tiny, fast training runs on the simulator dataset."""

import json
from pathlib import Path


def tiny_train_flags(dataset: Path, tokenizer: Path | None, output_dir: Path, *extra: str, kind: str = "pi0") -> list[str]:
    """tokenizer None: no --policy.tokenizer_path (training builds one from the dataset's tasks)."""
    return [
        f"--policy.type={kind}", "--policy.variant=tiny", "--policy.image_resolution=28",
        "--policy.chunk_size=4", "--policy.n_action_steps=2", "--policy.max_state_dim=8", "--policy.max_action_dim=8",
        "--policy.camera_names=[base_0_rgb,left_wrist_0_rgb]",
        *([f"--policy.tokenizer_path={tokenizer}"] if tokenizer is not None else []),
        f"--dataset.root={dataset}", f"--output_dir={output_dir}", "--batch_size=4", "--num_workers=0",
        "--log_freq=1", "--policy.optimizer_lr=1e-3", "--policy.scheduler_warmup_steps=2",
        "--policy.scheduler_decay_steps=20",
        "--progress_bar=false", *extra,
    ]


def logged(output_dir: Path, key: str = "loss") -> dict[int, float]:
    lines = (Path(output_dir) / "log.jsonl").read_text().splitlines()
    return {r["step"]: r[key] for r in map(json.loads, lines)}
