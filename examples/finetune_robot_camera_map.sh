#!/usr/bin/env bash
# Fine-tune Pi0 on your own robot's LeRobot dataset: your camera names are mapped onto Pi0's three
# views with a camera map, and --dataset.action_dims keeps only the action dimensions you want the
# policy to produce. LoRA on both Gemma stacks, frozen weights in bfloat16.
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
# Every path and size comes from an environment variable; the defaults are a real run:
#   DATASET      LeRobot dataset folder (v2.0, v2.1 or v3.0)
#   CAMERA_MAP   JSON: dataset camera key -> Pi0 view (base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb);
#                views without a camera are masked out, cameras left out of the map are not read
#   ACTION_DIMS  indices of the action dims to learn, e.g. [0,1,2,3,4,5,6] (empty: all)
#   STATE_DIMS   indices of the state dims to feed the model (empty: all)
#   PRETRAINED   pi0_base folder (LeRobot or openpi PyTorch layout); empty (PRETRAINED=): random
#                weights of VARIANT (full, or tiny for a smoke test)
#   TOKENIZER    PaliGemma SentencePiece model (or a tokenizer folder); nothing is downloaded
#   OUTPUT       run folder; checkpoints in OUTPUT/checkpoints/{step} and OUTPUT/checkpoints/last
#   USE_PEFT     true (LoRA, default) or false (full fine-tune)
#   DTYPE        bfloat16 (default) or float32
#   STEPS, BATCH_SIZE, LORA_RANK, NUM_WORKERS, SAVE_FREQ, LOG_FREQ, VAL_EPISODES (held out for
#                `pirecon eval-offline --dataset.split=val`)
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
DTYPE=${DTYPE:-bfloat16}
STEPS=${STEPS:-30000}
BATCH_SIZE=${BATCH_SIZE:-32}
LORA_RANK=${LORA_RANK:-16}
NUM_WORKERS=${NUM_WORKERS:-4}
SAVE_FREQ=${SAVE_FREQ:-1000}
LOG_FREQ=${LOG_FREQ:-100}
VAL_EPISODES=${VAL_EPISODES:-0}
LAUNCH=${LAUNCH:-}
CHECK_DATASET=${CHECK_DATASET:-true}
EXTRA_FLAGS=${EXTRA_FLAGS:-}

if [[ -n "$PRETRAINED" ]]; then
  weights=(--policy.pretrained_path="$PRETRAINED")   # sizes come from the folder
else
  weights=(--policy.variant="$VARIANT")              # random initialisation
fi
dims=()
[[ -n "$ACTION_DIMS" ]] && dims+=(--dataset.action_dims="$ACTION_DIMS")
[[ -n "$STATE_DIMS" ]] && dims+=(--dataset.state_dims="$STATE_DIMS")
if [[ -n "$LAUNCH" ]]; then
  read -r -a train <<< "$LAUNCH -m pirecon train"
else
  read -r -a train <<< "$PIRECON train"
fi
eval "extra=($EXTRA_FLAGS)"

# 1. Check the dataset; a non-zero exit (an ERROR finding) stops here.
# LoRA as openpi's LoRA fine-tunes (both Gemma stacks; SigLIP and the projections train in full).
# Any --peft.* flag turns LoRA on (as in lerobot-train), so a full fine-tune passes none.
lora=()
[[ "$USE_PEFT" == true ]] && lora=(--policy.use_peft=true --peft.preset=openpi --peft.r="$LORA_RANK")
if [[ "$CHECK_DATASET" == true ]]; then
  $PIRECON doctor --dataset.root="$DATASET"
fi

# 2. Fine-tune. Pi0 normalises state and actions with mean/std of this dataset.
"${train[@]}" \
  --policy.type=pi0 "${weights[@]}" \
  --policy.tokenizer_path="$TOKENIZER" \
  ${lora[@]+"${lora[@]}"} \
  --policy.dtype="$DTYPE" --policy.gradient_checkpointing=true \
  --policy.use_dataset_stats=true \
  --dataset.root="$DATASET" --dataset.camera_map="$CAMERA_MAP" \
  ${dims[@]+"${dims[@]}"} --dataset.val_episodes="$VAL_EPISODES" \
  --steps="$STEPS" --batch_size="$BATCH_SIZE" \
  --num_workers="$NUM_WORKERS" --save_freq="$SAVE_FREQ" --log_freq="$LOG_FREQ" \
  --output_dir="$OUTPUT" \
  ${extra[@]+"${extra[@]}"}

echo "checkpoint: $OUTPUT/checkpoints/last (serve it with examples/serve_robot.sh)"
