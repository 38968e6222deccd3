"""Does the reconstruction loss help? A reproducible ablation on a simulator task where grounding matters.

    .venv/bin/python benchmarks/recon_ablation.py [--output_dir=outputs/recon_ablation] [--arms=[none,full,gaze]]
        [--seeds=[0,1,2]] [--steps=1500] [--eval_points=3] [--eval_episodes=100] [--num_blocks=3]
        [--recon_weight=0.5] [--vae_path=FOLDER --arms=[none,full,gaze,gaze_vae]]

Records the task once (the demo's tabletop with --num_blocks coloured blocks: the prompt's colour
names the block), trains the demo's tiny Pi0 (LoRA r=64, batch 64) for every arm and seed under
the same budget, evaluates every run at --eval_points checkpoints on the same unseen layouts and
prints per arm the success per seed (Wilson interval), the mean over seeds (t interval), the paired
difference to the first arm and the success at each evaluated step, with the step time. Writes
results.json, table.md, success_vs_steps.png and recon-viz grids into the output folder. A second
call resumes: finished runs are skipped, an interrupted one continues from its last checkpoint.
Flags as `pirecon`'s (`--flag=value`, lists `[a,b]`); every setting is in pirecon.configs.ablation.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    from pirecon.configs.ablation import AblationConfig
    from pirecon.configs.parse import format_help, parse_flags
    from pirecon.errors import PireconError
    from pirecon.recon_ablation import format_table, run_sweep

    if "--help" in argv or "-h" in argv:
        text = format_help("recon_ablation", __doc__, AblationConfig)
        print(text.replace("usage: pirecon recon_ablation", "usage: benchmarks/recon_ablation.py", 1), end="")
        return 0
    started = time.perf_counter()
    try:
        cfg = parse_flags(argv, AblationConfig)
        summary = run_sweep(cfg)
    except PireconError as exc:
        print(f"recon_ablation: error: {exc}", file=sys.stderr)
        return 2
    print(f"\n{len(cfg.arms)} arms x {len(cfg.seeds)} seeds, {cfg.steps} steps, {cfg.eval_episodes} unseen layouts, "
          f"{cfg.num_blocks} blocks; this call took {(time.perf_counter() - started) / 60:.1f} min")
    print(format_table(summary, cfg.arms[0]))
    print(f"written: {cfg.output_dir}/table.md, results.json, success_vs_steps.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
