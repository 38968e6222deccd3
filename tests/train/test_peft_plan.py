"""LoRA as lerobot-train does it by default (base frozen, adapters on the named layers, PEFT's
alpha), with LeRobot's regexes and lists matched against LeRobot's module names too."""

from __future__ import annotations

import pytest

from pirecon import PolicyConfig
from pirecon.configs.train import PeftConfig
from pirecon.errors import ConfigError
from pirecon.model.pi0 import Pi0Policy
from pirecon.checkpoint.keys import lerobot_module_name
from pirecon.train.peft_plan import apply_lora, lora_plan


def trainable(model) -> set[str]:
    return {n.removeprefix("base_model.model.") for n, p in model.named_parameters() if p.requires_grad}


def adapted(model) -> set[str]:
    return {n.split(".lora_A")[0] for n in trainable(model) if ".lora_A." in n}


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_lerobot_default_targets_expert_q_v_and_the_projections_and_freezes_the_rest(kind):
    policy = Pi0Policy(PolicyConfig(type=kind, variant="tiny"))
    model = apply_lora(policy, PeftConfig())
    depth = policy.config.expert.depth
    expert = {f"backbone.expert.layers.{i}.{p}" for i in range(depth) for p in ("q_proj", "v_proj")}
    # LeRobot's regex names model.(state_proj|action_in_proj|action_out_proj|action_time_mlp_in|out):
    # pi05 has no state_proj, and its time MLPs are called time_mlp_in/out, which it does not match.
    heads = {"action_in_proj", "action_out_proj"} | (
        {"state_proj", "action_time_mlp_in", "action_time_mlp_out"} if kind == "pi0" else set())
    assert adapted(model) == expert | heads
    assert all(".lora_" in n for n in trainable(model))  # every base weight frozen
    layer = model.get_base_model().backbone.expert.layers[0].q_proj
    assert layer.r["default"] == 16 and layer.scaling["default"] == 8 / 16  # PEFT's alpha 8, as LeRobot


def test_a_list_matches_by_suffix_everywhere_and_a_regex_matches_lerobot_names():
    policy = Pi0Policy(PolicyConfig(type="pi05", variant="tiny"))
    plan = lora_plan(policy, PeftConfig(target_modules=["q_proj", "v_proj"], r=8, lora_alpha=16), lerobot_module_name)
    layers = policy.config.vision.depth + policy.config.vlm.depth + policy.config.expert.depth
    assert len(plan.targets) == 2 * layers  # SigLIP, the VLM and the expert, as PEFT's suffix rule has it
    assert set(plan.ranks.values()) == {8} and set(plan.alphas.values()) == {16}
    regex = r".*\.paligemma\..*\.language_model\..*\.self_attn\.o_proj|.*\.gemma_expert\..*\.mlp\.down_proj"
    names = set(lora_plan(policy, PeftConfig(target_modules=regex), lerobot_module_name).targets)
    assert names == {f"backbone.vlm.layers.{i}.o_proj" for i in range(policy.config.vlm.depth)} | \
        {f"backbone.expert.layers.{i}.mlp.down_proj" for i in range(policy.config.expert.depth)}
    with pytest.raises(ConfigError, match="matches no linear layer"):
        lora_plan(policy, PeftConfig(target_modules=["nothing_like_this"]), lerobot_module_name)
    with pytest.raises(ConfigError, match="which are not linear layers"):
        lora_plan(policy, PeftConfig(target_modules=r"backbone\.vision\.post_norm"), lerobot_module_name)


def test_full_training_modules_are_modules_to_save():
    policy = Pi0Policy(PolicyConfig(type="pi0", variant="tiny"))
    # A LeRobot name (model.state_proj) works as well as ours; the targets must leave it alone then.
    model = apply_lora(policy, PeftConfig(full_training_modules=["backbone.projector", "model.state_proj"],
                                          target_modules=["q_proj"]))
    full = {n for n in trainable(model) if ".lora_" not in n}
    assert full == {"backbone.projector.weight", "backbone.projector.bias", "state_proj.weight", "state_proj.bias"}
    with pytest.raises(ConfigError, match="a module gets adapters or trains in full, not both"):
        lora_plan(policy, PeftConfig(full_training_modules=["state_proj"]), lerobot_module_name)
    with pytest.raises(ConfigError, match="'no_such' names no module"):
        lora_plan(policy, PeftConfig(full_training_modules=["no_such"]), lerobot_module_name)


def test_peft_flags_turn_lora_on_as_lerobot_does(sim_dataset, sim_tokenizer, tmp_path, capsys):
    from pirecon.train.command import parse_train_command
    from pirecon.train.loop import train
    from tests.train.helpers import tiny_train_flags

    parsed = parse_train_command(tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "run", "--steps=1",
                                                  "--peft.method_type=LORA", "--peft.r=4"))
    result = train(parsed.config, typed=parsed.typed)
    out = capsys.readouterr().out
    assert "  note        LoRA turned on by --peft.* (as lerobot-train does)" in out
    assert "  training    LoRA (lerobot preset) r=4 alpha=8 on" in out
    assert (result.checkpoint / "adapter" / "adapter_config.json").is_file()


def test_a_saved_full_fine_tune_config_file_keeps_lora_off(sim_dataset, sim_tokenizer, tmp_path, capsys):
    """Our own train_config.json lists every --peft.* field; with its policy.use_peft=false that is
    not a request for LoRA (a LeRobot file with a peft group, or --peft.* typed on top, still is)."""
    from pirecon.train.command import parse_train_command
    from pirecon.train.loop import train
    from tests.train.helpers import tiny_train_flags

    first = parse_train_command(tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "full", "--steps=1"))
    train(first.config, typed=first.typed)
    saved = tmp_path / "full" / "train_config.json"
    assert '"peft"' in saved.read_text()
    capsys.readouterr()
    again = parse_train_command([f"--config_path={saved}", f"--output_dir={tmp_path / 'again'}"])
    result = train(again.config, typed=again.typed, from_file=again.from_file)
    out = capsys.readouterr().out
    assert "LoRA turned on" not in out and not (result.checkpoint / "adapter").exists()
    typed_on_top = parse_train_command([f"--config_path={saved}", f"--output_dir={tmp_path / 'lora'}", "--peft.r=4"])
    result = train(typed_on_top.config, typed=typed_on_top.typed, from_file=typed_on_top.from_file)
    assert "LoRA turned on by --peft.*" in capsys.readouterr().out
    assert (result.checkpoint / "adapter" / "adapter_config.json").is_file()
