"""Upload a checkpoint folder to a Hugging Face Hub model repo (`pirecon push`, `--policy.push_to_hub`).

Only when the user asks: `--policy.push_to_hub=true --policy.repo_id=org/name` uploads the final
checkpoint of a run (rank 0); `pirecon push CKPT REPO_ID` does the same for any checkpoint folder. A
training checkpoint is exported first (LoRA merged, no optimizer state); a folder that already is a
stand-alone model is uploaded as it is.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pirecon.checkpoint.layout import CONFIG_FILE, WEIGHTS_FILE, is_training_checkpoint
from pirecon.errors import CheckpointError, ConfigError, HubError
from pirecon.hubcache import first_line, is_offline, parse_hub_id


def check_push_flags(push_to_hub: bool, repo_id: str | None) -> None:
    """Fail before training when `--policy.push_to_hub=true` cannot work."""
    if not push_to_hub:
        return
    if not repo_id:
        raise ConfigError("--policy.push_to_hub=true needs --policy.repo_id=ORG/NAME: the Hugging Face Hub repo "
                          "to upload the final checkpoint to")
    hub_id = parse_hub_id(repo_id)
    if hub_id is None or hub_id.revision:
        raise ConfigError(f"--policy.repo_id={repo_id!r}: expected a Hugging Face Hub repo id such as org/name")
    if is_offline():
        raise HubError(f"--policy.push_to_hub=true but HF_HUB_OFFLINE=1 forbids uploading to {repo_id}; unset "
                       f"HF_HUB_OFFLINE, or train without --policy.push_to_hub and later run "
                       f"`pirecon push OUTPUT_DIR/checkpoints/last {repo_id}`")


def push(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         use_ema: bool = False, commit_message: str | None = None) -> str:
    """Upload a checkpoint folder to the Hub model repo `repo_id` (created if missing); returns its URL.

    A training checkpoint is exported into a temporary folder first (adapters merged, EMA weights
    if `use_ema`). Nothing in `folder` changes, whether the upload works or fails."""
    folder = Path(folder)
    hub_id = parse_hub_id(repo_id)
    if hub_id is None:
        raise ConfigError(f"REPO_ID={repo_id!r}: expected a Hugging Face Hub repo id such as org/name")
    if hub_id.revision:
        if revision and revision != hub_id.revision:
            raise ConfigError(f"REPO_ID={repo_id} names revision {hub_id.revision} but --revision={revision}")
        revision = hub_id.revision
    repo_id = hub_id.repo_id
    retry = f"pirecon push {folder} {repo_id}" + (f" --revision={revision}" if revision else "")
    if is_offline():
        raise HubError(f"cannot push {folder} to {repo_id}: HF_HUB_OFFLINE=1 forbids network access; the folder "
                       f"stays on disk as it is; unset HF_HUB_OFFLINE and run `{retry}`")
    if not folder.is_dir():
        raise CheckpointError(f"CKPT={folder}: checkpoint folder not found (e.g. OUTPUT_DIR/checkpoints/last)")
    from huggingface_hub import HfApi  # lazy: 0.2 s to import, only to upload

    with _upload_ready(folder, use_ema) as upload_dir:
        api = HfApi()
        try:
            url = api.create_repo(repo_id, private=private or None, exist_ok=True)
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(upload_dir), revision=revision,
                              commit_message=commit_message or f"Upload pirecon checkpoint {folder.resolve().name}")
        except Exception as exc:  # network, auth and HTTP errors come in several types
            raise HubError(f"could not push {folder} to the Hugging Face Hub repo {repo_id} ({type(exc).__name__}: "
                           f"{first_line(exc)}); the folder stays on disk as it is; once the network and a token "
                           f"with write access (`hf auth login` or HF_TOKEN) are in place, run `{retry}`") from None
    print(f"pirecon: pushed {folder} to {url}" + (f" (revision {revision})" if revision else ""), file=sys.stderr)
    return str(url)


@contextmanager
def _upload_ready(folder: Path, use_ema: bool) -> Iterator[Path]:
    """`folder` itself when it is a stand-alone model, else a temporary export of it."""
    if not is_training_checkpoint(folder):
        if use_ema:
            raise ConfigError(f"--use_ema=true: {folder} is not a training checkpoint, so it has no EMA weights")
        missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
        if missing:
            raise CheckpointError(f"CKPT={folder}: no {' or '.join(missing)}; expected a training checkpoint "
                                  f"(OUTPUT_DIR/checkpoints/STEP) or an exported model folder")
        yield folder
        return
    from pirecon.checkpoint.export import export  # lazy: torch, needed only to export a training checkpoint

    parent = folder.resolve().parent  # same disk as the checkpoint; /tmp may be too small
    where = parent if os.access(parent, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix=".pirecon-push-", dir=where) as tmp:
        yield export(folder, Path(tmp) / "model", merge_lora=True, use_ema=use_ema)
