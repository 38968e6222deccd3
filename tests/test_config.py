import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from pirecon.configs.policy import PolicyConfig
from pirecon.configs.parse import from_dict, parse_flags, to_dict
from pirecon.errors import ConfigError


@dataclass(frozen=True)
class Peft:
    r: int = 16
    target_modules: list[str] | None = None


@dataclass(frozen=True)
class Top:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    peft: Peft = field(default_factory=Peft)
    steps: int = 10
    lr: float = 1e-4
    resume: bool = False
    camera_map: dict[str, str] = field(default_factory=dict)


def test_lerobot_style_flags():
    cfg = parse_flags(["--policy.type=pi05", "--policy.variant=tiny", "--peft.r=8",
                       "--peft.target_modules=[q_proj,v_proj]", "--steps=3", "--lr=2e-5", "--resume",
                       '--camera_map={"observation.images.top": "base_0_rgb"}'], Top)
    assert cfg.policy.type == "pi05" and cfg.policy.paligemma_variant == "gemma_tiny"
    assert cfg.peft == Peft(r=8, target_modules=["q_proj", "v_proj"])
    assert (cfg.steps, cfg.lr, cfg.resume) == (3, 2e-5, True)
    assert cfg.camera_map == {"observation.images.top": "base_0_rgb"}
    assert cfg.policy.max_token_len == 200


def test_unknown_flag_lists_close_matches():
    with pytest.raises(ConfigError, match=r"unknown flag --peft\.rank.*--peft\.r"):
        parse_flags(["--peft.rank=4"], Top)
    with pytest.raises(ConfigError, match=r"--steps='many': expected an integer"):
        parse_flags(["--steps=many"], Top)
    with pytest.raises(ConfigError, match=r"--resume='maybe': expected true or false"):
        parse_flags(["--resume=maybe"], Top)


def test_config_path_then_overrides(tmp_path):
    saved = tmp_path / "c.json"
    saved.write_text(json.dumps(to_dict(Top(steps=7, policy=PolicyConfig(type="pi05", variant="tiny")))))
    cfg = parse_flags([f"--config_path={saved}", "--steps=9"], Top, config_path_flag=True)
    assert cfg.steps == 9 and cfg.policy.type == "pi05" and cfg.policy.vision_variant == "siglip_tiny"
    with pytest.raises(ConfigError, match="config file not found"):
        parse_flags([f"--config_path={tmp_path / 'missing.json'}"], Top, config_path_flag=True)


def test_policy_config_round_trip_and_derived_sizes():
    cfg = PolicyConfig(type="pi0", variant="full")
    assert from_dict(PolicyConfig, to_dict(cfg)) == cfg
    assert (cfg.vlm.width, cfg.expert.width, cfg.vision.width) == (2048, 1024, 1152)
    assert cfg.tokens_per_image == 256 and cfg.max_token_len == 48
    with pytest.raises(ConfigError, match="share attention"):
        PolicyConfig(paligemma_variant="gemma_tiny", action_expert_variant="gemma_300m")


def test_cli_entry_points():
    out = subprocess.run([sys.executable, "-m", "pirecon", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "smoke" in out.stdout
    out = subprocess.run([sys.executable, "-m", "pirecon", "smok"], capture_output=True, text=True)
    assert out.returncode == 2 and "did you mean smoke" in out.stderr


def test_smoke_command_passes():
    out = subprocess.run([sys.executable, "-m", "pirecon", "smoke"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pi0 " in out.stdout and "pi05" in out.stdout and "FAILED" not in out.stdout


def test_space_separated_values_are_joined():
    from pirecon.configs.parse import join_flag_values

    argv = ["--policy.path=CKPT", "--host", "0.0.0.0", "--port", "8000", "--use_ema", "--serve.preset", "libero"]
    assert join_flag_values(argv) == ["--policy.path=CKPT", "--host=0.0.0.0", "--port=8000", "--use_ema",
                                      "--serve.preset=libero"]
    assert join_flag_values(["--a", "b", "c", "--d", "-1"]) == ["--a=b", "c", "--d=-1"]
