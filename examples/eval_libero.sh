#!/usr/bin/env bash
# Evaluate a checkpoint closed-loop in a LIBERO suite: success rate with its 95 % interval, per-task
# rates, one line per episode and rollout videos in OUTPUT.
#
# What it replaces:
#   LeRobot:  lerobot-eval --policy.path=outputs/pi05_libero/checkpoints/last/pretrained_model \
#               --env.type=libero --env.task=libero_spatial --eval.batch_size=1 --eval.n_episodes=500
#   openpi:   uv run scripts/serve_policy.py policy:checkpoint --policy.config=pi05_libero \
#               --policy.dir=checkpoints/pi05_libero/my_run/29999
#             python examples/libero/main.py --args.task-suite-name=libero_spatial   (second terminal)
#
# Needs the LIBERO extra: pip install 'pirecon[libero]' and, for rendering on a CPU, Debian's
# libosmesa6 (MUJOCO_GL=osmesa, the default here; on a GPU machine MUJOCO_GL=egl is faster).
#
# Environment variables (defaults: the standard protocol of 50 trials per task):
#   CHECKPOINT    training checkpoint or `pirecon export` folder (default: the LIBERO fine-tune's last)
#   SUITE         libero_spatial | libero_object | libero_goal | libero_10 | libero_90, or one task
#                 of a suite as SUITE/INDEX (e.g. libero_spatial/3)
#   EPISODES      episodes; consecutive seeds cycle through the suite's tasks, then through each
#                 task's 50 initial states: 500 = 10 tasks x 50 (use 4500 for libero_90)
#   MAX_STEPS     policy steps per episode; empty: the suite's limit (220 / 280 / 300 / 520 / 400)
#   REPLAN_STEPS  actions executed from every predicted chunk before predicting again (openpi: 5)
#   IMAGE_KEY, WRIST_KEY  dataset camera keys the checkpoint was trained on (as in
#                 finetune_libero_pi05_lora.sh): the environment's images are handed over under them
#   DEVICE        cuda | cpu | cuda:1 ... (empty: cuda when available)
#   VIDEOS        rollout videos to keep (the first N episodes)
#   OUTPUT        results folder (episodes.jsonl, summary.json, videos/)
#   PIRECON       the pirecon command (default: pirecon on PATH)
#   EXTRA_FLAGS   more flags, shell-quoted, e.g. "--env.camera_size=256 --use_ema=true"
set -euo pipefail

PIRECON=${PIRECON:-pirecon}
CHECKPOINT=${CHECKPOINT:-outputs/pi05_libero_lora/checkpoints/last}
SUITE=${SUITE:-libero_spatial}
EPISODES=${EPISODES:-500}
MAX_STEPS=${MAX_STEPS:-}
REPLAN_STEPS=${REPLAN_STEPS:-5}
IMAGE_KEY=${IMAGE_KEY:-observation.images.image}
WRIST_KEY=${WRIST_KEY:-observation.images.image2}
DEVICE=${DEVICE:-}
VIDEOS=${VIDEOS:-10}
OUTPUT=${OUTPUT:-outputs/eval/${SUITE//\//_}}
EXTRA_FLAGS=${EXTRA_FLAGS:-}

optional=()
[[ -n "$MAX_STEPS" ]] && optional+=(--env.max_steps="$MAX_STEPS")
[[ -n "$DEVICE" ]] && optional+=(--policy.device="$DEVICE")
eval "extra=($EXTRA_FLAGS)"

$PIRECON eval \
  --policy.path="$CHECKPOINT" \
  --policy.n_action_steps="$REPLAN_STEPS" \
  --env.type=libero --env.task="$SUITE" \
  --env.image_key="$IMAGE_KEY" --env.wrist_image_key="$WRIST_KEY" \
  --eval.n_episodes="$EPISODES" --eval.max_videos="$VIDEOS" \
  --output_dir="$OUTPUT" \
  ${optional[@]+"${optional[@]}"} ${extra[@]+"${extra[@]}"}
