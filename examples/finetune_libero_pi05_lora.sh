#!/usr/bin/env bash
# Fine-tune Pi0.5 with LoRA on a local copy of a LeRobot LIBERO dataset, starting from a local
# pi05_base folder (LeRobot's layout, e.g. a download of lerobot/pi05_base; an openpi PyTorch
# folder works too), with openpi's pi05_libero recipe: --preset=pi05_libero (chunk 10, quantile
# normalisation with this dataset's statistics, openpi's image augmentation, the loss over every
# padded action dim, AdamW at 5e-5 after 10000 warm-up steps, bfloat16; `pirecon presets
# pi05_libero` prints every value and where openpi sets it). The flags typed below override the
# preset's, and the start-up summary lists each one it replaced:
#   - LoRA as openpi's LoRA configs do it (--policy.use_peft=true --peft.preset=openpi: both Gemma
#     stacks adapted, rank 16 on the VLM and 32 on the expert; SigLIP and the projections around
#     the expert trained in full) and no EMA (openpi turns EMA off for LoRA), where pi05_libero
#     fine-tunes every weight with EMA 0.999;
#   - 32 samples per process (openpi's 256 is global, e.g. 8 GPUs x 32);
#   - LeRobot's LIBERO camera keys (IMAGE_KEY, WRIST_KEY).
#
# What it replaces:
#   LeRobot:  lerobot-train --policy.type=pi05 --policy.pretrained_path=lerobot/pi05_base \
#               --dataset.repo_id=HuggingFaceVLA/libero --policy.dtype=bfloat16 \
#               --policy.gradient_checkpointing=true --policy.use_peft=true --peft.method_type=lora \
#               --peft.r=16 --steps=30000 --batch_size=32 --output_dir=outputs/pi05_libero_lora
#   openpi:   uv run scripts/compute_norm_stats.py --config-name pi05_libero
#             uv run scripts/train.py pi05_libero --exp-name=my_run   (JAX; LoRA needs a *_lora config)
#
# Every path and size comes from an environment variable; the defaults are a real run (empty: the
# preset's value):
#   DATASET      LeRobot dataset folder. LeRobot's LIBERO datasets (HuggingFaceVLA/libero,
#                lerobot/libero) hold observation.images.image (agent view),
#                observation.images.image2 (wrist), observation.state (8), action (7).
#   IMAGE_KEY    agent-view camera key   (default observation.images.image)
#   WRIST_KEY    wrist camera key        (default observation.images.image2; datasets converted from
#                openpi's physical-intelligence/libero call it observation.images.wrist_image)
#   PRETRAINED   pi05_base folder; set it empty (PRETRAINED=) to start from random weights of VARIANT
#   VARIANT      model size without PRETRAINED: full (default, the preset's) or tiny (a smoke test)
#   TOKENIZER    PaliGemma SentencePiece model (or a tokenizer folder); nothing is downloaded
#   OUTPUT       run folder: checkpoints in OUTPUT/checkpoints/{step}, OUTPUT/checkpoints/last
#   BATCH_SIZE   samples per process (default 32)
#   STEPS, LORA_RANK, NUM_WORKERS, SAVE_FREQ, LOG_FREQ   (default: the preset's 30000, 16 on the VLM
#                and 32 on the expert, 2, 1000, 100)
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
BATCH_SIZE=${BATCH_SIZE:-32}
STEPS=${STEPS:-}
LORA_RANK=${LORA_RANK:-}
NUM_WORKERS=${NUM_WORKERS:-}
SAVE_FREQ=${SAVE_FREQ:-}
LOG_FREQ=${LOG_FREQ:-}
LAUNCH=${LAUNCH:-}
CHECK_DATASET=${CHECK_DATASET:-true}
EXTRA_FLAGS=${EXTRA_FLAGS:-}

if [[ -n "$PRETRAINED" ]]; then
  weights=(--policy.pretrained_path="$PRETRAINED")   # its sizes must be the preset's (pi05_base's)
else
  weights=(--policy.variant="$VARIANT")              # random initialisation
fi
# Values the preset sets unless given here.
optional=()
[[ -n "$STEPS" ]] && optional+=(--steps="$STEPS")
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

# 1. Check the dataset (missing files, NaNs, too-short episodes ...); a non-zero exit stops here.
if [[ "$CHECK_DATASET" == true ]]; then
  $PIRECON doctor --dataset.root="$DATASET"
fi

# 2. Fine-tune: openpi's pi05_libero recipe, with LoRA (openpi's way, EMA off), 32 samples per
#    process and LeRobot's camera keys typed over it. The two LIBERO cameras feed Pi0.5's base and
#    left-wrist views (the third view is masked out).
"${train[@]}" \
  --preset=pi05_libero "${weights[@]}" \
  --policy.tokenizer_path="$TOKENIZER" \
  --policy.use_peft=true --peft.preset=openpi --ema_decay=none \
  --dataset.root="$DATASET" \
  --dataset.camera_map="{\"$IMAGE_KEY\": \"base_0_rgb\", \"$WRIST_KEY\": \"left_wrist_0_rgb\"}" \
  --batch_size="$BATCH_SIZE" ${optional[@]+"${optional[@]}"} \
  --output_dir="$OUTPUT" \
  ${extra[@]+"${extra[@]}"}

echo "checkpoint: $OUTPUT/checkpoints/last (evaluate with examples/eval_libero.sh)"
