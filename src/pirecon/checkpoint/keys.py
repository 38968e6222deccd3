"""The ONE module that knows foreign tensor names: ours <-> openpi PyTorch (LeRobot = "model." + openpi).

openpi keeps the model under `paligemma_with_expert.*` (PaliGemma's vision tower, projector and
language model, then the Gemma action expert), with the action/state/time projections at the top
level; LeRobot stores the same names under a `model.` prefix. Older transformers versions used a few
other prefixes (`_ALIASES`), which are read as well.
"""

from __future__ import annotations

import re
from pathlib import Path

from safetensors import safe_open

from pirecon.errors import CheckpointError

FOREIGN_LAYOUTS = ("openpi", "lerobot")
RECON_PREFIX = "recon_head."  # our auxiliary head: pirecon folders only
LAYOUT_HINT = "openpi (paligemma_with_expert.*) nor LeRobot (model.paligemma_with_expert.*)"

_PALI = "paligemma_with_expert.paligemma.model."
_EXPERT = "paligemma_with_expert.gemma_expert.model."

_VISION_RULES = [
    (r"^patch_embed\.", "embeddings.patch_embedding."),
    (r"^pos_embed\.", "embeddings.position_embedding."),
    (r"^post_norm\.", "post_layernorm."),
    (r"^layers\.(\d+)\.([qkv])_proj\.", r"encoder.layers.\1.self_attn.\2_proj."),
    (r"^layers\.(\d+)\.o_proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^layers\.(\d+)\.(fc[12])\.", r"encoder.layers.\1.mlp.\2."),
    (r"^layers\.(\d+)\.(layer_norm[12])\.", r"encoder.layers.\1.\2."),
]
_GEMMA_RULES = [
    (r"^layers\.(\d+)\.([qkvo])_proj\.", r"layers.\1.self_attn.\2_proj."),
    (r"^layers\.(\d+)\.input_norm\.", r"layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.post_attn_norm\.", r"layers.\1.post_attention_layernorm."),
    (r"^layers\.(\d+)\.mlp\.", r"layers.\1.mlp."),
    (r"^embed_tokens\.", "embed_tokens."),
    (r"^norm\.", "norm."),
]
_FAMILIES = [
    ("backbone.vision.", _PALI + "vision_tower.vision_model.", _VISION_RULES),
    ("backbone.projector.", _PALI + "multi_modal_projector.linear.", [(r"^", "")]),
    ("backbone.vlm.", _PALI + "language_model.", _GEMMA_RULES),
    ("backbone.expert.", _EXPERT, _GEMMA_RULES),
]
_HEAD_KEYS = re.compile(r"^(action_in_proj|action_out_proj|state_proj|action_time_mlp_in|action_time_mlp_out|"
                        r"time_mlp_in|time_mlp_out)\.")

# Keys older transformers versions used inside openpi/LeRobot checkpoints.
_ALIASES = [
    ("paligemma_with_expert.paligemma.language_model.model.", _PALI + "language_model."),
    ("paligemma_with_expert.paligemma.language_model.", _PALI + "language_model."),
    ("paligemma_with_expert.paligemma.vision_tower.", _PALI + "vision_tower."),
    ("paligemma_with_expert.paligemma.multi_modal_projector.", _PALI + "multi_modal_projector."),
]
# Present in released checkpoints, unused by the policy.
UNUSED = {
    "paligemma_with_expert.gemma_expert.lm_head.weight": "the action expert's lm_head is never used",
    "paligemma_with_expert.gemma_expert.model.embed_tokens.weight": "the action expert takes no tokens",
}
TIED_LM_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"
_EXPERT_LM_HEAD = "paligemma_with_expert.gemma_expert.lm_head.weight"
EMBED = "backbone.vlm.embed_tokens.weight"


def openpi_key(our_key: str) -> str:
    """Our state-dict key -> the openpi PyTorch checkpoint key."""
    if _HEAD_KEYS.match(our_key):
        return our_key
    for ours, theirs, rules in _FAMILIES:
        if our_key.startswith(ours):
            rest = our_key[len(ours):]
            for pattern, repl in rules:
                new, count = re.subn(pattern, repl, rest, count=1)
                if count:
                    return theirs + new
    raise KeyError(f"no openpi name for {our_key!r}")


def lerobot_module_name(name: str) -> str | None:
    """Our module name -> the name LeRobot's model gives the same module (None: it has none)."""
    try:
        return "model." + openpi_key(name + ".weight")[:-len(".weight")]
    except KeyError:
        return None


def prefix(layout: str) -> str:
    return "model." if layout == "lerobot" else ""


def foreign_layout(tensor_names: list[str]) -> str | None:
    """"lerobot" or "openpi" from the tensor names; None when they are neither."""
    if any(k.startswith("model.paligemma_with_expert.") for k in tensor_names):
        return "lerobot"
    if any(k.startswith("paligemma_with_expert.") for k in tensor_names):
        return "openpi"
    return None


def canonical_openpi(key: str) -> str:
    for old, new in _ALIASES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def file_names(tensor_names: list[str], layout: str) -> dict[str, str]:
    """Canonical openpi name -> the name in a foreign file (prefix dropped, old aliases renamed)."""
    pre = prefix(layout)
    return {canonical_openpi(k[len(pre):]) if k.startswith(pre) else k: k for k in tensor_names}


def our_to_file(our_keys: list[str], in_file: set[str]) -> tuple[dict[str, str], list[str]]:
    """(our key -> canonical openpi name, names in the file nothing of ours uses but that may be
    dropped: the unused expert tensors and a PaliGemma lm_head tied to embed_tokens).

    A file may hold the tied lm_head in place of embed_tokens; that one is then read for both."""
    to_file = {k: openpi_key(k) for k in our_keys}
    if EMBED in to_file and to_file[EMBED] not in in_file and TIED_LM_HEAD in in_file:
        to_file[EMBED] = TIED_LM_HEAD
    droppable = [name for name in sorted(in_file - set(to_file.values())) if name in UNUSED or name == TIED_LM_HEAD]
    return to_file, droppable


def drop_reason(name: str) -> str:
    return UNUSED.get(name) or "tied to embed_tokens"


def foreign_shapes(weights: Path, tensor_names: list[str], layout: str) -> dict:
    """What the tensor shapes of an openpi / LeRobot file tell about the model: is_pi05,
    position-embedding rows, (vision width, patch size), action and state input widths."""
    pre = prefix(layout)
    with safe_open(str(weights), framework="pt") as f:
        def shape(key: str) -> list[int]:
            for candidate in (pre + key, *[pre + old + key[len(new):] for old, new in _ALIASES
                                           if key.startswith(new)]):
                if candidate in tensor_names:
                    return list(f.get_slice(candidate).get_shape())
            raise CheckpointError(f"{weights}: missing tensor {pre + key}")
        is_pi05 = any(k.endswith("time_mlp_in.weight") and "action_time" not in k for k in tensor_names)
        pos = shape(_PALI + "vision_tower.vision_model.embeddings.position_embedding.weight")
        patch = shape(_PALI + "vision_tower.vision_model.embeddings.patch_embedding.weight")
        return {"is_pi05": is_pi05, "positions": pos[0], "vision_width": patch[0], "patch_size": patch[-1],
                "action_width": shape("action_in_proj.weight")[1],  # (width, max_action_dim)
                "state_width": None if is_pi05 else shape("state_proj.weight")[1],
                "action_tensor": pre + "action_in_proj.weight", "state_tensor": pre + "state_proj.weight",
                "kind_tensors": "time_mlp_in" if is_pi05 else "state_proj and action_time_mlp_in"}


def foreign_state_dict(policy, layout: str) -> dict:
    """The policy's tensors under openpi (or LeRobot: "model." + openpi) names, as released
    checkpoints hold them: with the unused expert lm_head (zeros), which strict loaders expect;
    the PaliGemma lm_head stays tied to embed_tokens and is not written. (No torch import here:
    `pirecon.checkpoint.layout` tells folder kinds through this module and stays light.)"""
    if layout not in FOREIGN_LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {FOREIGN_LAYOUTS}")
    state = {openpi_key(k): v.detach().contiguous().cpu() for k, v in policy.state_dict().items()
             if not k.startswith(RECON_PREFIX)}
    expert = policy.config.expert
    like = policy.backbone.expert.layers[0].mlp.up_proj.weight
    state[_EXPERT_LM_HEAD] = like.new_zeros((expert.vocab_size, expert.width), device="cpu")
    return {prefix(layout) + k: v for k, v in state.items()}
