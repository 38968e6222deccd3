#!/usr/bin/env bash
# Fine-tune Pi0 on your own robot's LeRobot dataset with openpi's Pi0 recipe: your camera names are
# mapped onto Pi0's three views with a camera map, and --dataset.action_dims keeps only the action
# dimensions you want the policy to produce. The recipe is a preset (`pirecon presets NAME` prints
# it): openpi's pi0_libero_low_mem_finetune for LoRA (both Gemma stacks adapted, rank 16 / 32, no
# EMA) or pi0_libero for a full fine-tune (EMA 0.99); both: chunk 50, mean/std normalisation with
# this dataset's statistics, openpi's image augmentation, AdamW 2.5e-5 with warm-up 1000 and cosine
# decay over 30000 steps, batch 32, bfloat16. Your camera map replaces the preset's LIBERO one, and
# every flag typed here or in EXTRA_FLAGS overrides the preset (the start-up summary lists them).
#
# What it replaces:
#   LeRobot:  lerobot-train --policy.type=pi0 --policy.pretrained_path=lerobot/pi0_base \
#               --dataset.repo_id=me/my_robot \
#               --rename_map='{"observation.images.front": "observation.images.base_0_rgb",
#                              "observation.images.wrist": "observation.images.left_wrist_0_rgb"}' \
#               --policy.use_peft=true --peft.method_type=lora --peft.r=16 \
#               --policy.dtype=bfloat16 --steps=30000 --batch_size=32 --output_dir=outputs/my_robot_pi0
#   openpi:   a TrainConfig of your own whose RepackTransform renames your cameras, then
#             uv run scripts/compute_norm_stats.py --config-name my_robot
#             uv run scripts/train.py my_robot --exp-name=my_run
#
# Every path and size comes from an environment variable; the defaults are a real run (empty: the
# preset's value):
#   DATASET      LeRobot dataset folder (v2.0, v2.1 or v3.0)
#   CAMERA_MAP   JSON: dataset camera key -> Pi0 view (base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb);
#                views without a camera are masked out, cameras left out of the map are not read
#   ACTION_DIMS  indices of the action dims to learn, e.g. [0,1,2,3,4,5,6] (empty: all)
#   STATE_DIMS   indices of the state dims to feed the model (empty: all)
#   PRETRAINED   pi0_base folder (LeRobot or openpi PyTorch layout; its sizes must be the preset's);
#                empty (PRETRAINED=): random weights of VARIANT (full, or tiny for a smoke test)
#   TOKENIZER    PaliGemma SentencePiece model (or a tokenizer folder); nothing is downloaded
#   OUTPUT       run folder; checkpoints in OUTPUT/checkpoints/{step} and OUTPUT/checkpoints/last
#   USE_PEFT     true (LoRA, default) or false (full fine-tune)
#   TRAIN_PRESET the recipe (default pi0_libero_low_mem_finetune with USE_PEFT=true, pi0_libero without)
#   DTYPE        bfloat16 (the preset's) or float32
#   STEPS, BATCH_SIZE, LORA_RANK, NUM_WORKERS, SAVE_FREQ, LOG_FREQ   (the preset's 30000, 32, 16 / 32,
#                2, 1000, 100); VAL_EPISODES (held out for `pirecon eval-offline --dataset.split=val`)
#   LAUNCH       e.g. "accelerate launch --num_processes 8" for 8 GPUs (DDP); empty: one process
#   CHECK_DATASET  run `pirecon doctor` on DATASET first (default true)
#   PIRECON      the pirecon command (default: pirecon on PATH)
#   EXTRA_FLAGS  more flags, shell-quoted
set -euo pipefail

PIRECON=${PIRECON:-pirecon}
DATASET=${DATASET:-/data/my_robot}
CAMERA_MAP=${CAMERA_MAP:-'{"observation.images.front": "base_0_rgb", "observation.images.wrist": "left_wrist_0_rgb"}'}
ACTION_DIMS=${ACTION_DIMS:-}
STATE_DIMS=${STATE_DIMS:-}
PRETRAINED=${PRETRAINED-/models/pi0_base}
VARIANT=${VARIANT:-full}
TOKENIZER=${TOKENIZER:-/models/paligemma_tokenizer.model}
OUTPUT=${OUTPUT:-outputs/my_robot_pi0}
USE_PEFT=${USE_PEFT:-true}
if [[ "$USE_PEFT" == true ]]; then
  TRAIN_PRESET=${TRAIN_PRESET:-pi0_libero_low_mem_finetune}
else
  TRAIN_PRESET=${TRAIN_PRESET:-pi0_libero}
fi
DTYPE=${DTYPE:-}
STEPS=${STEPS:-}
BATCH_SIZE=${BATCH_SIZE:-}
LORA_RANK=${LORA_RANK:-}
NUM_WORKERS=${NUM_WORKERS:-}
SAVE_FREQ=${SAVE_FREQ:-}
LOG_FREQ=${LOG_FREQ:-}
VAL_EPISODES=${VAL_EPISODES:-0}
LAUNCH=${LAUNCH:-}
CHECK_DATASET=${CHECK_DATASET:-true}
EXTRA_FLAGS=${EXTRA_FLAGS:-}

if [[ -n "$PRETRAINED" ]]; then
  weights=(--policy.pretrained_path="$PRETRAINED")   # its sizes must be the preset's (pi0_base's)
else
  weights=(--policy.variant="$VARIANT")              # random initialisation
fi
dims=()
[[ -n "$ACTION_DIMS" ]] && dims+=(--dataset.action_dims="$ACTION_DIMS")
[[ -n "$STATE_DIMS" ]] && dims+=(--dataset.state_dims="$STATE_DIMS")
# Values the preset sets unless given here.
optional=()
[[ -n "$DTYPE" ]] && optional+=(--policy.dtype="$DTYPE")
[[ -n "$STEPS" ]] && optional+=(--steps="$STEPS")
[[ -n "$BATCH_SIZE" ]] && optional+=(--batch_size="$BATCH_SIZE")
[[ -n "$LORA_RANK" ]] && optional+=(--peft.r="$LORA_RANK")
[[ -n "$NUM_WORKERS" ]] && optional+=(--num_workers="$NUM_WORKERS")
[[ -n "$SAVE_FREQ" ]] && optional+=(--save_freq="$SAVE_FREQ")
[[ -n "$LOG_FREQ" ]] && optional+=(--log_freq="$LOG_FREQ")
if [[ -n "$LAUNCH" ]]; then
  read -r -a train <<< "$LAUNCH -m pirecon train"
else
  read -r -a train <<< "$PIRECON train"
fi
eval "extra=($EXTRA_FLAGS)"

# 1. Check the dataset; a non-zero exit (an ERROR finding) stops here.
if [[ "$CHECK_DATASET" == true ]]; then
  $PIRECON doctor --dataset.root="$DATASET"
fi

# 2. Fine-tune with openpi's Pi0 recipe; your cameras, dimensions and sizes typed over it.
"${train[@]}" \
  --preset="$TRAIN_PRESET" "${weights[@]}" \
  --policy.tokenizer_path="$TOKENIZER" \
  --policy.use_peft="$USE_PEFT" \
  --dataset.root="$DATASET" --dataset.camera_map="$CAMERA_MAP" \
  ${dims[@]+"${dims[@]}"} --dataset.val_episodes="$VAL_EPISODES" \
  ${optional[@]+"${optional[@]}"} \
  --output_dir="$OUTPUT" \
  ${extra[@]+"${extra[@]}"}

echo "checkpoint: $OUTPUT/checkpoints/last (serve it with examples/serve_robot.sh)"
