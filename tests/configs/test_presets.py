"""Training presets (openpi's configs as flags): the values land, typed flags and --config_path rank
around them as documented, unknown names fail with close matches, `pirecon presets` prints them.

The expected numbers are written out from openpi's src/openpi/training/config.py (and
optimizer.py / pi0_config.py / gemma.py defaults), not read from pirecon's preset table."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from pirecon.cli import main
from pirecon.configs.presets import PRESETS, preset_markdown
from pirecon.configs.train import TrainConfig, resolve_optimization
from pirecon.errors import ConfigError
from pirecon.train.command import parse_train_command


def at(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def plain(value):
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_parses_into_a_valid_train_config_holding_its_values(name):
    parsed = parse_train_command([f"--preset={name}"])
    assert isinstance(parsed.config, TrainConfig) and parsed.config.preset == name
    for value in PRESETS[name].values:
        assert plain(at(parsed.config, value.flag)) == plain(value.value), value.flag
    flags = {v.flag for v in PRESETS[name].values}
    assert parsed.from_preset == flags and flags <= parsed.typed  # typed: they win over a pretrained folder
    # The optimizer that runs is the preset's (LeRobot's policy training preset mechanism).
    optimizer, scheduler = resolve_optimization(parsed.config, parsed.typed)
    assert (optimizer.type, optimizer.lr, scheduler.peak_lr) == ("adamw", parsed.config.policy.optimizer_lr,
                                                                parsed.config.policy.optimizer_lr)
    # Each preset cites the openpi config it mirrors and says where it differs.
    assert f'TrainConfig(name="{name}")' in PRESETS[name].source and PRESETS[name].notes


def test_pi05_libero_is_openpis_pi05_libero():
    cfg = parse_train_command(["--preset=pi05_libero"]).config
    policy = cfg.policy
    # model=Pi0Config(pi05=True, action_horizon=10, discrete_state_input=False); max_token_len 200 for pi05
    assert (policy.type, policy.chunk_size, policy.tokenizer_max_length) == ("pi05", 10, 200)
    assert (policy.max_action_dim, policy.max_state_dim, policy.image_resolution) == (32, 32, 224)
    assert (policy.paligemma_variant, policy.action_expert_variant, policy.dtype) == ("gemma_2b", "gemma_300m",
                                                                                      "bfloat16")
    # batch_size=256, num_train_steps=30_000, ema_decay=0.999, seed 42
    assert (cfg.batch_size, cfg.steps, cfg.ema_decay, cfg.seed) == (256, 30_000, 0.999, 42)
    # CosineDecaySchedule(warmup_steps=10_000, peak_lr=5e-5, ..., decay_lr=5e-5); AdamW(b1 .9, b2 .95, eps 1e-8,
    # weight_decay 1e-10, clip_gradient_norm=1.0)
    assert (policy.optimizer_lr, policy.scheduler_warmup_steps, policy.scheduler_decay_lr) == (5e-5, 10_000, 5e-5)
    assert (policy.optimizer_betas, policy.optimizer_eps, policy.optimizer_weight_decay,
            policy.optimizer_grad_clip_norm) == ((0.9, 0.95), 1e-8, 1e-10, 1.0)
    # quantile normalisation for pi05, openpi's augmentation, loss over every padded dim, full fine-tune
    assert (policy.normalization_mode, policy.loss_reduction, policy.use_peft) == ("quantile", "all", False)
    assert (cfg.dataset.image_transforms.enable, cfg.dataset.image_transforms.recipe) == (True, "openpi")
    assert cfg.dataset.camera_map == {"image": "base_0_rgb", "wrist_image": "left_wrist_0_rgb"}
    assert (policy.n_action_steps, policy.use_dataset_stats) == (5, True)  # openpi's LIBERO client replans every 5


def test_pi05_libero_learning_rate_is_openpis_at_every_step():
    """openpi: warmup 10_000 from 5e-5/10_001, then flat 5e-5 (decay_lr = peak_lr), never scaled."""
    from pirecon.train.schedule import lr_factor

    cfg = parse_train_command(["--preset=pi05_libero"]).config
    _, scheduler = resolve_optimization(cfg, frozenset())
    factor = lr_factor(scheduler, cfg.steps)
    for step in (0, 1, 5_000, 9_999, 10_000, 20_000, 29_999):
        openpi = 5e-5 / 10_001 + (5e-5 - 5e-5 / 10_001) * step / 10_000 if step < 10_000 else 5e-5
        assert 5e-5 * factor(step) == pytest.approx(openpi, rel=1e-9), step


def test_the_other_presets_hold_openpis_numbers():
    low = parse_train_command(["--preset=pi0_libero_low_mem_finetune"]).config
    # Pi0Config(paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora"), ema_decay=None
    assert (low.policy.type, low.policy.use_peft, low.peft.preset, low.peft.r, low.ema_decay) == (
        "pi0", True, "openpi", None, None)
    assert (low.policy.chunk_size, low.policy.tokenizer_max_length, low.policy.normalization_mode) == (50, 48, "mean_std")
    # CosineDecaySchedule() defaults: warmup 1_000, peak 2.5e-5, decay_steps 30_000, decay_lr 2.5e-6
    assert (low.policy.optimizer_lr, low.policy.scheduler_warmup_steps, low.policy.scheduler_decay_steps,
            low.policy.scheduler_decay_lr) == (2.5e-5, 1_000, 30_000, 2.5e-6)
    assert (low.batch_size, low.steps) == (32, 30_000)
    full = parse_train_command(["--preset=pi0_libero"]).config
    assert (full.policy.use_peft, full.ema_decay, full.batch_size, full.policy.chunk_size) == (False, 0.99, 32, 50)
    droid = parse_train_command(["--preset=pi05_droid"]).config
    assert (droid.policy.chunk_size, droid.policy.n_action_steps, droid.policy.asset_id) == (15, 8, "droid")
    assert droid.policy.use_dataset_stats is False
    assert droid.dataset.camera_map == {"exterior_image_1_left": "base_0_rgb", "wrist_image_left": "left_wrist_0_rgb"}
    tune = parse_train_command(["--preset=pi05_droid_finetune"]).config
    assert (tune.policy.chunk_size, tune.steps, tune.batch_size) == (16, 20_000, 32)
    aloha = parse_train_command(["--preset=pi0_aloha_sim"]).config
    assert (aloha.policy.type, aloha.steps, aloha.policy.n_action_steps) == ("pi0", 20_000, 10)
    assert aloha.dataset.camera_map == {"observation.images.top": "base_0_rgb"}


def test_the_low_mem_preset_adapts_both_gemma_stacks_with_openpis_ranks():
    from pirecon.checkpoint.keys import lerobot_module_name
    from pirecon.checkpoint.load import load_policy
    from pirecon.train.peft_plan import lora_plan

    cfg = parse_train_command(["--preset=pi0_libero_low_mem_finetune", "--policy.variant=tiny",
                               "--policy.image_resolution=28"]).config
    policy = load_policy(cfg.policy)
    plan = lora_plan(policy, cfg.peft, lerobot_module_name)
    vlm = {r for t, r in plan.ranks.items() if t.startswith("backbone.vlm.")}
    expert = {r for t, r in plan.ranks.items() if t.startswith("backbone.expert.")}
    assert (vlm, expert) == ({16}, {32})  # gemma_2b_lora rank 16, gemma_300m_lora rank 32
    assert all(plan.alphas[t] == plan.ranks[t] for t in plan.targets)  # LoRAConfig(alpha=rank)
    assert "backbone.vision" in plan.full  # get_freeze_filter freezes only the Gemma stacks


def test_typed_flags_beat_the_preset_wherever_they_stand():
    for argv in (["--preset=pi05_libero", "--batch_size=32", "--policy.optimizer_lr=1e-4", "--ema_decay=none"],
                 ["--batch_size=32", "--policy.optimizer_lr", "1e-4", "--ema_decay=none", "--preset", "pi05_libero"]):
        parsed = parse_train_command(argv)
        cfg = parsed.config
        assert (cfg.batch_size, cfg.policy.optimizer_lr, cfg.ema_decay, cfg.policy.chunk_size) == (32, 1e-4, None, 10)
        assert "batch_size" not in parsed.from_preset and "policy.chunk_size" in parsed.from_preset
    # LeRobot's spelling of a field counts as typing it.
    parsed = parse_train_command(["--preset=pi05_libero", "--policy.time_sampling_beta_alpha=2.0"])
    assert parsed.config.policy.time_beta_alpha == 2.0 and "policy.time_beta_alpha" not in parsed.from_preset


def test_another_spelling_of_a_preset_value_replaces_it():
    cfg = parse_train_command(["--preset=pi05_libero",
                               '--rename_map={"observation.images.image2": "observation.images.left_wrist_0_rgb"}',
                               "--policy.variant=tiny",
                               '--policy.normalization_mapping={"VISUAL": "IDENTITY", "STATE": "MEAN_STD", '
                               '"ACTION": "MEAN_STD"}']).config
    assert cfg.dataset.camera_map == {"observation.images.image2": "left_wrist_0_rgb"}  # not joined with the preset's
    assert (cfg.policy.paligemma_variant, cfg.policy.normalization_mode) == ("gemma_tiny", "mean_std")


def test_the_preset_ranks_above_config_path_and_a_files_preset_beneath_its_values(tmp_path):
    config = tmp_path / "train_config.json"
    config.write_text(json.dumps({"batch_size": 7, "keep_last_checkpoints": 5, "policy": {"chunk_size": 6}}))
    cfg = parse_train_command([f"--config_path={config}", "--preset=pi05_libero"]).config
    assert (cfg.batch_size, cfg.policy.chunk_size, cfg.keep_last_checkpoints) == (256, 10, 5)
    cfg = parse_train_command([f"--config_path={config}", "--preset=pi05_libero", "--batch_size=9"]).config
    assert cfg.batch_size == 9
    # A "preset" key in the file: beneath the file's own values.
    config.write_text(json.dumps({"preset": "pi05_libero", "batch_size": 7, "dataset": {"root": "/data/x"}}))
    parsed = parse_train_command([f"--config_path={config}"])
    assert (parsed.config.batch_size, parsed.config.policy.chunk_size, parsed.config.dataset.root) == (7, 10, "/data/x")
    assert parsed.config.dataset.image_transforms.recipe == "openpi" and "policy.chunk_size" in parsed.typed
    config.write_text(json.dumps({"preset": "pi05_librero"}))
    with pytest.raises(ConfigError, match=r"train_config.json: preset=pi05_librero: no such preset; did you mean "
                                          r"pi05_libero"):
        parse_train_command([f"--config_path={config}"])


def test_preset_values_win_over_the_pretrained_folder_and_typed_ones_over_both(tmp_path):
    from pirecon.checkpoint.load import load_policy
    from pirecon.checkpoint.write_pirecon import save_policy
    from pirecon.configs.policy import PolicyConfig
    from pirecon.train.loop import resolve_policy_config

    folder = tmp_path / "tiny"
    save_policy(load_policy(PolicyConfig(type="pi05", variant="tiny", chunk_size=4, n_action_steps=4,
                                         image_resolution=28, max_state_dim=8, max_action_dim=8)), folder)
    tiny = ["--policy.variant=tiny", "--policy.image_resolution=28", "--policy.max_state_dim=8",
            "--policy.max_action_dim=8"]
    parsed = parse_train_command(["--preset=pi05_libero", f"--policy.pretrained_path={folder}", *tiny])
    resolved = resolve_policy_config(parsed.config.policy, parsed.typed)
    assert (resolved.chunk_size, resolved.n_action_steps, resolved.loss_reduction) == (10, 5, "all")  # folder: 4, 4
    parsed = parse_train_command(["--preset=pi05_libero", f"--policy.pretrained_path={folder}", *tiny,
                                  "--policy.chunk_size=6"])
    assert resolve_policy_config(parsed.config.policy, parsed.typed).chunk_size == 6


def test_a_size_the_folder_cannot_take_is_an_error_naming_the_preset(tmp_path, capsys):
    from pirecon.checkpoint.load import load_policy
    from pirecon.checkpoint.write_pirecon import save_policy
    from pirecon.configs.policy import PolicyConfig

    folder = tmp_path / "tiny"
    save_policy(load_policy(PolicyConfig(type="pi05", variant="tiny", chunk_size=4, n_action_steps=4,
                                         image_resolution=28, max_state_dim=8, max_action_dim=8)), folder)
    assert main(["train", "--preset=pi05_libero", f"--policy.pretrained_path={folder}", "--dataset.root=/nowhere",
                 f"--output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "--policy.vision_variant=siglip_so400m_14 but" in err
    assert "the value of --preset=pi05_libero; type the flag to override it, or --policy.variant" in err


def test_a_preset_value_a_typed_flag_conflicts_with_is_named_in_the_error():
    with pytest.raises(ConfigError, match=r"--policy.n_action_steps=5: expected <= chunk_size \(4\) "
                                          r"\[--policy.n_action_steps: the value of --preset=pi05_libero"):
        parse_train_command(["--preset=pi05_libero", "--policy.chunk_size=4"])


def test_an_unknown_preset_lists_close_matches(capsys):
    with pytest.raises(ConfigError, match=r"--preset=pi05_librero: no such preset; did you mean pi05_libero"):
        parse_train_command(["--preset=pi05_librero"])
    with pytest.raises(ConfigError, match=r"--preset=xyz: no such preset; expected one of \['pi0_libero'"):
        parse_train_command(["--preset=xyz"])
    assert main(["presets", "pi0_libero_lowmem"]) == 2
    assert "did you mean pi0_libero_low_mem_finetune" in capsys.readouterr().err


def test_presets_lists_every_preset_with_a_line(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name, preset in PRESETS.items():
        assert f"  {name}  " in out and preset.summary in out
    assert "(pi05, full, chunk 10, batch 256, 30000 steps, lr 5e-05, EMA 0.999)" in out
    assert "(pi0, LoRA, chunk 50, batch 32, 30000 steps, lr 2.5e-05, EMA off)" in out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_name_prints_flags_that_paste_back_into_the_same_config(name, capsys):
    assert main(["presets", name]) == 0
    out = capsys.readouterr().out
    flags = [line for line in out.splitlines() if line.startswith("--")]
    assert len(flags) == len(PRESETS[name].values)
    assert all("  # " in line and "(openpi: " in line for line in flags)
    argv = [token for line in flags for token in shlex.split(line, comments=True)]
    pasted, preset = parse_train_command(argv).config, parse_train_command([f"--preset={name}"]).config
    assert pasted == TrainConfig(**{**preset.__dict__, "preset": None})
    assert "# Notes:" in out and all(note[:40] in out.replace("\n#   ", " ") for note in PRESETS[name].notes)
    assert "src/openpi/training/config.py" in out


def test_pi05_libero_says_what_pirecon_lacks(capsys):
    main(["presets", "pi05_libero"])
    out = capsys.readouterr().out.replace("\n#   ", " ")
    assert "not in pirecon: discrete_state_input=False" in out
    assert "# - batch size: openpi's batch_size is global" in out
    assert "--policy.scheduler_decay_steps=30000" in out and "decay_steps=1_000_000" in out


def test_the_libero_page_shows_the_preset_as_it_is():
    text = (Path(__file__).parents[2] / "docs" / "finetune-libero.md").read_text()
    begin = "<!-- preset:pi05_libero:begin (generated by pirecon.configs.presets.preset_markdown) -->\n"
    end = "<!-- preset:pi05_libero:end -->"
    assert begin in text and end in text
    assert text.split(begin, 1)[1].split(end, 1)[0] == preset_markdown("pi05_libero"), (
        "docs/finetune-libero.md's preset table is stale; regenerate it with\n  python -c 'from "
        "pirecon.configs.presets import preset_markdown as m; print(m(\"pi05_libero\"), end=\"\")'")


def test_a_preset_named_in_a_python_config_is_not_dropped_silently():
    from pirecon.train.loop import train

    with pytest.raises(ConfigError, match=r"TrainConfig\(preset='pi05_libero'\): a preset stands for flags, which the "
                                          r"command line applies: build the config with .*parse_train_command"):
        train(TrainConfig(preset="pi05_libero"))
