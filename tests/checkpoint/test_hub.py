"""Hub ids for --policy.pretrained_path / --dataset.repo_id, and pushing checkpoints.

No test touches the network: every test runs with HF_HUB_OFFLINE=1 (or explicitly online with the
HfApi calls replaced), a temporary HF_HUB_CACHE, and sockets that refuse any non-local connection
(and record it, so that an attempt fails the test even when huggingface_hub swallows the error).
"""

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi

from pirecon import cli, hubcache
from pirecon.checkpoint import upload
from pirecon.checkpoint.load import load, load_policy
from pirecon.checkpoint.write_pirecon import save_policy
from pirecon.configs.policy import PolicyConfig
from pirecon.configs.data import DatasetConfig
from pirecon.data.layout import dataset_root
from pirecon.data.lerobot import open_from_config
from pirecon.errors import CheckpointError, ConfigError, HubError
from pirecon.checkpoint.layout import last_checkpoint
from pirecon.checkpoint.load import load_model
from pirecon.train.command import parse_train_flags
from pirecon.train.loop import resolve_policy_config, train
from tests.train.helpers import tiny_train_flags

# The policy shape of tests.train.helpers.tiny_train_flags.
TINY = dict(type="pi0", variant="tiny", image_resolution=28, chunk_size=4, n_action_steps=2, max_state_dim=8,
            max_action_dim=8, camera_names=("base_0_rgb", "left_wrist_0_rgb"))


# ---------------------------------------------------------------------------------------------
# Isolation: offline, a private cache, no sockets


def _isolate(mp: pytest.MonkeyPatch, root: Path, online: bool = False) -> list[str]:
    """Point every HF path into `root`, set offline mode (or not), refuse and record network access."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        mp.delenv(name, raising=False)
    mp.setenv("HF_HOME", str(root / "hf-home"))
    mp.setenv("HF_HUB_CACHE", str(root / "hf-cache"))
    mp.setenv("HF_LEROBOT_HOME", str(root / "lerobot-home"))
    mp.setenv("HF_HUB_OFFLINE", "0" if online else "1")
    mp.setenv("HF_TOKEN", "hf_test_token_never_sent")
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as if imported without the variable
    attempts: list[str] = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        if sock.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1")):
            return connect(sock, address)
        attempts.append(f"connect {address}")
        raise OSError(f"test tried to reach {address}")

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host in (None, "localhost", "127.0.0.1", "::1"):
            return getaddrinfo(host, *args, **kwargs)
        attempts.append(f"getaddrinfo {host}")
        raise socket.gaierror(f"test tried to resolve {host}")

    mp.setattr(socket.socket, "connect", guarded_connect)
    mp.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    attempts = _isolate(monkeypatch, tmp_path)
    yield attempts
    assert not attempts, f"a test tried the network: {attempts}"


def go_online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"snapshot_download was called: {args} {kwargs}")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


# ---------------------------------------------------------------------------------------------
# A cache entry with the real layout: refs/<revision> -> sha, snapshots/<sha>/... -> ../blobs/<hash>


def fake_cache_entry(cache: Path, repo_type: str, repo_id: str, source: Path, revision: str = "main") -> Path:
    storage = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    sha = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snap = storage / "snapshots" / sha
    for file in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    ref = storage / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(sha)
    return snap


def tiny_checkpoint(folder: Path, **fields) -> Path:
    return save_policy(load_policy(PolicyConfig(**{**TINY, **fields})), folder)


def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Ids


@pytest.mark.parametrize("value, expected", [
    ("org/name", ("org/name", None)),
    ("lerobot/pi05_base", ("lerobot/pi05_base", None)),
    ("org/data.set-1@v2.1", ("org/data.set-1", "v2.1")),
    ("org/name@refs/pr/3", ("org/name", "refs/pr/3")),
    ("name", None), ("/abs/org/name", None), ("./org/name", None), ("~/org", None), ("org/name/extra", None),
    ("org/-bad", None), ("org--x/name", None), ("org/na..me", None), ("org/name@", None), ("org/", None),
])
def test_parse_hub_id(value, expected):
    parsed = hubcache.parse_hub_id(value)
    assert (None if parsed is None else (parsed.repo_id, parsed.revision)) == expected


def test_offline_and_cache_are_read_at_call_time(monkeypatch, tmp_path):
    assert hubcache.is_offline() and hubcache.cache_dir() == cache(tmp_path)
    go_online(monkeypatch)
    assert not hubcache.is_offline()
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hubcache.cache_dir() == tmp_path / "hf-home" / "hub"


# ---------------------------------------------------------------------------------------------
# Resolution from the cache, offline


def test_pretrained_hub_id_resolves_offline_from_the_cache(tmp_path):
    main = fake_cache_entry(cache(tmp_path), "model", "org/tiny-pi0", tiny_checkpoint(tmp_path / "src-main"))
    tagged = fake_cache_entry(cache(tmp_path), "model", "org/tiny-pi0",
                              tiny_checkpoint(tmp_path / "src-v1", chunk_size=6, n_action_steps=3), revision="v1")
    # The layout is the real one: huggingface_hub's own cache scan sees the repo and both revisions.
    info = huggingface_hub.scan_cache_dir(cache(tmp_path))
    (repo,) = [r for r in info.repos if r.repo_id == "org/tiny-pi0"]
    assert repo.repo_type == "model" and {r.commit_hash for r in repo.revisions} == {main.name, tagged.name}

    resolved = resolve_policy_config(PolicyConfig(pretrained_path="org/tiny-pi0"))
    assert Path(resolved.pretrained_path) == main and resolved.chunk_size == 4
    policy = load_policy(resolved.pretrained_path)
    assert policy.config.max_state_dim == 8
    resolved = resolve_policy_config(PolicyConfig(pretrained_path="org/tiny-pi0@v1"))
    assert Path(resolved.pretrained_path) == tagged and resolved.chunk_size == 6


def test_loading_a_hub_id_reads_the_cache_and_never_downloads(tmp_path, monkeypatch):
    go_online(monkeypatch)  # even online, `load` itself never fetches: only --policy.pretrained_path does
    snap = fake_cache_entry(cache(tmp_path), "model", "org/tiny-pi0", tiny_checkpoint(tmp_path / "src", chunk_size=6))
    loaded = load("org/tiny-pi0", with_weights=False)
    assert loaded.folder == snap and loaded.layout == "pirecon" and loaded.config.chunk_size == 6
    assert load("org/tiny-pi0").policy.config.chunk_size == 6
    with pytest.raises(CheckpointError, match="org/missing: checkpoint folder not found"):
        load("org/missing")


def test_dataset_hub_id_resolves_offline_from_the_cache(tmp_path, sim_dataset, monkeypatch):
    snap = fake_cache_entry(cache(tmp_path), "dataset", "org/sim-demos", sim_dataset)
    cfg = DatasetConfig(repo_id="org/sim-demos")
    assert dataset_root(cfg) == snap
    dataset = open_from_config(cfg, action_horizon=4)
    assert len(dataset) > 0 and dataset[0]["action"].shape[0] == 4
    # The model cache is a different namespace: a model repo of the same name is not a dataset.
    fake_cache_entry(cache(tmp_path), "model", "org/other", sim_dataset)
    with pytest.raises(HubError, match="--dataset.repo_id=org/other"):
        dataset_root(DatasetConfig(repo_id="org/other"))
    # With --dataset.root the repo_id only names the dataset: nothing is looked up.
    no_download(monkeypatch)
    assert dataset_root(DatasetConfig(root=str(sim_dataset), repo_id="org/not-cached")) == sim_dataset


def test_lerobot_home_copy_still_wins_over_the_hub(tmp_path, monkeypatch, sim_dataset):
    shutil.copytree(sim_dataset, tmp_path / "lerobot-home" / "org" / "local-copy")
    no_download(monkeypatch)
    go_online(monkeypatch)
    assert dataset_root(DatasetConfig(repo_id="org/local-copy")) == tmp_path / "lerobot-home" / "org" / "local-copy"


@pytest.mark.timeout(30)
def test_missing_entry_offline_is_one_clear_error_fast(tmp_path, sim_dataset, capsys):
    start = time.monotonic()
    with pytest.raises(HubError) as info:
        resolve_policy_config(PolicyConfig(pretrained_path="org/not-cached"))
    message = str(info.value)
    assert "--policy.pretrained_path=org/not-cached" in message
    assert "HF_HUB_OFFLINE=1" in message and "--policy.pretrained_path=/path/to/folder" in message
    assert "local_files_only" not in message  # huggingface_hub's wording about its own arguments is left out
    with pytest.raises(HubError) as info:
        dataset_root(DatasetConfig(repo_id="org/no-data@v2.1"))
    message = str(info.value)
    assert "--dataset.repo_id=org/no-data@v2.1" in message and "--dataset.root=DIR" in message
    # Through the command line: one line on stderr, exit code 2, no traceback.
    code = cli.main(["train", "--policy.pretrained_path=org/not-cached", f"--dataset.root={sim_dataset}",
                     f"--output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pirecon train: error: --policy.pretrained_path=org/not-cached")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Online: what is asked of huggingface_hub (its download replaced)


def test_online_hub_ids_go_through_snapshot_download(tmp_path, monkeypatch):
    go_online(monkeypatch)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache-set-later"))
    model_dir = tiny_checkpoint(tmp_path / "downloaded-model")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(model_dir)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_policy_config(PolicyConfig(pretrained_path="org/pi0-tiny@abc")).pretrained_path == str(model_dir)
    dataset_root(DatasetConfig(repo_id="org/demos@v2.1"))
    assert calls == [
        ("org/pi0-tiny", dict(repo_type="model", revision="abc", cache_dir=str(tmp_path / "cache-set-later"),
                              local_files_only=False)),
        ("org/demos", dict(repo_type="dataset", revision="v2.1", cache_dir=str(tmp_path / "cache-set-later"),
                           local_files_only=False)),
    ]
    # Offline, the same request reads only the cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dataset_root(DatasetConfig(repo_id="org/demos"))
    assert calls[-1][1]["local_files_only"] is True


def test_online_download_failure_names_the_id_and_the_local_flag(monkeypatch):
    go_online(monkeypatch)

    def failing(repo_id, **kwargs):
        raise OSError("Repository Not Found for url: https://huggingface.co/api/models/org/typo\nmore lines")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    with pytest.raises(HubError) as info:
        resolve_policy_config(PolicyConfig(pretrained_path="org/typo"))
    message = str(info.value)
    assert "--policy.pretrained_path=org/typo" in message and "Repository Not Found" in message
    assert "--policy.pretrained_path=/path/to/folder" in message and "more lines" not in message


# ---------------------------------------------------------------------------------------------
# Local folders always win


def test_existing_folder_that_looks_like_a_hub_id_is_a_folder(tmp_path, monkeypatch, sim_dataset):
    go_online(monkeypatch)  # even online, an existing folder is never looked up
    no_download(monkeypatch)
    monkeypatch.chdir(tmp_path)
    tiny_checkpoint(tmp_path / "org" / "name")
    shutil.copytree(sim_dataset, tmp_path / "org" / "data")
    assert hubcache.parse_hub_id("org/name") is not None
    resolved = resolve_policy_config(PolicyConfig(pretrained_path="org/name"))
    assert resolved.pretrained_path == "org/name" and resolved.chunk_size == 4
    assert dataset_root(DatasetConfig(repo_id="org/data")) == Path("org/data")


def test_values_that_are_no_hub_ids_never_reach_the_hub(tmp_path, monkeypatch):
    go_online(monkeypatch)
    no_download(monkeypatch)
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        resolve_policy_config(PolicyConfig(pretrained_path=str(tmp_path / "missing" / "ckpt")))
    with pytest.raises(ConfigError, match="--dataset.repo_id=just-a-name.*--dataset.root=DIR"):
        dataset_root(DatasetConfig(repo_id="just-a-name"))


def test_a_downloaded_checkpoint_never_decides_where_to_push(tmp_path):
    folder = tiny_checkpoint(tmp_path / "ckpt", push_to_hub=True, repo_id="someone/else")
    assert json.loads((folder / "config.json").read_text())["policy"]["push_to_hub"] is True
    resolved = resolve_policy_config(PolicyConfig(pretrained_path=str(folder)))
    assert resolved.push_to_hub is False and resolved.repo_id is None
    resolved = resolve_policy_config(PolicyConfig(pretrained_path=str(folder), push_to_hub=True, repo_id="me/mine"))
    assert resolved.push_to_hub is True and resolved.repo_id == "me/mine"


# ---------------------------------------------------------------------------------------------
# Push


@pytest.fixture(scope="module")
def failed_push_run(sim_dataset, sim_tokenizer, tmp_path_factory):
    """A LoRA run with --policy.push_to_hub whose upload fails (the network 'drops' at the end)."""
    root = tmp_path_factory.mktemp("push-run")
    out = root / "run"
    seen = {}

    def failing_upload(self, *, repo_id, folder_path, **kwargs):
        seen.update(repo_id=repo_id, files=tree(Path(folder_path)), folder=Path(folder_path))
        raise ConnectionError("simulated: network is unreachable")
    with pytest.MonkeyPatch.context() as mp:
        attempts = _isolate(mp, root, online=True)
        mp.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")
        mp.setattr(HfApi, "upload_folder", failing_upload)
        cfg = parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=2", "--policy.use_peft",
                                                 "--policy.push_to_hub=true", "--policy.repo_id=org/tiny-run"))
        with pytest.raises(HubError) as info:
            train(cfg)
    assert not attempts, attempts
    return out, info.value, seen


def test_push_to_hub_failure_at_the_end_of_training_keeps_the_run(failed_push_run):
    out, error, seen = failed_push_run
    ckpt = last_checkpoint(out)
    message = str(error)
    assert f"pirecon push {ckpt} org/tiny-run" in message and "simulated: network is unreachable" in message
    # The upload was tried, with an export-ready folder: merged weights, no optimizer state.
    assert seen["repo_id"] == "org/tiny-run"
    assert {"model.safetensors", "config.json", "norm_stats.json", "tokenizer.model", "data_info.json"} <= set(
        seen["files"])
    assert not any(name.startswith(("training_state", "adapter", "trainable")) for name in seen["files"])
    assert not seen["folder"].exists()  # the temporary export is gone ...
    assert not list(ckpt.parent.glob(".pirecon-push-*"))
    # ... and the run is whole: log, checkpoint with its training state, loadable and resumable.
    assert ckpt.name == "000002" and (ckpt / "training_state.pt").is_file() and (out / "log.jsonl").is_file()
    assert load_model(ckpt, merge_lora=True).config.chunk_size == 4
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["train"]["policy"]["push_to_hub"] is True


def test_push_uploads_an_export_of_a_training_checkpoint(failed_push_run, monkeypatch, tmp_path):
    ckpt = last_checkpoint(failed_push_run[0])
    before = tree(ckpt)
    go_online(monkeypatch)
    calls, uploaded = [], tmp_path / "uploaded"

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id, {k: v for k, v in kwargs.items() if k != "commit_message"}))
        shutil.copytree(folder_path, uploaded)
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert cli.main(["push", str(ckpt), "org/tiny", "--private", "--revision", "dev"]) == 0
    assert calls == [("create_repo", "org/tiny", {"private": True, "exist_ok": True}),
                     ("create_branch", "org/tiny", {"branch": "dev", "exist_ok": True}),
                     ("upload_folder", "org/tiny", {"revision": "dev"})]
    assert "training_state.pt" not in tree(uploaded) and "model.safetensors" in tree(uploaded)
    # What was uploaded is the merged policy of the checkpoint, tensor for tensor.
    merged = load_model(ckpt, merge_lora=True).state_dict()
    hub_policy = load_policy(uploaded).state_dict()
    assert hub_policy.keys() <= merged.keys() and len(hub_policy) > 10
    assert all(torch.equal(hub_policy[k], merged[k]) for k in hub_policy)
    assert tree(ckpt) == before and not list(ckpt.parent.glob(".pirecon-push-*"))


def test_push_uploads_a_standalone_folder_as_it_is(tmp_path, monkeypatch):
    folder = tiny_checkpoint(tmp_path / "exported")
    go_online(monkeypatch)
    seen = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, *, branch, **kw: seen.append(("branch", branch)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *, repo_id, folder_path, **kw: seen.append(
        (folder_path, kw["revision"])))
    assert upload.push(folder, "org/tiny@v1") == "https://huggingface.co/org/tiny"
    assert seen == [("branch", "v1"), (str(folder), "v1")]
    with pytest.raises(ConfigError, match="--use_ema=true"):
        upload.push(folder, "org/tiny", use_ema=True)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text("{}")
        upload.push(tmp_path / "empty", "org/tiny")


@pytest.mark.timeout(30)
def test_push_offline_fails_at_once_and_leaves_the_folder(failed_push_run, monkeypatch, capsys):
    ckpt = last_checkpoint(failed_push_run[0])
    before = tree(ckpt)

    def never(*args, **kwargs):
        raise AssertionError("HfApi was called while offline")
    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, never)
    start = time.monotonic()
    code = cli.main(["push", str(ckpt), "org/tiny"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 5
    assert "HF_HUB_OFFLINE=1" in err and f"pirecon push {ckpt} org/tiny" in err and "Traceback" not in err
    assert tree(ckpt) == before and not list(ckpt.parent.glob(".pirecon-push-*"))


def test_push_command_line_mistakes(tmp_path, capsys):
    assert cli.main(["push", str(tmp_path)]) == 2
    assert "expected `pirecon push CKPT REPO_ID`" in capsys.readouterr().err
    assert cli.main(["push", str(tmp_path), "not a repo"]) == 2
    assert "expected a Hugging Face Hub repo id such as org/name" in capsys.readouterr().err
    assert cli.main(["push", "--help"]) == 0 and "pirecon push CKPT REPO_ID" in capsys.readouterr().out


def test_push_to_hub_flags_are_checked_before_training(tmp_path, sim_dataset, sim_tokenizer):
    assert PolicyConfig().push_to_hub is False
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="--policy.push_to_hub=true needs --policy.repo_id=ORG/NAME"):
        train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--policy.push_to_hub=true")))
    with pytest.raises(ConfigError, match="--policy.repo_id='org/a/b'"):
        train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--policy.push_to_hub=true",
                                                 "--policy.repo_id=org/a/b")))
    # Offline (this test's default), pushing cannot work: say so before hours of training.
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1.*pirecon push OUTPUT_DIR/checkpoints/last org/x"):
        train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--policy.push_to_hub=true",
                                                 "--policy.repo_id=org/x")))
    assert not out.exists()
