"""FSDP settings without launching processes: what the accelerate config may say, how the flag
--checkpoint_format follows it, the optimizer state's two keyings, and the layers' module calls."""

import dataclasses
import warnings

import pytest
import torch

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.configs.train import TrainConfig
from pirecon.errors import ConfigError
from pirecon.model.gemma import GemmaLayer
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.siglip import SiglipLayer
from pirecon.train import fsdp

FSDP_ENV = ("FSDP_VERSION", "FSDP_ACTIVATION_CHECKPOINTING", "FSDP_AUTO_WRAP_POLICY", "FSDP_TRANSFORMER_CLS_TO_WRAP",
            "FSDP_STATE_DICT_TYPE", "ACCELERATE_MIXED_PRECISION")


@pytest.fixture
def launcher(monkeypatch):
    """The variables `accelerate launch` sets from an FSDP config (fsdp_version: 2, nothing else)."""
    for name in FSDP_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FSDP_VERSION", "2")
    return monkeypatch


def test_the_plugin_wraps_pirecons_layers_and_keeps_each_weights_dtype(launcher):
    plugin = fsdp.make_plugin()
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["GemmaLayer", "SiglipLayer"]
    policy = plugin.mixed_precision_policy
    assert policy.param_dtype is None and policy.reduce_dtype is None  # no cast: bf16 frozen, fp32 trained
    launcher.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "GemmaLayer")
    assert fsdp.make_plugin().transformer_cls_names_to_wrap == ["GemmaLayer"]
    launcher.setenv("FSDP_AUTO_WRAP_POLICY", "NO_WRAP")
    assert fsdp.make_plugin().auto_wrap_policy is None


@pytest.mark.parametrize("name, value, message", [
    ("FSDP_VERSION", "1", r"fsdp_version: 1; pirecon trains with FSDP2 .*: set fsdp_version: 2"),
    ("FSDP_ACTIVATION_CHECKPOINTING", "true", r"fsdp_activation_checkpointing: true; .*--policy.gradient_checkpointing"),
    ("FSDP_AUTO_WRAP_POLICY", "SIZE_BASED_WRAP", r"SIZE_BASED_WRAP; pirecon's FSDP units are its layers"),
    ("FSDP_TRANSFORMER_CLS_TO_WRAP", "GemmaDecoderLayer",
     r"GemmaDecoderLayer cannot be an FSDP unit of a pirecon model: expected some of GemmaLayer, SiglipLayer"),
])
def test_settings_pirecon_cannot_honour_are_named(launcher, name, value, message):
    launcher.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        fsdp.make_plugin()


def test_the_layer_classes_named_are_the_ones_whose_forward_runs():
    """FSDP gathers a unit's weights in its module's forward: every Gemma and SigLIP layer must run
    through its own forward, once per training pass."""
    policy = Pi0Policy(PolicyConfig(type="pi05", variant="tiny", image_resolution=28))
    layers = [m for m in policy.modules() if type(m).__name__ in fsdp.WRAP_CLASSES]
    assert {type(m) for m in layers} == {GemmaLayer, SiglipLayer}
    calls = {id(m): 0 for m in layers}
    for m in layers:
        m.register_forward_pre_hook(lambda module, args: calls.__setitem__(id(module), calls[id(module)] + 1))
    policy(synthetic_batch(policy.config, 2))
    assert set(calls.values()) == {1}  # SigLIP over all views at once; Gemma: both stacks, layer by layer
    policy.backbone.set_gradient_checkpointing(True)
    calls.update({k: 0 for k in calls})
    policy(synthetic_batch(policy.config, 2))["loss"].backward()
    assert set(calls.values()) == {2}  # and again when the backward pass recomputes them


def test_checkpoint_format_follows_the_accelerate_config(launcher):
    cfg = TrainConfig()
    assert fsdp.check_sharded_run(cfg, True, frozenset()).checkpoint_format == "safetensors"
    launcher.setenv("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT")
    assert fsdp.check_sharded_run(cfg, True, frozenset()).checkpoint_format == "dcp"
    typed = dataclasses.replace(cfg, checkpoint_format="safetensors_dcp")
    assert fsdp.check_sharded_run(typed, True, frozenset({"checkpoint_format"})).checkpoint_format == "safetensors_dcp"
    with pytest.raises(ConfigError, match=r"--checkpoint_format=safetensors but the accelerate config sets "
                                          r"fsdp_state_dict_type: SHARDED_STATE_DICT"):
        fsdp.check_sharded_run(cfg, True, frozenset({"checkpoint_format"}))


def test_sharded_formats_need_a_sharded_run(launcher):
    dcp = dataclasses.replace(TrainConfig(), checkpoint_format="dcp")
    with pytest.raises(ConfigError, match=r"--checkpoint_format=dcp needs a sharded run"):
        fsdp.check_sharded_run(dcp, False, frozenset({"checkpoint_format"}))
    # Inherited from the sharded run being resumed: falls back (every format resumes into every other).
    assert fsdp.check_sharded_run(dcp, False, frozenset()).checkpoint_format == "safetensors"
    with pytest.raises(ConfigError, match=r"--checkpoint_format='zip': expected one of"):
        TrainConfig(checkpoint_format="zip")
    full_bf16 = TrainConfig(policy=PolicyConfig(dtype="bfloat16", full_bf16=True))
    with pytest.raises(ConfigError, match=r"--policy.full_bf16=true under FSDP: accelerate's FSDP2 keeps float32"):
        fsdp.check_sharded_run(full_bf16, True, frozenset())
    evaluating = TrainConfig(env=dataclasses.replace(TrainConfig().env, type="sim"), env_eval_freq=10)
    with pytest.raises(ConfigError, match=r"--env_eval_freq=10: evaluation during training runs in the main process"):
        fsdp.check_sharded_run(evaluating, True, frozenset())


def test_the_launchers_mixed_precision_must_agree_with_the_policy_dtype(launcher):
    fsdp.check_launcher_precision(torch.bfloat16, "bfloat16")  # nothing set: pirecon decides
    launcher.setenv("ACCELERATE_MIXED_PRECISION", "no")
    fsdp.check_launcher_precision(torch.bfloat16, "bfloat16")  # accelerate's default
    launcher.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    fsdp.check_launcher_precision(torch.bfloat16, "bfloat16")
    with pytest.raises(ConfigError, match=r"mixed_precision: bf16 .* but --policy.dtype=float32"):
        fsdp.check_launcher_precision(None, "float32")
    launcher.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ConfigError, match=r"mixed_precision: fp16"):
        fsdp.check_launcher_precision(torch.bfloat16, "bfloat16")


def test_optimizer_state_by_name_and_by_index():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    names = fsdp.trainable_names(model)
    assert names == ["0.weight", "1.weight", "1.bias"]
    state = optimizer.state_dict()
    named = fsdp.by_name(state, names)
    assert named["param_groups"][0]["params"] == names
    assert named["state"]["1.weight"]["exp_avg"] is state["state"][1]["exp_avg"]
    assert fsdp.by_index(named, names) == state


def test_a_sharded_full_finetune_checkpoint_is_read_whole(tmp_path):
    """A folder holding config.json and the weights as torch.distributed.checkpoint shards (written
    here by one process) loads as the policy it was, reconstruction head included; a damaged shard
    folder is one CheckpointError naming it."""
    from pirecon.checkpoint.layout import DCP_MODEL_DIR, WEIGHTS_FILE
    from pirecon.checkpoint.load import load_model
    from pirecon.checkpoint.write_pirecon import save_policy
    from pirecon.configs.recon import ReconConfig
    from pirecon.errors import CheckpointError
    import torch.distributed.checkpoint as dcp

    policy = Pi0Policy(PolicyConfig(type="pi0", variant="tiny", image_resolution=28, dtype="bfloat16"))
    policy.add_recon_head(ReconConfig(enable=True, views=("base_0_rgb",)))
    policy.backbone.projector.float()  # a trained layer kept in float32, as training keeps it
    folder = save_policy(policy, tmp_path / "ckpt")
    (folder / WEIGHTS_FILE).unlink()
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": policy.state_dict()}, checkpoint_id=str(folder / DCP_MODEL_DIR), no_dist=True)

    loaded = load_model(folder)
    mine, theirs = policy.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and loaded.recon_head is not None
    assert all(torch.equal(mine[k], theirs[k]) and mine[k].dtype == theirs[k].dtype for k in mine)
    as_float = load_model(folder, dtype="float32")
    assert as_float.config.dtype == "float32"
    assert as_float.backbone.vlm.layers[0].q_proj.weight.dtype == torch.float32

    (folder / DCP_MODEL_DIR / "__0_0.distcp").write_bytes(b"cut short")
    with pytest.raises(CheckpointError, match=rf"{DCP_MODEL_DIR}: cannot read the sharded checkpoint"):
        load_model(folder)
