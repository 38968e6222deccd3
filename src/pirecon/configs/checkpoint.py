"""`pirecon export` and `pirecon push`: writing a checkpoint out as a stand-alone folder, or to the Hub."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExportPolicyFlags:
    path: str | None = None  # a training checkpoint folder (or a training output folder: its checkpoints/last)
    tokenizer_path: str | None = None  # the tokenizer to copy (default: the source's own copy)
    asset_id: str | None = None  # openpi sources with several assets/<asset_id>/norm_stats.json


@dataclass(frozen=True)
class ExportConfig:
    policy: ExportPolicyFlags = field(default_factory=ExportPolicyFlags)
    output: str | None = None  # folder to write
    merge_lora: bool = True  # fold LoRA adapters into the base weights
    use_ema: bool = False  # export the EMA weights
    keep_recon_head: bool = False  # the head only matters for training; serving never runs it
    format: str = "pirecon"  # pirecon | lerobot | openpi folder layout
    asset_id: str | None = None  # --format=openpi: assets/<asset_id>/norm_stats.json
    tokenizer_name: str | None = None  # --format=lerobot: the tokenizer_name the preprocessor names
    overwrite: bool = False  # replace an existing output folder


@dataclass(frozen=True)
class PushFlags:
    private: bool = False  # create the Hub repo as private
    revision: str | None = None  # branch to upload to (none: the default branch)
    use_ema: bool = False  # upload the EMA weights
    commit_message: str | None = None  # the Hub commit message (none: a generated one)
