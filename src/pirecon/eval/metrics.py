"""Success statistics of closed-loop evaluation: Wilson intervals and the per-task summary."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95 %); (0, 1) when n is 0.

    Better behaved than the normal interval at small n and at rates near 0 or 1 (it never leaves
    [0, 1] and is not empty at 0/n or n/n), which is where robot evaluations usually are.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: expected 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # Clamp rounding noise at the ends (0/n and n/n give exactly 0 and 1).
    return max(0.0, centre - half), min(1.0, centre + half)


# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (standard tables).
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t_quantile_95(dof: int) -> float:
    """Two-sided 95 % quantile of Student's t (beyond 30 degrees of freedom: the first-order expansion
    z + (z^3 + z) / (4 dof), within 0.1 % there)."""
    if dof < 1:
        raise ValueError(f"t_quantile_95: expected dof >= 1, got {dof}")
    if dof <= len(T_95):
        return T_95[dof - 1]
    return Z_95 + (Z_95 ** 3 + Z_95) / (4 * dof)


def mean_interval(values: Iterable[float]) -> tuple[float, float | None, float | None]:
    """Mean of a few numbers (e.g. one success rate per seed) and its 95 % t interval; the interval
    is (None, None) for a single value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_interval: expected at least one value")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_95(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def rate_entry(successes: int, n: int) -> dict:
    low, high = wilson_interval(successes, n)
    return {"successes": successes, "episodes": n, "success_rate": successes / n if n else 0.0,
            "ci95": [low, high]}


def summarize(episodes: Iterable[Mapping]) -> dict:
    """Per-episode records ({"task", "success", "steps", "wall_time_s"}) -> the summary numbers.

    {"episodes", "successes", "success_rate", "ci95": [low, high], "mean_steps",
     "mean_steps_success" (None without successes), "mean_wall_time_s", "per_task": {task: rate entry}}
    """
    episodes = list(episodes)
    n = len(episodes)
    successes = sum(bool(e["success"]) for e in episodes)
    per_task: dict[str, list[int]] = {}
    for e in episodes:
        ok, count = per_task.get(e["task"], [0, 0])
        per_task[e["task"]] = [ok + bool(e["success"]), count + 1]
    won = [e["steps"] for e in episodes if e["success"]]

    def mean_of(key: str) -> float | None:
        values = [e[key] for e in episodes if e.get(key) is not None]
        return sum(values) / len(values) if values else None
    return {
        "mean_abs_delta": mean_of("mean_abs_delta"),
        "mean_abs_delta2": mean_of("mean_abs_delta2"),
        "seam_abs_delta": mean_of("seam_abs_delta"),
        **rate_entry(successes, n),
        "mean_steps": sum(e["steps"] for e in episodes) / n if n else 0.0,
        "mean_steps_success": sum(won) / len(won) if won else None,
        "mean_wall_time_s": sum(e["wall_time_s"] for e in episodes) / n if n else 0.0,
        "per_task": {task: rate_entry(ok, count) for task, (ok, count) in sorted(per_task.items())},
    }


def format_summary(summary: Mapping) -> str:
    """The summary as a small table: overall line, then one line per task."""
    rows = [("all tasks", summary)] + list(summary["per_task"].items())
    width = max(len("task"), *(len(name) for name, _ in rows))
    lines = [f"  {'task':<{width}}  {'success':>8}  {'95% CI':>13}  {'episodes':>8}"]
    for name, row in rows:
        low, high = row["ci95"]
        lines.append(f"  {name:<{width}}  {row['success_rate']:>8.1%}  {f'{low:.0%}-{high:.0%}':>13}  "
                     f"{row['episodes']:>8}")
    lines.append(f"  mean episode length {summary['mean_steps']:.1f} steps"
                 + (f" ({summary['mean_steps_success']:.1f} in successes)"
                    if summary.get("mean_steps_success") is not None else "")
                 + f", {summary['mean_wall_time_s']:.2f} s per episode")
    if summary.get("mean_abs_delta") is not None:
        seam = summary.get("seam_abs_delta")
        lines.append(f"  smoothness: mean |da| {summary['mean_abs_delta']:.4f}, mean |d2a| "
                     f"{summary.get('mean_abs_delta2') or 0:.4f}" + (f", at chunk seams |da| {seam:.4f}" if seam is not None else ""))
    return "\n".join(lines)
