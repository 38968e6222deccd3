import pytest

from pirecon.eval.metrics import format_summary, summarize, wilson_interval


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
# (Wilson score interval without continuity correction), plus textbook 0/10, 5/10, 10/10.
@pytest.mark.parametrize("k, n, low, high", [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0),
    (0, 10, 0.0, 0.2775),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
])
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    # A wider interval at a higher confidence level.
    assert wilson_interval(3, 10, z=2.5758)[0] < wilson_interval(3, 10)[0]
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(3, 2)


def test_summarize_per_task_and_means():
    episodes = [
        {"task": "a", "success": True, "steps": 10, "wall_time_s": 1.0},
        {"task": "a", "success": False, "steps": 60, "wall_time_s": 3.0},
        {"task": "b", "success": True, "steps": 20, "wall_time_s": 2.0},
        {"task": "b", "success": True, "steps": 30, "wall_time_s": 2.0},
    ]
    s = summarize(episodes)
    assert (s["successes"], s["episodes"], s["success_rate"]) == (3, 4, 0.75)
    assert s["ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert s["mean_steps"] == 30.0 and s["mean_steps_success"] == 20.0 and s["mean_wall_time_s"] == 2.0
    assert s["per_task"]["a"]["success_rate"] == 0.5 and s["per_task"]["b"]["successes"] == 2
    assert s["per_task"]["b"]["ci95"] == pytest.approx(list(wilson_interval(2, 2)))
    table = format_summary(s)
    assert "all tasks" in table and "75.0%" in table and "50.0%" in table
    assert summarize([{"task": "a", "success": False, "steps": 5, "wall_time_s": 0.1}])["mean_steps_success"] is None
