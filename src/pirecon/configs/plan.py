"""`pirecon plan`: the `--plan.*` flags (next to every `pirecon train` flag) and the GPU table.

A GPU is named by its memory (`--plan.gpu=24GB`, any whole number of GB) or by name
(`--plan.gpu=H100`); `cpu` plans for this machine's CPU and RAM. Figures are the vendors' (dense
tensor-core throughput, i.e. without the 2:4 sparsity the headline numbers often quote):

- RTX 3090: NVIDIA Ampere GA102 GPU architecture whitepaper, appendix table (peak BF16 tensor TFLOPS
  with FP32 accumulate 71, FP32 35.6, 936 GB/s).
- RTX 4090: NVIDIA Ada GPU architecture whitepaper, appendix table (peak BF16 tensor TFLOPS with FP32
  accumulate 165.2, FP32 82.6, 1008 GB/s).
- L4: NVIDIA L4 datasheet (BF16 tensor core 242 TFLOPS with sparsity = 121 dense, FP32 30.3, 300 GB/s).
- A10: NVIDIA A10 datasheet (BF16 tensor core 125 TFLOPS dense, FP32 31.2, 600 GB/s).
- A100 40GB / 80GB: NVIDIA A100 datasheet (BF16 tensor core 312 TFLOPS dense, FP32 19.5; SXM
  bandwidth 1555 / 2039 GB/s).
- L40S: NVIDIA L40S datasheet (BF16 tensor core 362.05 TFLOPS dense, FP32 91.6, 864 GB/s).
- H100 SXM / PCIe: NVIDIA H100 datasheet (BF16 tensor core 1979 / 1513 TFLOPS with sparsity = 989 /
  756 dense, FP32 67 / 51, 3.35 / 2 TB/s).
- H200: NVIDIA H200 datasheet (BF16 tensor core 1979 TFLOPS with sparsity = 989 dense, FP32 67,
  4.8 TB/s).

Memory is the total the driver reports (nvidia-smi, MiB), which is what PyTorch can reach at most.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pirecon.configs.train import TrainConfig
from pirecon.errors import ConfigError

MODES = ("train", "serve")


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_mib: int  # total memory as nvidia-smi reports it (0 for cpu: read from this machine)
    bf16_tflops: float | None  # dense bfloat16 tensor-core peak (None: unknown)
    fp32_tflops: float | None  # float32 peak without tensor cores (PyTorch's default for float32 matmuls)
    bandwidth_gbs: float | None  # memory bandwidth, GB/s

    @property
    def is_cpu(self) -> bool:
        return self.name == "cpu"


GPUS: dict[str, GpuSpec] = {spec.name: spec for spec in (
    GpuSpec("RTX3090", 24576, 71.0, 35.6, 936.0),
    GpuSpec("RTX4090", 24564, 165.2, 82.6, 1008.0),
    GpuSpec("L4", 23034, 121.0, 30.3, 300.0),
    GpuSpec("A10", 23028, 125.0, 31.2, 600.0),
    GpuSpec("A100-40GB", 40960, 312.0, 19.5, 1555.0),
    GpuSpec("L40S", 46068, 362.05, 91.6, 864.0),
    GpuSpec("A100-80GB", 81920, 312.0, 19.5, 2039.0),
    GpuSpec("H100", 81559, 989.0, 67.0, 3350.0),
    GpuSpec("H100-PCIE", 81559, 756.0, 51.0, 2000.0),
    GpuSpec("H200", 143771, 989.0, 67.0, 4800.0),
)}
# A memory size names a GPU of that size for the throughput (the step-time estimate).
SIZE_ALIASES = {24: "RTX4090", 40: "A100-40GB", 48: "L40S", 80: "A100-80GB", 141: "H200"}
NAME_ALIASES = {"3090": "RTX3090", "4090": "RTX4090", "a100": "A100-80GB", "h100sxm": "H100", "h100pcie": "H100-PCIE"}


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def parse_gpu(value: str, flag: str = "--plan.gpu") -> GpuSpec:
    """`24GB` | `80gb` | a GPU name (case, dashes and spaces do not matter) | `cpu` -> GpuSpec;
    anything else is a ConfigError naming `flag`, the value and what it accepts."""
    text = str(value).strip()
    if _key(text) == "cpu":
        return GpuSpec("cpu", 0, None, None, None)
    size = re.fullmatch(r"(\d+)\s*(gb|gib)", text.lower())
    if size:
        gib = int(size.group(1))
        if gib <= 0:
            raise ConfigError(f"{flag}={value}: expected a positive memory size such as 24GB")
        alias = GPUS.get(SIZE_ALIASES.get(gib, ""))
        if alias is not None:
            return GpuSpec(f"{gib}GB ({alias.name}'s throughput)", gib * 1024, alias.bf16_tflops,
                           alias.fp32_tflops, alias.bandwidth_gbs)
        return GpuSpec(f"{gib}GB", gib * 1024, None, None, None)
    names = {_key(name): name for name in GPUS} | NAME_ALIASES
    if _key(text) in names:
        return GPUS[names[_key(text)]]
    raise ConfigError(f"{flag}={value!r}: expected a memory size (24GB, 40GB, 48GB, 80GB, 141GB or any NGB), a GPU "
                      f"name ({', '.join(GPUS)}) or cpu (this machine's RAM)")


@dataclass(frozen=True)
class PlanConfig:
    """`--plan.*`: what `pirecon plan` plans for (the other flags are `pirecon train`'s)."""

    gpu: str = "80GB"  # memory size (24GB, 40GB, 48GB, 80GB, 141GB or any NGB), a GPU name (RTX4090, A100-40GB, A100-80GB, H100, H200, L40S, L4, A10, RTX3090, H100-PCIE) or cpu (this machine's RAM)
    num_processes: int = 1  # processes (one GPU each) the run is spread over; --batch_size is per process
    fsdp: bool = False  # shard weights, gradients and optimizer states over the processes (FSDP full sharding); false: each process holds a replica (DDP)
    mode: str = "train"  # train: one optimizer step of `pirecon train` | serve: one sample_actions request (batch 1) of `pirecon serve`
    utilization: float = 0.4  # the fraction of the GPU's peak FLOP/s and memory bandwidth the run reaches; the time estimates divide by it

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--plan.mode={self.mode!r}: expected one of {list(MODES)}")
        if self.num_processes < 1:
            raise ConfigError(f"--plan.num_processes={self.num_processes}: expected a positive integer")
        if self.fsdp and self.num_processes < 2:
            raise ConfigError("--plan.fsdp=true shards over the processes: it needs --plan.num_processes=2 or more")
        if self.mode == "serve" and self.num_processes > 1:
            raise ConfigError(f"--plan.num_processes={self.num_processes} plans training over several GPUs; "
                              f"--plan.mode=serve plans one server process (drop the flag)")
        if not 0.0 < self.utilization <= 1.0:
            raise ConfigError(f"--plan.utilization={self.utilization}: expected a fraction in (0, 1], e.g. 0.4")
        parse_gpu(self.gpu)

    @property
    def target(self) -> GpuSpec:
        return parse_gpu(self.gpu)


@dataclass(frozen=True)
class PlanCommandConfig(TrainConfig):
    """`pirecon plan`: every `pirecon train` flag, meaning what it means there, and `--plan.*`."""

    plan: PlanConfig = field(default_factory=PlanConfig)  # what to plan for
