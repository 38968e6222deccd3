"""LeRobot's `lerobot-train` flags and train_config.json: each lands in the pirecon field that
uses it, or is accepted only at LeRobot's default with one error naming it otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pirecon.configs.lerobot import AS, DEFAULT_ONLY, FLAGS, flag_table_markdown
from pirecon.errors import ConfigError
from pirecon.train.command import parse_train_command

HERE = Path(__file__).parent
LEROBOT_CONFIG = HERE / "data" / "lerobot_train_config.json"  # as lerobot-train 0.6.2 writes it
MIGRATING = HERE.parents[1] / "docs" / "migrating.md"


def field(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("flag", [f for f in FLAGS if f.status == AS], ids=lambda f: f.name)
def test_a_lerobot_name_lands_in_ours(flag):
    value = {"grad_accum_steps": ("4", 4), "policy.time_beta_alpha": ("2.5", 2.5), "env_eval_freq": ("500", 500),
             "policy.time_beta_beta": ("0.5", 0.5)}[flag.ours]
    parsed = parse_train_command([f"--{flag.name}", value[0]])
    assert field(parsed.config, flag.ours) == value[1] and flag.ours in parsed.typed


def other_text(default) -> str:
    if isinstance(default, bool):
        return str(not default).lower()
    if isinstance(default, (int, float)):
        return str(default + 1)
    if isinstance(default, list):
        return "[something_else]"
    if isinstance(default, dict):
        return '{"other": 1}'
    return "something_else"


def default_text(default) -> str:
    if default is None:
        return "null"
    if isinstance(default, (list, dict)):
        return json.dumps(default)
    return str(default).lower() if isinstance(default, bool) else str(default)


@pytest.mark.parametrize("flag", [f for f in FLAGS if f.status == DEFAULT_ONLY], ids=lambda f: f.name)
def test_a_lerobot_feature_we_lack_takes_its_default_and_refuses_another_value(flag):
    plain = parse_train_command([])
    assert parse_train_command([f"--{flag.name}={default_text(flag.default)}"]).config == plain.config
    with pytest.raises(ConfigError) as info:
        parse_train_command([f"--{flag.name}={other_text(flag.default)}"])
    assert str(info.value).startswith(f"--{flag.name}=") and "pirecon accepts only LeRobot's default" in str(info.value)


def test_the_issue_script_parses_with_lerobots_meanings(tmp_path):
    argv = ["--policy.type=pi05", "--dataset.repo_id=HuggingFaceVLA/libero", "--policy.pretrained_path=lerobot/pi05_base",
            "--policy.device=cuda", "--policy.compile_model=true", "--policy.gradient_checkpointing=true",
            "--policy.dtype=bfloat16", "--policy.freeze_vision_encoder=false", "--policy.train_expert_only=false",
            "--steps", "3000", "--batch_size=32", "--output_dir=outputs/x", "--job_name=pi05_libero",
            "--wandb.enable=true", "--wandb.project=myproj", "--policy.repo_id=me/pi05_x", "--policy.push_to_hub=false",
            "--policy.use_peft=true", "--peft.method_type=LORA", "--peft.r=16", "--peft.target_modules=[q_proj,v_proj]",
            "--policy.path=lerobot/pi05_base", "--use_policy_training_preset=true", "--dataset.video_backend=pyav",
            "--rename_map", '{"observation.images.image": "observation.images.base_0_rgb"}',
            "--policy.empty_cameras=1", '--policy.normalization_mapping={"VISUAL": "IDENTITY", "STATE": "QUANTILES", '
            '"ACTION": "QUANTILES"}']
    cfg = parse_train_command(argv).config
    p = cfg.policy
    assert (p.type, p.pretrained_path, p.device, p.compile_model, p.gradient_checkpointing, p.dtype) == \
        ("pi05", "lerobot/pi05_base", "cuda", True, True, "bfloat16")
    assert (p.freeze_vision_encoder, p.train_expert_only, p.repo_id, p.push_to_hub, p.use_peft) == \
        (False, False, "me/pi05_x", False, True)
    assert (cfg.steps, cfg.batch_size, cfg.output_dir, cfg.job_name, cfg.wandb.enable, cfg.wandb.project) == \
        (3000, 32, "outputs/x", "pi05_libero", True, "myproj")
    assert (cfg.peft.method_type, cfg.peft.r, cfg.peft.target_modules) == ("lora", 16, ["q_proj", "v_proj"])
    assert cfg.dataset.repo_id == "HuggingFaceVLA/libero" and cfg.dataset.camera_map == {
        "observation.images.image": "base_0_rgb"}
    assert p.camera_names[-1] == "empty_camera_0" and p.normalization_mode == "quantile"


def test_a_lerobot_train_config_json_loads():
    parsed = parse_train_command([f"--config_path={LEROBOT_CONFIG}"])
    cfg = parsed.config
    p = cfg.policy
    assert (p.type, p.pretrained_path, p.dtype, p.image_resolution, p.normalization_mode) == \
        ("pi05", "lerobot/pi05_base", "bfloat16", 224, "quantile")
    assert p.camera_names == ("base_0_rgb", "left_wrist_0_rgb")  # its input_features' cameras
    assert (p.gradient_checkpointing, p.compile_model, p.optimizer_lr, p.scheduler_decay_steps) == \
        (True, True, 2.5e-5, 30000)
    assert (cfg.steps, cfg.batch_size, cfg.job_name, cfg.tolerance_s, cfg.wandb.project) == \
        (3000, 32, "pi05_libero", 1e-4, "myproj")
    assert cfg.dataset.camera_map == {"observation.images.image": "base_0_rgb",
                                      "observation.images.image2": "left_wrist_0_rgb"}
    assert (cfg.optimizer.type, cfg.scheduler.num_decay_steps) == ("adamw", 30000)
    assert (cfg.peft.method_type, cfg.peft.target_modules) == ("lora", ["q_proj", "v_proj"])
    # Flags typed now win over the file.
    assert parse_train_command([f"--config_path={LEROBOT_CONFIG}", "--steps=10"]).config.steps == 10


def test_a_lerobot_setting_we_lack_in_the_file_is_named(tmp_path):
    data = json.loads(LEROBOT_CONFIG.read_text())
    data["dataset"]["streaming"] = True
    bad = tmp_path / "train_config.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=rf"{bad}: dataset.streaming=True: pirecon accepts only LeRobot's default "
                                          r"\(false\) here: datasets are read from disk"):
        parse_train_command([f"--config_path={bad}"])
    data["dataset"]["streaming"] = False
    data["policy"]["flux_capacitor"] = 3
    bad.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"policy.flux_capacitor=3: pirecon has no such setting"):
        parse_train_command([f"--config_path={bad}"])


def test_docs_migrating_carries_the_table():
    text = MIGRATING.read_text()
    begin, end = "<!-- lerobot-flags:begin (generated by pirecon.configs.lerobot.flag_table_markdown) -->\n", \
        "<!-- lerobot-flags:end -->"
    assert begin in text and end in text
    block = text.split(begin, 1)[1].split(end, 1)[0]
    assert block == flag_table_markdown(), (
        "docs/migrating.md's LeRobot table is stale; regenerate it with\n  python -c 'from pirecon.configs.lerobot "
        "import flag_table_markdown as t; print(t(), end=\"\")'")


def test_rtc_training_max_delay_is_lerobots_flag_and_setting(tmp_path):
    """Training-time real-time chunking: LeRobot's flag and train_config.json key land as typed."""
    assert parse_train_command(["--policy.rtc_training_max_delay=10"]).config.policy.rtc_training_max_delay == 10
    data = json.loads(LEROBOT_CONFIG.read_text())
    data["policy"]["rtc_training_max_delay"] = 10
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps(data))
    assert parse_train_command([f"--config_path={path}"]).config.policy.rtc_training_max_delay == 10
    with pytest.raises(ConfigError, match=r"--policy.rtc_training_max_delay=50: expected 0 <= delay < chunk_size"):
        parse_train_command(["--policy.rtc_training_max_delay=50"])
