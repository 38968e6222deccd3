"""`pirecon serve`: which checkpoint, how request keys map onto it, where to listen."""

from __future__ import annotations

from dataclasses import dataclass, field

API_KEY_ENV = "PIRECON_SERVE_API_KEY"  # the API key when --serve.api_key is not given


@dataclass(frozen=True)
class ServePolicyFlags:
    path: str | None = None  # checkpoint folder (training checkpoint or `pirecon export` output)
    num_inference_steps: int | None = None  # denoising steps; None: the checkpoint's
    n_action_steps: int | None = None  # advertised to clients; None: the checkpoint's
    tokenizer_path: str | None = None  # only for checkpoints without a tokenizer copy
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto: cuda when available, else cpu)
    rtc_mode: str = "guided"  # requests with prev_actions: guided (guidance, any checkpoint) | trained (the first inference_delay actions given clean; a checkpoint trained with --policy.rtc_training_max_delay)


@dataclass(frozen=True)
class ServeOptions:
    preset: str | None = None  # libero | aloha | droid | none
    obs_map: dict[str, str | None] = field(default_factory=dict)  # request key -> dataset key (null drops)
    default_prompt: str | None = None  # used when no request key maps to `task` or a request lacks it
    reseed_each_request: bool = False  # re-seed the noise per request: replies depend on the observation only
    max_message_mb: int = 256  # largest accepted request
    # Clients must send `Authorization: Api-Key <key>` (openpi's WebsocketClientPolicy(api_key=...)).
    api_key: str | None = None  # none: $PIRECON_SERVE_API_KEY, else no authentication (/healthz stays open)


@dataclass(frozen=True)
class ServeConfig:
    policy: ServePolicyFlags = field(default_factory=ServePolicyFlags)
    serve: ServeOptions = field(default_factory=ServeOptions)
    host: str = "127.0.0.1"  # address to listen on (0.0.0.0: every interface, reachable from the network)
    port: int = 8000  # TCP port
    use_ema: bool = False  # serve the EMA weights
    seed: int = 0  # seed of the sampling noise
