"""Built-in tabletop simulator with a scripted expert (numpy only, deterministic, no downloads).

    from pirecon.sim import SimEnv, ScriptedExpert
    env = SimEnv()                      # or SimEnv(SimConfig(image_size=128))
    obs = env.reset(seed=0)             # {"observation.images.top", "observation.images.wrist",
                                        #  "observation.state", "task"}
    expert = ScriptedExpert(env)
    obs, reward, done, info = env.step(expert())

`record_dataset(output, episodes)` writes expert demonstrations as a LeRobot dataset;
`pirecon sim record --episodes=50 --output=DIR` does the same from the command line.
"""

from pirecon.sim.env import PROMPTS, TASK_KINDS, Scene, SimConfig, SimEnv
from pirecon.sim.expert import EvalResult, RandomPolicy, ScriptedExpert, evaluate, run_episode
from pirecon.sim.record import RecordSummary, record, record_dataset, recorded_sim_config

__all__ = [
    "SimConfig", "SimEnv", "Scene", "PROMPTS", "TASK_KINDS",
    "ScriptedExpert", "RandomPolicy", "run_episode", "evaluate", "EvalResult",
    "record", "record_dataset", "recorded_sim_config", "RecordSummary",
]
