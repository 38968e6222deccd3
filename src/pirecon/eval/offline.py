"""`pirecon eval-offline --policy.path=CKPT [--dataset.root=DIR] [--dataset.episodes=[...]] [--output=FILE]`

Open-loop action error of a checkpoint on dataset frames: for every frame, sample an action chunk
and compare it with the recorded one, in the robot's units (unnormalised, real action dims only),
ignoring chunk steps past the episode end (`action_is_pad`). Prints MSE and L1 per action
dimension and per chunk step, and writes them as JSON with `--output=FILE`.

  --dataset.root        a LeRobot dataset folder (default: the one the checkpoint was trained on,
                        with its --dataset.episodes)
  --dataset.split       all | train | val: val = the last --dataset.val_episodes of the selected
                        episodes (default: the checkpoint's training value), train = the others
  --max_samples=N       N frames spread evenly over the selection (default: every frame)
  --seed                sampling noise: frame `index` always gets the same noise (from seed and index),
                        so numbers do not depend on --batch_size, --max_samples or the episode selection
  --policy.num_inference_steps    flow-matching integration steps (default: the checkpoint's)
  --policy.device       auto | cpu | cuda | cuda:N (auto, the default: cuda when available, else cpu)

Every flag with its default:
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pirecon.checkpoint.layout import require_ema, resolve_checkpoint, training_dataset
from pirecon.configs.data import DatasetConfig
from pirecon.configs.eval import OfflineConfig, OfflineDatasetFlags
from pirecon.configs.parse import format_help, parse_flags
from pirecon.configs.policy import check_device_flag
from pirecon.data.layout import dataset_root
from pirecon.data.lerobot import open_dataset
from pirecon.data.transforms import select_dims
from pirecon.errors import ConfigError
from pirecon.inference import PolicyRunner
from pirecon.model.placement import resolve_device

SPLITS = ("all", "train", "val")


# ---------------------------------------------------------------------------------------------
# Metrics


class ActionErrors:
    """Running sums of squared and absolute errors over valid (not padded) chunk steps.

    add(pred (B, H, D), target (B, H, D), is_pad (B, H)); result() -> the metrics dict.
    """

    def __init__(self, horizon: int, dim: int):
        self.sq = np.zeros((horizon, dim))
        self.abs = np.zeros((horizon, dim))
        self.count = np.zeros(horizon, dtype=np.int64)  # valid samples per chunk step
        self.samples = 0

    def add(self, pred: np.ndarray, target: np.ndarray, is_pad: np.ndarray) -> None:
        pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
        valid = ~np.asarray(is_pad, dtype=bool)  # (B, H)
        if pred.shape != target.shape or pred.shape[:2] != valid.shape or pred.shape[1:] != self.sq.shape:
            raise ValueError(f"ActionErrors.add: pred {pred.shape}, target {target.shape}, is_pad {valid.shape}; "
                             f"expected (B, {self.sq.shape[0]}, {self.sq.shape[1]}) and (B, {self.sq.shape[0]})")
        diff = (pred - target) * valid[..., None]
        self.sq += (diff ** 2).sum(0)
        self.abs += np.abs(diff).sum(0)
        self.count += valid.sum(0)
        self.samples += len(pred)

    def result(self, names: list[str] | None = None) -> dict:
        horizon, dim = self.sq.shape
        names = names or [f"a{i}" for i in range(dim)]
        steps = int(self.count.sum())

        def mean(total, n):
            return float(total / n) if n else None

        return {
            "samples": self.samples,
            "valid_steps": steps,
            "mse": mean(self.sq.sum(), steps * dim),
            "l1": mean(self.abs.sum(), steps * dim),
            "per_dim": [{"name": names[d], "mse": mean(self.sq[:, d].sum(), steps),
                         "l1": mean(self.abs[:, d].sum(), steps)} for d in range(dim)],
            "per_step": [{"step": h, "count": int(self.count[h]), "mse": mean(self.sq[h].sum(), self.count[h] * dim),
                          "l1": mean(self.abs[h].sum(), self.count[h] * dim)} for h in range(horizon)],
        }


def frame_noise(seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Sampling noise of one frame, a function of (seed, frame index) only."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint64)
    generator = torch.Generator().manual_seed(int(state[0] % (2**63)))
    return torch.randn(shape, generator=generator)


def evenly_spaced(n: int, max_samples: int | None) -> list[int]:
    """All of range(n), or max_samples indices spread evenly over it (first and last included)."""
    if max_samples is None or max_samples >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, max_samples)})


class _Samples(torch.utils.data.Dataset):
    """dataset[indices[i]] -> (model inputs, target (H, d) in robot units, is_pad (H,), frame index)."""

    def __init__(self, dataset, preprocessor, indices: list[int]):
        self.dataset, self.preprocessor, self.indices = dataset, preprocessor, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        raw = self.dataset[self.indices[i]]
        processed = self.preprocessor(raw)
        target = select_dims(torch.as_tensor(raw["action"]).float(), self.preprocessor.action_dims,
                             "--dataset.action_dims")  # (H, d) robot units
        index = int(raw["index"]) if "index" in raw else self.indices[i]
        return processed, target.numpy(), processed["action_is_pad"].numpy(), index


def offline_errors(policy, preprocessor, dataset, indices: list[int], batch_size: int = 8, seed: int = 0,
                   num_steps: int | None = None, num_workers: int = 0, progress: bool = False,
                   names: list[str] | None = None) -> dict:
    """Action errors of `policy` (a Pi0Policy, or anything with `.config` and `.sample_actions`) on
    `dataset[indices]`, in robot units. See `ActionErrors.result` for the returned dict."""
    samples = _Samples(dataset, preprocessor, indices)

    def collate(items):
        return (preprocessor.collate([it[0] for it in items]), np.stack([it[1] for it in items]),
                np.stack([it[2] for it in items]), [it[3] for it in items])

    loader = torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=False, collate_fn=collate,
                                         num_workers=num_workers)
    cfg = policy.config
    param = next(iter(policy.parameters()), None) if hasattr(policy, "parameters") else None
    device = param.device if param is not None else torch.device("cpu")
    errors = None
    with torch.no_grad():
        for batch, target, is_pad, frame_index in tqdm(loader, desc="eval-offline", unit="batch",
                                                       disable=not progress, dynamic_ncols=True):
            noise = torch.stack([frame_noise(seed, i, (cfg.chunk_size, cfg.max_action_dim)) for i in frame_index])
            actions = policy.sample_actions(batch.to(device), noise=noise.to(device), num_steps=num_steps)
            pred = preprocessor.postprocess_actions(actions, action_dim=target.shape[-1])  # (B, H, d)
            if errors is None:
                errors = ActionErrors(target.shape[1], target.shape[2])
            errors.add(pred, target, is_pad)
    if errors is None:
        raise ConfigError("eval-offline: no samples were selected (check --dataset.episodes and --max_samples)")
    return errors.result(names)


def action_names(dataset, action_dims: list[int] | None) -> list[str] | None:
    """The dataset's action dimension names (info.json features.action.names), cut to `action_dims`."""
    names = dataset.features.get("action", {}).get("names")
    if isinstance(names, dict):  # LeRobot sometimes nests them: {"motors": [...]}
        names = next(iter(names.values()), None)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    if action_dims is not None:
        if any(not -len(names) <= d < len(names) for d in action_dims):
            return None
        names = [names[d] for d in action_dims]
    return names


def format_errors(result: dict) -> str:
    def num(x):
        return f"{x:.6g}" if x is not None else "-"
    width = max(9, *(len(r["name"]) for r in result["per_dim"]))
    lines = [f"  {'dimension':<{width}}  {'MSE':>12}  {'L1':>12}"]
    lines += [f"  {r['name']:<{width}}  {num(r['mse']):>12}  {num(r['l1']):>12}" for r in result["per_dim"]]
    lines.append(f"  {'all':<{width}}  {num(result['mse']):>12}  {num(result['l1']):>12}")
    lines += ["", f"  {'chunk step':>10}  {'MSE':>12}  {'L1':>12}  {'frames':>8}"]
    lines += [f"  {r['step']:>10}  {num(r['mse']):>12}  {num(r['l1']):>12}  {r['count']:>8}"
              for r in result["per_step"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command


def check_offline_config(cfg: OfflineConfig) -> None:
    if not cfg.policy.path:
        raise ConfigError("--policy.path: expected a checkpoint folder (e.g. OUT/checkpoints/last)")
    if cfg.batch_size <= 0:
        raise ConfigError(f"--batch_size={cfg.batch_size}: expected a positive integer")
    if cfg.max_samples is not None and cfg.max_samples <= 0:
        raise ConfigError(f"--max_samples={cfg.max_samples}: expected a positive integer (or none for all frames)")
    if cfg.num_workers < 0:
        raise ConfigError(f"--num_workers={cfg.num_workers}: expected >= 0")
    if cfg.policy.num_inference_steps is not None and cfg.policy.num_inference_steps <= 0:
        raise ConfigError(f"--policy.num_inference_steps={cfg.policy.num_inference_steps}: expected a positive integer")
    check_device_flag(cfg.policy.device)
    if cfg.dataset.split not in SPLITS:
        raise ConfigError(f"--dataset.split={cfg.dataset.split!r}: expected one of {list(SPLITS)}")
    if cfg.dataset.val_episodes is not None and cfg.dataset.val_episodes < 0:
        raise ConfigError(f"--dataset.val_episodes={cfg.dataset.val_episodes}: expected >= 0")


def open_eval_dataset(cfg: OfflineDatasetFlags, folder: Path, horizon: int):
    """The dataset `--dataset.*` selects, defaulting to the checkpoint's training dataset and split."""
    trained = training_dataset(folder, follow_export=False)
    if cfg.root or cfg.repo_id:
        root = dataset_root(DatasetConfig(root=cfg.root, repo_id=cfg.repo_id))
        episodes = cfg.episodes
    elif trained.get("root") or trained.get("repo_id"):
        root = dataset_root(DatasetConfig(root=trained.get("root"), repo_id=trained.get("repo_id")))
        episodes = cfg.episodes if cfg.episodes is not None else trained.get("episodes")
    else:
        raise ConfigError(f"--dataset.root: expected a dataset folder ({folder} does not record its training dataset)")
    if not (root / "meta" / "info.json").is_file():
        raise ConfigError(f"--dataset.root={root}: no meta/info.json there; expected a LeRobot dataset folder")
    val = cfg.val_episodes if cfg.val_episodes is not None else int(trained.get("val_episodes") or 0)
    if cfg.split == "val" and val == 0:
        raise ConfigError("--dataset.split=val: no held-out episodes (the checkpoint was trained with "
                          "--dataset.val_episodes=0); pass --dataset.val_episodes=N to hold out the last N")
    split = cfg.split
    return open_dataset(root, horizon, episodes=episodes, split=split, val_episodes=val if split != "all" else 0)


def run_offline(cfg: OfflineConfig) -> dict:
    check_offline_config(cfg)
    device = resolve_device(cfg.policy.device)
    folder = resolve_checkpoint(cfg.policy.path)
    if cfg.use_ema:
        require_ema(folder)
    runner = PolicyRunner.from_checkpoint(folder, use_ema=cfg.use_ema, device=device,
                                          tokenizer_path=cfg.policy.tokenizer_path)
    policy, pre = runner.policy, runner.preprocessor
    dataset = open_eval_dataset(cfg.dataset, folder, policy.config.chunk_size)
    indices = evenly_spaced(len(dataset), cfg.max_samples)
    print(f"pirecon eval-offline: {folder} on {dataset.root} ({dataset.num_episodes} episodes, "
          f"{len(indices)} of {len(dataset)} frames)", flush=True)
    result = offline_errors(policy, pre, dataset, indices, batch_size=cfg.batch_size, seed=cfg.seed,
                            num_steps=cfg.policy.num_inference_steps, num_workers=cfg.num_workers,
                            progress=cfg.progress_bar, names=action_names(dataset, pre.action_dims))
    result = {"checkpoint": str(folder), "use_ema": cfg.use_ema,
              "dataset": {"root": str(dataset.root), "episodes": list(dataset.episodes), "split": cfg.dataset.split,
                          "frames": len(dataset)},
              "num_inference_steps": cfg.policy.num_inference_steps or policy.config.num_inference_steps, "seed": cfg.seed,
              "units": "robot (unnormalised), real action dims, padded chunk steps ignored", **result}
    print(f"action error over {result['samples']} frames ({result['valid_steps']} valid chunk steps), robot units:")
    print(format_errors(result))
    if cfg.output:
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"  results: {out}")
    return result


def run(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(format_help("eval-offline", __doc__, OfflineConfig), end="")
        return 0
    run_offline(parse_flags(argv, OfflineConfig))
    sys.stdout.flush()
    return 0
