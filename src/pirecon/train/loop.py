"""The training loop: data -> policy (optionally LoRA) -> AdamW + warm-up/cosine -> checkpoints.

Runs on one CPU/GPU or many through `accelerate`: DDP, or FSDP2 with an accelerate config file
that asks for it (`train/fsdp.py`); launch several processes with `accelerate launch ... -m pirecon
train ...`. Only the main process writes logs, and checkpoints unless they are sharded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list
from tqdm import tqdm

from pirecon import hubcache
from pirecon.checkpoint import sharded, training, upload
from pirecon.checkpoint.keys import lerobot_module_name
from pirecon.checkpoint.folder_config import policy_config
from pirecon.checkpoint.folder_info import (folder_camera_map, folder_normalizer, local_tokenizer, read_folder_info,
                                           resolve_tokenizer)
from pirecon.checkpoint.layout import (CHECKPOINTS, DCP_EMA_DIR, DCP_MODEL_DIR, DCP_OPTIMIZER_DIR, TRAINING_STATE,
                                       folder_format, last_checkpoint, read_config)
from pirecon.checkpoint.load import load_model, load_policy
from pirecon.checkpoint.weights import overrides_for
from pirecon.checkpoint.write_pirecon import save_policy
from pirecon.configs.policy import PolicyConfig, merge_with_folder
from pirecon.configs.recon import merge_recon_with_folder
from pirecon.configs.parse import to_dict
from pirecon.data.augment import augment_batch
from pirecon.data.layout import dataset_root
from pirecon.data.lerobot import open_dataset
from pirecon.data.loader import make_dataloader
from pirecon.data.normalize import (Normalizer, default_norm_mode, fit_to_dataset, normalizer_from_dataset,
                                    save_norm_stats_json)
from pirecon.data.task_tokenizer import tokenizer_for_model
from pirecon.data.tokenizer import load_tokenizer
from pirecon.data.transforms import Preprocessor
from pirecon.errors import ConfigError
from pirecon.model import lora, placement
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.trim import trim_plan
from pirecon.configs.train import TrainConfig, resolve_optimization
from pirecon.train import fsdp
from pirecon.train.ema import EMA
from pirecon.train.peft_plan import lora_plan, reaches_image_tokens
from pirecon.train.schedule import lr_factor
from pirecon.train.summary import summary_block
from pirecon.train.logs import LOG_FILE, PLOT_FILE, RunLogger, plot_losses
from pirecon.train.steps import FiniteGuard, StepValues, make_optimizer, wait_for_device

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    checkpoint: Path | None
    steps: int
    final_loss: float


def typed_by_value(cfg, prefix: str = "") -> frozenset[str]:
    """For configs built in Python (no command line): the fields whose value differs from the
    default count as typed."""
    out = set()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out |= typed_by_value(value, prefix + f.name + ".")
        elif value != getattr(type(cfg)(), f.name):
            out.add(prefix + f.name)
    return frozenset(out)


def resolve_policy_config(cfg: PolicyConfig, typed: frozenset[str] | None = None,
                          notes: list[str] | None = None) -> PolicyConfig:
    """With a pretrained folder (or hub id): the folder's config, with the typed fields of `cfg`
    over it (`typed`: "policy.x" names; None: the fields that differ from the defaults). Adapted
    weights are described in `notes`. See `configs.policy.FOLDER_RULES`."""
    if not cfg.pretrained_path:
        return cfg
    if typed is None:
        typed = typed_by_value(cfg, "policy.")
    mine = {name[len("policy."):] for name in typed if name.startswith("policy.")}
    cfg = dataclasses.replace(cfg, pretrained_path=str(hubcache.resolve_pretrained(cfg.pretrained_path)))
    saved = policy_config(cfg.pretrained_path)
    resolved, adapted = merge_with_folder(cfg, saved, mine, cfg.pretrained_path)
    if notes is not None:
        notes += adapted
    if "tokenizer_path" not in mine:  # the tokenizer the folder names or holds, when it is a local one
        info = read_folder_info(cfg.pretrained_path, asset_id=resolved.asset_id, with_stats=False)
        resolved = dataclasses.replace(resolved, tokenizer_path=local_tokenizer(info) or saved.tokenizer_path)
    return resolved


def run_policy_config(cfg: TrainConfig, typed: frozenset[str], adapted: list[str] | None = None,
                      from_preset: frozenset[str] = frozenset(),
                      from_file: frozenset[str] = frozenset()) -> tuple[PolicyConfig, str | None]:
    """The policy config a run trains (`resolve_policy_config`; adapted weights noted in
    `adapted`) and a note when typing a --peft.* flag turned LoRA on (`from_preset`, `from_file`:
    as for the Trainer)."""
    policy_cfg = resolve_policy_config(cfg.policy, typed, adapted)
    if policy_cfg.full_bf16 and policy_cfg.dtype != "bfloat16":  # checked once the folder's dtype is known
        raise ConfigError(f"--policy.full_bf16=true keeps the trained weights in bfloat16, but the policy's dtype "
                          f"is {policy_cfg.dtype} (--policy.dtype, or the pretrained folder's); expected "
                          f"--policy.dtype=bfloat16 with it")
    # As in lerobot-train, typing any --peft.* flag turns LoRA on (so does --policy.use_peft=true);
    # a preset's --peft.* values do not (a LoRA preset sets --policy.use_peft=true itself), nor
    # does a config file's peft group when the file also says policy.use_peft (our own
    # train_config.json lists every field; a LeRobot file has a peft group only for LoRA).
    requested = typed - from_preset
    if "policy.use_peft" in from_file:
        requested -= from_file
    if not policy_cfg.use_peft and any(name.startswith("peft.") for name in requested):
        return dataclasses.replace(policy_cfg, use_peft=True), "LoRA turned on by --peft.* (as lerobot-train does)"
    return policy_cfg, None


# Policy fields a resumed run may change: they alter neither the weights nor what trains.
RESUMABLE_POLICY_FIELDS = ("n_action_steps", "num_inference_steps", "gradient_checkpointing", "compile_model",
                           "device", "push_to_hub", "repo_id")


def resumed_policy_config(stored: PolicyConfig, wanted: PolicyConfig, typed: frozenset[str],
                          checkpoint: Path) -> PolicyConfig:
    """The checkpoint's policy config with the typed fields a resumed run can change; any other
    typed policy field that differs is an error (the optimizer state belongs to the stored model)."""
    changes = {}
    for name in sorted(n[len("policy."):] for n in typed if n.startswith("policy.")):
        if getattr(stored, name) == getattr(wanted, name) or name in ("pretrained_path", "tokenizer_path"):
            continue
        if name not in RESUMABLE_POLICY_FIELDS:
            raise ConfigError(f"--policy.{name}={getattr(wanted, name)} but the run being resumed ({checkpoint}) was "
                              f"trained with {name}={getattr(stored, name)}; a resumed run can change only "
                              f"{', '.join('--policy.' + f for f in RESUMABLE_POLICY_FIELDS)}")
        changes[name] = getattr(wanted, name)
    return dataclasses.replace(stored, **changes)


def build_preprocessor(cfg: TrainConfig, policy_cfg: PolicyConfig, dataset, verbose: bool = True) -> Preprocessor:
    """Tokenizer (none given: the folder's, else for a tiny model one built from the dataset's task texts
    into the output folder, see `data.task_tokenizer`; the preprocessor's `config.tokenizer_path` names
    the one used), normaliser (the pretrained folder's statistics unless --policy.use_dataset_stats) and
    camera map (--dataset.camera_map, else the pretrained folder's when it fits the data)."""
    info = read_folder_info(policy_cfg.pretrained_path, with_stats=False) \
        if policy_cfg.pretrained_path else None
    if not policy_cfg.tokenizer_path:
        if info is not None and info.tokenizer_name:
            resolve_tokenizer(info)  # raises, naming what the folder refers to
        built = tokenizer_for_model(dataset.root, cfg.output_dir, policy_cfg.vlm.vocab_size)
        if verbose:
            print(built.summary(), flush=True)
        policy_cfg = dataclasses.replace(policy_cfg, tokenizer_path=str(built.path))
    tokenizer = load_tokenizer(policy_cfg.tokenizer_path)
    normalizer = training_normalizer(policy_cfg, dataset)
    camera_map = cfg.dataset.camera_map or (folder_camera_map(info, dataset.camera_keys) if info else None)
    return Preprocessor(policy_cfg, tokenizer, normalizer, camera_map=camera_map,
                        action_dims=cfg.dataset.action_dims, state_dims=cfg.dataset.state_dims,
                        camera_keys=dataset.camera_keys)


def training_normalizer(policy_cfg, dataset) -> Normalizer:
    """The normaliser for fine-tuning: the pretrained folder's statistics unless
    --policy.use_dataset_stats=true or the folder has none; otherwise the dataset's."""
    if policy_cfg.pretrained_path and not policy_cfg.use_dataset_stats:
        info = read_folder_info(policy_cfg.pretrained_path, asset_id=policy_cfg.asset_id)
        mode = policy_cfg.normalization_mode or info.normalization_mode
        if mode is None and not info.mode_problem:
            mode = default_norm_mode(policy_cfg.type)
        normalizer = folder_normalizer(info, mode)
        if normalizer is not None:
            log.info("normalising with the statistics of %s", info.stats_source)
            padded = {"state": policy_cfg.max_state_dim, "actions": policy_cfg.max_action_dim}
            return fit_to_dataset(normalizer, dataset, padded, info.stats_source,
                                  f"--policy.pretrained_path={info.folder}")
        log.info("%s holds no statistics; normalising with the dataset's", policy_cfg.pretrained_path)
    return normalizer_from_dataset(dataset, policy_cfg.type, policy_cfg.normalization_mode)


def name_run(cfg: TrainConfig, accelerator) -> TrainConfig:
    """--job_name (default: the policy type) and --output_dir (default, as LeRobot:
    outputs/train/<date>/<time>_<job_name>, chosen once on the main process)."""
    job_name = cfg.job_name or (f"{cfg.env.type}_{cfg.policy.type}" if cfg.env.type else cfg.policy.type)
    output_dir = cfg.output_dir
    if not output_dir:
        now = datetime.datetime.now()
        chosen = [f"outputs/train/{now:%Y-%m-%d}/{now:%H-%M-%S}_{job_name}"]
        if accelerator.num_processes > 1:
            broadcast_object_list(chosen)
        output_dir = chosen[0]
    return dataclasses.replace(cfg, job_name=job_name, output_dir=output_dir)


def check_new_output_dir(folder: Path) -> None:
    """A new run writes into a missing or empty folder, never over another run's files."""
    if folder.is_file():
        raise ConfigError(f"--output_dir={folder} is a file; expected a folder for checkpoints and logs")
    if folder.is_dir() and any(folder.iterdir()):
        what = "checkpoints" if last_checkpoint(folder) is not None else "files"
        raise ConfigError(f"--output_dir={folder} already holds {what} and --resume=false (LeRobot refuses an "
                          f"existing folder too): pass --resume=true to continue that run, or choose a new --output_dir")


class Trainer:
    def __init__(self, cfg: TrainConfig, typed: frozenset[str] | None = None,
                 from_preset: frozenset[str] = frozenset(), from_file: frozenset[str] = frozenset()):
        """`typed`: the fields typed (on the command line, in --config_path, by --preset); None: those
        differing from the defaults. `from_preset`: the typed ones whose value is --preset's;
        `from_file`: the typed ones whose value comes from the --config_path file alone."""
        self.cfg = cfg
        self.adapted: list[str] = []
        if typed is None and cfg.preset is not None:
            raise ConfigError(f"TrainConfig(preset={cfg.preset!r}): a preset stands for flags, which the command line "
                              f"applies: build the config with pirecon.train.command.parse_train_command("
                              f"['--preset={cfg.preset}', ...])")
        typed = typed_by_value(cfg) if typed is None else typed
        policy_cfg, self.peft_note = run_policy_config(cfg, typed, self.adapted, from_preset, from_file)
        self.peft_plan = None
        self.cfg = cfg = dataclasses.replace(cfg, policy=policy_cfg)
        optimizer_cfg, scheduler_cfg = resolve_optimization(cfg, typed)
        self.cfg = cfg = dataclasses.replace(cfg, optimizer=optimizer_cfg, scheduler=scheduler_cfg)
        device = placement.resolve_device(policy_cfg.device)
        autocast = placement.decide_placement(device, policy_cfg.torch_dtype).autocast_dtype
        if device.index is not None:
            torch.cuda.set_device(device)  # accelerate's one-process "cuda" is the current device
        fsdp.check_launcher_precision(autocast, policy_cfg.dtype)
        plugin = fsdp.make_plugin() if fsdp.requested() else None
        self.accelerator = Accelerator(
            mixed_precision="bf16" if autocast == torch.bfloat16 else "no", cpu=device.type == "cpu",
            fsdp_plugin=plugin, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        acc = self.accelerator
        self.sharded = plugin is not None and fsdp.engage_on_cpu(acc, plugin)
        self.cfg = cfg = fsdp.check_sharded_run(cfg, self.sharded, typed)
        if device.index is not None and acc.num_processes > 1:
            raise ConfigError(f"--policy.device={policy_cfg.device}: one device for {acc.num_processes} processes; "
                              f"under accelerate each process takes its own: use --policy.device=auto (or cuda)")
        self.is_main = acc.is_main_process
        self.cfg = cfg = name_run(cfg, acc)
        self.output_dir = Path(cfg.output_dir)
        resume_from = last_checkpoint(self.output_dir) if cfg.resume else None
        if cfg.resume and resume_from is None:
            raise ConfigError(f"--resume=true but {self.output_dir / CHECKPOINTS} holds no checkpoint")
        if not cfg.resume:
            check_new_output_dir(self.output_dir)
        torch.backends.cudnn.deterministic = cfg.cudnn_deterministic
        torch.backends.cudnn.benchmark = not cfg.cudnn_deterministic

        # Data: each rank reads its own share of every epoch.
        self.dataset = open_dataset(dataset_root(cfg.dataset), policy_cfg.chunk_size, episodes=cfg.dataset.episodes,
                                    split="train", val_episodes=cfg.dataset.val_episodes, tolerance_s=cfg.tolerance_s,
                                    video_backend=cfg.dataset.video_backend)
        self.preprocessor = build_preprocessor(cfg, policy_cfg, self.dataset, verbose=self.is_main)
        self.cfg = cfg = dataclasses.replace(cfg, policy=self.preprocessor.config)  # with the tokenizer it uses
        self.evaluator = None
        if cfg.env.options and not cfg.env.type:
            raise ConfigError(f"--env.{next(iter(cfg.env.options))}: environment settings need --env.type=sim|libero")
        if cfg.env.type and cfg.env_eval_freq > 0 and self.is_main:
            from pirecon.eval.during_training import TrainingEvaluator  # lazy: simulators load only when asked
            self.evaluator = TrainingEvaluator(cfg.env, cfg.eval, cfg.policy.n_action_steps, self.dataset.root)
        self.loader = make_dataloader(self.dataset, self.preprocessor, cfg.batch_size, cfg.num_workers,
                                      seed=cfg.seed, rank=acc.process_index, world_size=acc.num_processes,
                                      cache_in_memory=cfg.dataset.cache_in_memory, prefetch_factor=cfg.prefetch_factor,
                                      persistent_workers=cfg.persistent_workers, pin_memory=acc.device.type == "cuda")

        # Model: the same initial weights on every rank, then per-rank randomness for noise/time.
        torch.manual_seed(cfg.seed)
        self.base_path = policy_cfg.pretrained_path
        if resume_from is not None:
            model = load_model(resume_from, trainable=True)
            saved = read_config(resume_from)
            lora.base_policy(model).config = resumed_policy_config(lora.base_policy(model).config, policy_cfg,
                                                                   typed, resume_from)
            self.base_path = saved.get("base_path") or self.base_path
        else:
            policy = load_policy(policy_cfg.pretrained_path, **overrides_for(policy_cfg)) \
                if policy_cfg.pretrained_path else load_policy(policy_cfg)
            held = policy.recon_head  # a reconstruction head that came with the folder's weights
            recon = merge_recon_with_folder(cfg.recon, policy.recon_config if held is not None else None, typed,
                                            str(policy_cfg.pretrained_path))
            policy.recon_head, policy.recon_config = None, None
            if recon is not None and recon.enable:
                if held is not None:  # the folder's trained head, with this run's settings
                    held.cfg = recon
                    policy.recon_head, policy.recon_config = held, recon
                else:
                    policy.add_recon_head(recon)
            recon = recon or dataclasses.replace(cfg.recon, enable=False)
            self.cfg = cfg = dataclasses.replace(cfg, recon=recon)
            if policy_cfg.use_peft:
                if not self.base_path:  # a random base must be kept for the adapters to make sense
                    self.base_path = str((self.output_dir / "base").resolve())
                    if self.is_main:
                        self._save_random_base(policy)
                self.peft_plan = lora_plan(policy, cfg.peft, lerobot_module_name)
                if recon.enable and not reaches_image_tokens(self.peft_plan):
                    self.peft_note = "; ".join(filter(None, [self.peft_note, (
                        "the reconstruction loss reaches no backbone weight under this LoRA plan (only its head "
                        "trains); --peft.preset=openpi adapts the VLM and trains SigLIP")]))
                model = lora.add_lora(policy, self.peft_plan, cfg.peft)
            else:
                model = policy
        lora.base_policy(model).backbone.set_gradient_checkpointing(policy_cfg.gradient_checkpointing)
        self.placement = placement.place(model, acc.device, policy_cfg.torch_dtype, train=True,
                                         full_bf16=policy_cfg.full_bf16)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ConfigError("nothing to train: every weight is frozen (check --policy.train_expert_only, "
                              "--policy.freeze_vision_encoder and --policy.use_peft)")
        self.optimizer = make_optimizer(cfg.optimizer, self.trainable, acc.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg.scheduler, cfg.steps))
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay and not self.sharded else None
        self.step = 0
        state = torch.load(resume_from / TRAINING_STATE, weights_only=False) if resume_from is not None else None
        if state is not None:
            if not self.sharded:  # a sharded optimizer and EMA take their state once the model is sharded
                fsdp.restore_optimizer(model, self.optimizer, state, resume_from, sharded=False)
                if self.ema is not None:
                    fsdp.restore_ema(self.ema, resume_from, sharded=False)
            self.scheduler.load_state_dict(state["scheduler"])
            self.loader.load_state_dict(state["loader"][acc.process_index] if isinstance(state["loader"], list)
                                        else state["loader"])
            self.step = state["step"]
            training.set_rng_state(state["rng"][acc.process_index] if isinstance(state["rng"], list) else state["rng"])
        else:
            torch.manual_seed(cfg.seed + acc.process_index)
        self.model, self.optimizer = acc.prepare(model, self.optimizer)
        if self.sharded:
            self._after_sharding(state, resume_from)
        self.forward = torch.compile(self.model, mode=policy_cfg.compile_mode) if policy_cfg.compile_model else self.model
        self.guard = FiniteGuard()
        self.resumed_from = resume_from
        tags = [cfg.policy.type, cfg.dataset.repo_id or Path(self.dataset.root).name]
        self.logger = RunLogger(self.output_dir, self.is_main, cfg.tensorboard, cfg.wandb, to_dict(cfg),
                                name=cfg.job_name, tags=tags,
                                resume_step=self.step if resume_from is not None else None)

    def _after_sharding(self, state: dict | None, resume_from: Path | None) -> None:
        """FSDP replaced the weights by their shards: what holds them is rebuilt (the trained list,
        the EMA) and a resumed run's optimizer and EMA state is loaded into this sharding."""
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = EMA(self.model, self.cfg.ema_decay) if self.cfg.ema_decay else None
        if state is not None:
            fsdp.restore_optimizer(self.model, self.optimizer.optimizer, state, resume_from, sharded=True)
            if self.ema is not None:
                fsdp.restore_ema(self.ema, resume_from, sharded=True)

    # -------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
            print(self.summary(), flush=True)
        data = self.loader.forever()
        samples_per_step = cfg.batch_size * cfg.grad_accum_steps * acc.num_processes
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (self.is_main and cfg.progress_bar),
                   desc="train", dynamic_ncols=True)
        last_saved, last_loss = None, None
        interval = StepValues()
        self.model.train()
        try:
            while self.step < cfg.steps:
                start = time.perf_counter()
                values, dataloading_s = self._train_step(data)
                self.step += 1
                log_now = self.step % cfg.log_freq == 0 or self.step == cfg.steps
                evaluate = cfg.env.type and cfg.env_eval_freq > 0 and self.step % cfg.env_eval_freq == 0
                save = cfg.save_checkpoint and (self.step % cfg.save_freq == 0 or self.step == cfg.steps)
                # The host reads from the device only here: the step's time then includes its device work.
                if log_now or evaluate or save:
                    wait_for_device(acc.device)
                interval.add(values, time.perf_counter() - start, dataloading_s)
                last_loss = values["loss"]
                if log_now or evaluate or save:
                    self.guard.check(acc, self.output_dir / CHECKPOINTS)
                if log_now:
                    # As LeRobot: the means over the steps since the last log line.
                    means, steps, seconds = interval.pop(acc)
                    record = {"step": self.step, **means, "lr": self.scheduler.get_last_lr()[0],
                              "samples_per_s": samples_per_step * steps / max(seconds, 1e-9), "steps_averaged": steps,
                              "world_size": acc.num_processes, "effective_batch_size": samples_per_step}
                    self.logger.log(record)
                    bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                    sps=f"{record['samples_per_s']:.1f}", data_s=f"{means['dataloading_s']:.3f}",
                                    updt_s=f"{means['update_s']:.3f}")
                bar.update(1)
                if evaluate:
                    self._evaluate(bar)
                if save:
                    last_saved = self.save()
        finally:
            bar.close()
            self.logger.close()
            if self.evaluator is not None:
                self.evaluator.close()
        if self.is_main:
            plot_losses(self.output_dir / LOG_FILE, self.output_dir / PLOT_FILE)
        loss_value = acc.reduce(last_loss.detach().float().reshape(1), reduction="mean").item() \
            if last_loss is not None else float("nan")
        acc.wait_for_everyone()
        return TrainResult(self.output_dir, last_saved, self.step, loss_value)

    def summary(self) -> str:
        policy_cfg, acc = self.cfg.policy, self.accelerator
        path = policy_cfg.pretrained_path
        weights_from = f"{path} ({folder_format(path)} layout)" if path else "random initialisation"
        dataset = self.dataset
        cameras = ", ".join(f"{k} -> {v}" for k, v in (self.preprocessor.camera_map or {}).items()) or \
            ", ".join(dataset.camera_keys)
        described = (f"{dataset.root}: {len(dataset.episodes)} episodes, {len(dataset)} frames; "
                     f"cameras {cameras}")
        autocast = "bfloat16" if acc.mixed_precision == "bf16" else None
        return summary_block(self.cfg, acc.unwrap_model(self.model), weights_from=weights_from, adapted=self.adapted,
                             tokenizer=str(policy_cfg.tokenizer_path), dataset=described, device=str(acc.device),
                             processes=acc.num_processes, autocast=autocast,
                             sharding=fsdp.describe(acc.state.fsdp_plugin, self.cfg) if self.sharded else None,
                             resumed_from=str(self.resumed_from) if self.resumed_from else None,
                             peft_note=self.peft_note,
                             evaluation=(f"{self.evaluator.describe()}, every {self.cfg.env_eval_freq} steps"
                                         if self.evaluator is not None else None),
                             peft=self.peft_plan.description if self.peft_plan else
                             ("LoRA, resumed: adapters and fully trained weights as saved" if policy_cfg.use_peft else None))

    def _train_step(self, data) -> tuple[dict[str, torch.Tensor], float]:
        """One optimizer step. Returns its losses and gradient norm as device tensors (nothing is read
        back: see `train.steps`) and the seconds spent waiting for the loader."""
        cfg, acc = self.cfg, self.accelerator
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        dataloading_s = 0.0
        for micro in range(cfg.grad_accum_steps):
            waiting = time.perf_counter()
            host = next(data)
            # Decided from the host copy of the masks, so the device is never waited for.
            plan = trim_plan(host.image_masks, host.token_masks)
            batch = host.to(acc.device, non_blocking=True)
            dataloading_s += time.perf_counter() - waiting
            if cfg.dataset.image_transforms.enable:
                batch = augment_batch(batch, cfg.dataset.image_transforms, self._augmentation_rng(micro),
                                      cfg.policy.camera_names)
            sync = micro == cfg.grad_accum_steps - 1
            kwargs = {"recon_weight": cfg.recon.loss_weight(self.step)} if cfg.recon.enable else {}
            with (contextlib.nullcontext() if sync else acc.no_sync(self.model)), acc.autocast():
                out = self.forward(batch, trim=plan, **kwargs)
            loss = out["loss"]
            self.guard.observe(self.step + 1, loss, host.extras.get("index"))
            acc.backward(loss / cfg.grad_accum_steps)
            for key, value in out.items():
                if key.endswith("loss"):
                    value = value.detach().float() / cfg.grad_accum_steps
                    totals[key] = totals[key] + value if key in totals else value
        clip = cfg.optimizer.grad_clip_norm
        totals["grad_norm"] = fsdp.plain(acc.clip_grad_norm_(self.trainable, clip if clip > 0 else float("inf")))
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model if not hasattr(self.model, "module") else self.model.module)
        return totals, dataloading_s

    def _evaluate(self, bar) -> None:
        """Closed-loop evaluation on the main process (--env_eval_freq); the others wait."""
        acc = self.accelerator
        if self.evaluator is not None:
            policy = lora.base_policy(acc.unwrap_model(self.model))
            record = {"step": self.step, **self.evaluator(policy, self.preprocessor, acc.autocast())}
            self.logger.log(record)
            bar.write(f"step {self.step}: success rate {record['eval/success_rate']:.1%} over "
                      f"{record['eval/episodes']} episodes (95% CI {record['eval/ci95_low']:.1%}-"
                      f"{record['eval/ci95_high']:.1%}, {record['eval/seconds']:.0f} s)")
        acc.wait_for_everyone()

    def _augmentation_rng(self, micro: int) -> torch.Generator:
        """A generator for this step's augmentation, from (seed, rank, step, micro-step) alone: a
        resumed run draws the same augmentations without saving any state."""
        key = f"{self.cfg.seed}:{self.accelerator.process_index}:{self.step}:{micro}".encode()
        return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))

    def save(self) -> Path | None:
        acc = self.accelerator
        # Each rank's data position and RNG are gathered so every rank resumes exactly.
        local = {"loader": self.loader.state_dict(), "rng": training.rng_state()}
        gathered = [local]
        if acc.num_processes > 1:
            gathered = [None] * acc.num_processes
            dist.all_gather_object(gathered, local)
        state = {"step": self.step, "scheduler": self.scheduler.state_dict(),
                 "loader": [g["loader"] for g in gathered], "rng": [g["rng"] for g in gathered]}
        if self.sharded:
            return self._save_sharded(state)
        path = None
        if self.is_main:
            model = acc.unwrap_model(self.model)
            state["optimizer"] = self.optimizer.state_dict()
            path = training.save_checkpoint(
                self.output_dir, self.step, model, to_dict(self.cfg), state,
                self.ema.state_dict() if self.ema else None,
                lambda p: save_norm_stats_json(self.preprocessor.dataset_normalizer, p),
                self.cfg.policy.tokenizer_path, self.base_path, self.cfg.keep_last_checkpoints,
                extra_json={"data_info.json": self._data_info()})
        acc.wait_for_everyone()
        return path

    def _save_sharded(self, state: dict) -> Path | None:
        """Every process takes part: `--checkpoint_format=dcp` each writes its shards into the main
        process's temporary folder; `safetensors` the weights, optimizer and EMA state are gathered
        to the main process. The main process writes the rest and renames the folder into place."""
        acc, fmt, model, optimizer = self.accelerator, self.cfg.checkpoint_format, self.model, self.optimizer.optimizer
        folder = [str(training.start_checkpoint(self.output_dir, self.step)) if self.is_main else None]
        broadcast_object_list(folder)  # also: no rank writes before the main process made the folder
        tmp = Path(folder[0])
        peft = lora.base_policy(model) is not model
        weights, ema = None, None
        if fmt != "safetensors":
            sharded.save(fsdp.sharded_weights(model, trained_only=peft), tmp / DCP_MODEL_DIR)
            sharded.save(fsdp.sharded_optimizer(model, optimizer), tmp / DCP_OPTIMIZER_DIR)
            if self.ema is not None:
                sharded.save({"ema": self.ema.shadow}, tmp / DCP_EMA_DIR)
        if fmt != "dcp":
            weights = fsdp.full_weights(model)
        if fmt == "safetensors":
            state["optimizer"] = fsdp.full_optimizer(model, optimizer)
            ema = fsdp.full_ema(self.ema) if self.ema is not None else None
        path = None
        if self.is_main:
            training.write_checkpoint(
                tmp, self.step, model, to_dict(self.cfg), state, ema,
                lambda p: save_norm_stats_json(self.preprocessor.dataset_normalizer, p),
                self.cfg.policy.tokenizer_path, self.base_path, extra_json={"data_info.json": self._data_info()},
                weights=weights, weights_sharded=fmt == "dcp")
            path = training.commit_checkpoint(tmp, self.step, self.cfg.keep_last_checkpoints)
        acc.wait_for_everyone()
        return path

    def _save_random_base(self, policy: Pi0Policy) -> None:
        """The frozen random base a LoRA run on an untrained model refers to (without any aux head)."""
        head, recon = policy.recon_head, policy.recon_config
        policy.recon_head, policy.recon_config = None, None
        try:
            save_policy(policy, self.base_path)
        finally:
            policy.recon_head, policy.recon_config = head, recon

    def _data_info(self) -> dict:
        """What inference needs to rebuild the preprocessing: cameras, dims, normalisation mode."""
        pre = self.preprocessor
        info = {"camera_keys": list(self.dataset.camera_keys), "camera_map": pre.camera_map or {},
                "action_dims": self.cfg.dataset.action_dims, "state_dims": self.cfg.dataset.state_dims,
                "action_dim": pre.action_dim, "normalization_mode": pre.normalizer.mode if pre.normalizer else None,
                "fps": getattr(self.dataset, "fps", None)}
        return info


def train(cfg: TrainConfig, typed: frozenset[str] | None = None, from_preset: frozenset[str] = frozenset(),
          from_file: frozenset[str] = frozenset()) -> TrainResult:
    """Train; with --policy.push_to_hub the main process then uploads the final checkpoint. A failed
    upload raises HubError after the run is complete on disk, saying how to push it later."""
    upload.check_push_flags(cfg.policy.push_to_hub, cfg.policy.repo_id)
    trainer = Trainer(cfg, typed, from_preset, from_file)
    result = trainer.run()
    push = cfg.policy.push_to_hub and trainer.is_main and result.checkpoint is not None
    del trainer  # the export for the upload loads the model again
    if push:
        upload.push(result.checkpoint, cfg.policy.repo_id)
    return result
