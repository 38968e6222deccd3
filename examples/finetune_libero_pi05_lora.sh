#!/usr/bin/env bash
# Fine-tune Pi0.5 with LoRA on a local copy of a LeRobot LIBERO dataset, starting from a local
# pi05_base folder (LeRobot's layout, e.g. a download of lerobot/pi05_base; an openpi PyTorch
# folder works too), frozen weights in bfloat16, gradient checkpointing on.
#
# What it replaces:
#   LeRobot:  lerobot-train --policy.type=pi05 --policy.pretrained_path=lerobot/pi05_base \
#               --dataset.repo_id=HuggingFaceVLA/libero --policy.dtype=bfloat16 \
#               --policy.gradient_checkpointing=true --policy.use_peft=true --peft.method_type=lora \
#               --peft.r=16 --steps=30000 --batch_size=32 --output_dir=outputs/pi05_libero_lora
#   openpi:   uv run scripts/compute_norm_stats.py --config-name pi05_libero
#             uv run scripts/train.py pi05_libero --exp-name=my_run   (JAX; LoRA needs a *_lora config)
#
# Every path and size comes from an environment variable; the defaults are a real run:
#   DATASET      LeRobot dataset folder. LeRobot's LIBERO datasets (HuggingFaceVLA/libero,
#                lerobot/libero) hold observation.images.image (agent view),
#                observation.images.image2 (wrist), observation.state (8), action (7).
#   IMAGE_KEY    agent-view camera key   (default observation.images.image)
#   WRIST_KEY    wrist camera key        (default observation.images.image2; datasets converted from
#                openpi's physical-intelligence/libero call it observation.images.wrist_image)
#   PRETRAINED   pi05_base folder; set it empty (PRETRAINED=) to start from random weights of VARIANT
#   VARIANT      model size without PRETRAINED: full (default) or tiny (a smoke test)
#   TOKENIZER    PaliGemma SentencePiece model (or a tokenizer folder); nothing is downloaded
#   OUTPUT       run folder: checkpoints in OUTPUT/checkpoints/{step}, OUTPUT/checkpoints/last
#   STEPS, BATCH_SIZE, LORA_RANK, NUM_WORKERS, SAVE_FREQ, LOG_FREQ
#   LAUNCH       e.g. "accelerate launch --num_processes 8" to train on 8 GPUs (DDP); empty: one process
#   PIRECON      the pirecon command (default: pirecon on PATH)
#   CHECK_DATASET  run `pirecon doctor` on DATASET first (default true; it reads every parquet file
#                and decodes the first and last frame of every episode's videos)
#   EXTRA_FLAGS  more flags, shell-quoted, e.g. "--ema_decay=0.999 --recon.enable=true" (see docs/)
set -euo pipefail

PIRECON=${PIRECON:-pirecon}
DATASET=${DATASET:-/data/libero}
IMAGE_KEY=${IMAGE_KEY:-observation.images.image}
WRIST_KEY=${WRIST_KEY:-observation.images.image2}
PRETRAINED=${PRETRAINED-/models/pi05_base}
VARIANT=${VARIANT:-full}
TOKENIZER=${TOKENIZER:-/models/paligemma_tokenizer.model}
OUTPUT=${OUTPUT:-outputs/pi05_libero_lora}
STEPS=${STEPS:-30000}
BATCH_SIZE=${BATCH_SIZE:-32}
LORA_RANK=${LORA_RANK:-16}
NUM_WORKERS=${NUM_WORKERS:-4}
SAVE_FREQ=${SAVE_FREQ:-1000}
LOG_FREQ=${LOG_FREQ:-100}
LAUNCH=${LAUNCH:-}
CHECK_DATASET=${CHECK_DATASET:-true}
EXTRA_FLAGS=${EXTRA_FLAGS:-}

if [[ -n "$PRETRAINED" ]]; then
  weights=(--policy.pretrained_path="$PRETRAINED")   # sizes come from the folder
else
  weights=(--policy.variant="$VARIANT")              # random initialisation
fi
if [[ -n "$LAUNCH" ]]; then
  read -r -a train <<< "$LAUNCH -m pirecon train"
else
  read -r -a train <<< "$PIRECON train"
fi
eval "extra=($EXTRA_FLAGS)"

# 1. Check the dataset (missing files, NaNs, too-short episodes ...); a non-zero exit stops here.
if [[ "$CHECK_DATASET" == true ]]; then
  $PIRECON doctor --dataset.root="$DATASET"
fi

# 2. Fine-tune, LoRA as openpi's LoRA fine-tunes (--peft.preset=openpi: both Gemma stacks adapted,
#    SigLIP and the projections around the expert trained in full; lerobot-train's default adapts
#    only the expert's q/v and the projections). The two LIBERO cameras feed Pi0.5's base and left-wrist views (the third view is
#    masked out). --policy.use_dataset_stats: normalise with this dataset's statistics (quantiles
#    for Pi0.5), not with whatever statistics the base folder carries.
"${train[@]}" \
  --policy.type=pi05 "${weights[@]}" \
  --policy.tokenizer_path="$TOKENIZER" \
  --policy.use_peft=true --peft.preset=openpi --peft.r="$LORA_RANK" \
  --policy.dtype=bfloat16 --policy.gradient_checkpointing=true \
  --policy.use_dataset_stats=true \
  --dataset.root="$DATASET" \
  --dataset.camera_map="{\"$IMAGE_KEY\": \"base_0_rgb\", \"$WRIST_KEY\": \"left_wrist_0_rgb\"}" \
  --steps="$STEPS" --batch_size="$BATCH_SIZE" \
  --num_workers="$NUM_WORKERS" --save_freq="$SAVE_FREQ" --log_freq="$LOG_FREQ" \
  --output_dir="$OUTPUT" \
  ${extra[@]+"${extra[@]}"}

echo "checkpoint: $OUTPUT/checkpoints/last (evaluate with examples/eval_libero.sh)"
