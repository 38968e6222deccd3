"""Named model sizes.

Every width, depth, head count and vocabulary size used by the model code comes from here
(through `PolicyConfig`); the model modules themselves hold no size literals.
"""

from __future__ import annotations

from dataclasses import dataclass

from pirecon.errors import ConfigError


@dataclass(frozen=True)
class GemmaSpec:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int


@dataclass(frozen=True)
class SiglipSpec:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int


GEMMA_VARIANTS: dict[str, GemmaSpec] = {
    # PaliGemma's language model (REFERENCE.md §1).
    "gemma_2b": GemmaSpec(width=2048, depth=18, mlp_dim=16384, num_heads=8, num_kv_heads=1,
                          head_dim=256, vocab_size=257152),
    # The action expert. Its vocabulary only matters for the unused lm_head of released checkpoints.
    "gemma_300m": GemmaSpec(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1,
                            head_dim=256, vocab_size=257152),
    # Laptop-sized stand-ins with the same structure (grouped KV heads, GeGLU, RoPE).
    "gemma_tiny": GemmaSpec(width=64, depth=2, mlp_dim=128, num_heads=2, num_kv_heads=1,
                            head_dim=32, vocab_size=1024),
    "gemma_tiny_expert": GemmaSpec(width=48, depth=2, mlp_dim=96, num_heads=2, num_kv_heads=1,
                                   head_dim=32, vocab_size=1024),
}

VISION_VARIANTS: dict[str, SiglipSpec] = {
    "siglip_so400m_14": SiglipSpec(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14),
    "siglip_tiny": SiglipSpec(width=64, depth=2, mlp_dim=128, num_heads=2, patch_size=14),
}

# `--policy.variant=NAME` sets the three parts at once.
POLICY_VARIANTS: dict[str, tuple[str, str, str]] = {
    # name: (vision_variant, paligemma_variant, action_expert_variant)
    "full": ("siglip_so400m_14", "gemma_2b", "gemma_300m"),
    "tiny": ("siglip_tiny", "gemma_tiny", "gemma_tiny_expert"),
}


def _lookup(table: dict, name: str, flag: str):
    if name not in table:
        raise ConfigError(f"{flag}={name!r} is not a known variant; expected one of {sorted(table)}")
    return table[name]


def gemma_spec(name: str, flag: str = "--policy.paligemma_variant") -> GemmaSpec:
    return _lookup(GEMMA_VARIANTS, name, flag)


def siglip_spec(name: str, flag: str = "--policy.vision_variant") -> SiglipSpec:
    return _lookup(VISION_VARIANTS, name, flag)


def policy_variant(name: str) -> tuple[str, str, str]:
    return _lookup(POLICY_VARIANTS, name, "--policy.variant")
