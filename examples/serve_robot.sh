#!/usr/bin/env bash
# Serve a checkpoint to a robot over openpi's websocket protocol: openpi_client's
# WebsocketClientPolicy (and openpi's LIBERO / ALOHA / DROID example clients) talk to it unchanged.
# examples/robot_client.py is a minimal client. Ctrl-C stops the server.
#
# What it replaces:
#   openpi:   uv run scripts/serve_policy.py --env=LIBERO --port=8000 policy:checkpoint \
#               --policy.config=pi05_libero --policy.dir=checkpoints/pi05_libero/my_run/29999
#   LeRobot:  (no websocket server for openpi clients; lerobot-record --policy.path=... runs the
#             policy inside the robot loop instead)
#
# Environment variables:
#   CHECKPOINT  training checkpoint or `pirecon export` folder
#   PRESET      request keys of an openpi example client: libero | aloha | droid | none
#               (none: clients send the dataset's own keys, e.g. observation.images.top, plus prompt)
#   OBS_MAP     JSON, request key -> dataset key, on top of the preset. The libero preset maps
#               openpi's observation/wrist_image to observation.images.image2, the wrist camera of
#               LeRobot's LIBERO datasets (what finetune_libero_pi05_lora.sh trains on); the default
#               here spells that out. For a checkpoint trained on openpi's naming use
#               OBS_MAP='{"observation/wrist_image": "observation.images.wrist_image"}'.
#   HOST, PORT  where to listen (openpi's clients default to port 8000). HOST=0.0.0.0 makes the
#               server reachable from the robot's computer: set PIRECON_SERVE_API_KEY too, and give
#               clients the key (examples/robot_client.py --api_key, openpi: WebsocketClientPolicy(api_key=...))
#   DEVICE      cuda (default) | cpu | cuda:1 ...
#   NUM_STEPS   flow-matching denoising steps per request (empty: the checkpoint's, 10)
#   N_ACTION_STEPS  actions per chunk the metadata tells clients to execute (empty: the checkpoint's)
#   PIRECON     the pirecon command (default: pirecon on PATH)
#   EXTRA_FLAGS more flags, shell-quoted, e.g. "--use_ema=true --serve.default_prompt='fold the towel'"
set -euo pipefail

PIRECON=${PIRECON:-pirecon}
CHECKPOINT=${CHECKPOINT:-outputs/pi05_libero_lora/checkpoints/last}
PRESET=${PRESET:-libero}
if [[ "$PRESET" == libero ]]; then
  OBS_MAP=${OBS_MAP:-'{"observation/wrist_image": "observation.images.image2"}'}
else
  OBS_MAP=${OBS_MAP:-'{}'}
fi
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
DEVICE=${DEVICE:-cuda}
NUM_STEPS=${NUM_STEPS:-}
N_ACTION_STEPS=${N_ACTION_STEPS:-}
EXTRA_FLAGS=${EXTRA_FLAGS:-}

optional=()
[[ -n "$NUM_STEPS" ]] && optional+=(--policy.num_inference_steps="$NUM_STEPS")
[[ -n "$N_ACTION_STEPS" ]] && optional+=(--policy.n_action_steps="$N_ACTION_STEPS")
eval "extra=($EXTRA_FLAGS)"

# exec: the server replaces this shell, so a signal to this process reaches it directly.
exec $PIRECON serve \
  --policy.path="$CHECKPOINT" --policy.device="$DEVICE" \
  --serve.preset="$PRESET" --serve.obs_map="$OBS_MAP" \
  --host="$HOST" --port="$PORT" \
  ${optional[@]+"${optional[@]}"} ${extra[@]+"${extra[@]}"}
