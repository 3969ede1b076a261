"""The application: `build(args)` validates typed args and binds the deployment graph.

    Api ──► SessionHost (session affinity) ──► TTSService, AvatarRenderer (features computed inside),
                                               SpeechRecognizer (microphones), the LLM (chat; HTTP)

Used by `serve run configs/serve.yaml` (import_path `serve_app:build`). This is the only module
that reads environment variables.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from ray.serve import Application

from deployments.asr.deployment import SpeechRecognizer
from deployments.asr.recognizer import RecognizerSettings
from deployments.asr.vad import VadSettings
from deployments.avatar.deployment import AvatarRenderer
from deployments.avatar.gpu_cost import SimulatedGpu
from deployments.common.models import FEATURE_MODELS, lipsync_model, served_model
from deployments.llm import LlmSettings, settings_from
from deployments.rtc.api import Api, ApiSettings
from deployments.rtc.host import HostSettings, SessionHost
from deployments.rtc.ice import parse_addresses
from deployments.tts.deployment import TTSService
from deployments.tts.engine import ENGINES as TTS_ENGINES

REPO_ROOT = Path(__file__).resolve().parent


class AsrArgs(VadSettings, RecognizerSettings):
    """`args.asr`: the microphone's VAD (`VadSettings`: `end_silence_ms`, `threshold`, ...; its
    `min_speech_ms` is `barge_in_min_speech_ms`) and the recogniser (`RecognizerSettings`:
    `model_dir`, `language`, `compute_type`, `beam_size`, `cpu_threads`, `num_workers`).
    """

    @model_validator(mode="after")
    def _no_min_speech(self) -> AsrArgs:
        if "min_speech_ms" in self.model_fields_set:
            raise ValueError("set barge_in_min_speech_ms (top level) instead of asr.min_speech_ms")
        return self

    def vad(self) -> dict[str, Any]:
        return self.model_dump(include=set(VadSettings.model_fields) - {"min_speech_ms"})

    def recognizer(self) -> dict[str, Any]:
        return self.model_dump(include=set(RecognizerSettings.model_fields))


class AppArgs(HostSettings):
    """Everything `configs/serve.yaml` may set under `args`: the SessionHost settings plus these."""

    model: str = "parametric"  # lip-sync model or LiveTalking alias (deployments/common/models.py)
    checkpoint: str | None = None  # lip-sync weights (see models/README.md); None = the model's default
    device: str = "auto"  # renderer and its feature network: "auto" (CUDA if the replica has a GPU), "cpu", "cuda:0"
    feature_model_dirs: dict[str, str] = Field(default_factory=dict)  # {"whisper": ..., "hubert": ...}
    # No network: batches take a GPU cost model's time (deployments/avatar/gpu_cost.py), e.g. h100
    simulated_gpu: SimulatedGpu | None = None
    tts_engine: str = "piper"
    tts_options: dict[str, Any] = Field(default_factory=dict)
    api: ApiSettings = Field(default_factory=ApiSettings)
    asr: AsrArgs = Field(default_factory=AsrArgs)
    llm: LlmSettings = Field(default_factory=LlmSettings)  # env OPENAI_BASE_URL, OPENAI_API_KEY, LLM_MODEL win

    model_config = {"extra": "forbid", "validate_default": True}

    @field_validator("ice_host_addresses", "ice_servers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> list[str]:
        return parse_addresses(value)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return served_model(value).name  # aliases become the canonical name

    @field_validator("simulated_gpu")
    @classmethod
    def _model_has_gpu_cost(cls, value: SimulatedGpu | None, info: ValidationInfo) -> SimulatedGpu | None:
        if value is not None and "model" in info.data:
            value.cost_model(lipsync_model(info.data["model"]), face_size=256)  # parametric has none
        return value

    @field_validator("tts_engine")
    @classmethod
    def _known_tts(cls, value: str) -> str:
        return TTS_ENGINES.canonical(value)  # "edgetts" (LiveTalking) becomes "edge"

    @field_validator("feature_model_dirs")
    @classmethod
    def _known_kinds(cls, value: dict[str, str]) -> dict[str, str]:
        for kind in value:
            FEATURE_MODELS.get(kind)  # ValueError naming the kinds
        return value

    @model_validator(mode="after")
    def _chat_needs_llm(self) -> AppArgs:
        if self.conversation_mode == "chat" and not self.llm.enabled:
            raise ValueError("conversation_mode 'chat' needs an LLM: set llm.base_url and llm.model")
        return self

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # Replicas do not share the CLI's working directory: anchor relative paths at the repo.
        return _anchor(value)


def _anchor(path: str) -> str:
    return str(Path(path) if Path(path).is_absolute() else REPO_ROOT / path)


def _default_checkpoint(cfg: AppArgs) -> str | None:
    """The configured weights, else the registry's default (Wav2Lip `models/wav2lip.pth`, MuseTalk
    `models/musetalkV15/unet.pth`, as LiveTalking); None for per-avatar or no weights.
    """
    path = cfg.checkpoint or lipsync_model(cfg.model).checkpoint
    return _anchor(path) if path is not None else None


def _feature_model_dir(cfg: AppArgs) -> str | None:
    """The folder of the model's feature network (configured or the registry's), anchored."""
    spec = FEATURE_MODELS.get(lipsync_model(cfg.model).feature_kind)
    path = cfg.feature_model_dirs.get(spec.kind, spec.model_dir)
    return _anchor(path) if path is not None else None


# env var -> `args.api` field; the env wins, so secrets need not be written into the config
API_SECRETS_ENV = {"AVATAR_SESSION_SECRET": "session_secret", "AVATAR_API_KEY": "api_key"}


def build(args: dict[str, Any] | None = None) -> Application:
    """Validate `args` and bind the graph (the `serve run` entry point)."""
    args = dict(args or {})
    if os.environ.get("ICE_HOST_ADDRESSES"):
        args["ice_host_addresses"] = os.environ["ICE_HOST_ADDRESSES"]
    api = dict(args.get("api") or {})
    for env, field in API_SECRETS_ENV.items():
        if os.environ.get(env):
            api[field] = os.environ[env]
    if api:
        args["api"] = api
    args["llm"] = settings_from(args.get("llm"), os.environ)
    return bind_graph(AppArgs(**args))


def bind_graph(cfg: AppArgs, *, host_replicas: int | None = None) -> Application:
    """Bind the deployments; `host_replicas` overrides the SessionHost count (tests)."""
    avatar_dir = Path(cfg.data_dir) / cfg.avatar_id
    if not avatar_dir.is_dir():
        raise FileNotFoundError(
            f"avatar '{cfg.avatar_id}' not found in {cfg.data_dir}: run `make setup` to build the default "
            f"avatar or `python -m deployments.avatar.builder --image <photo> --avatar-id {cfg.avatar_id}`"
        )
    tts = TTSService.bind(engine=cfg.tts_engine, engine_options=cfg.tts_options)
    # Relative paths (the defaults too) are anchored at the repo: replicas may run elsewhere.
    renderer = AvatarRenderer.bind(data_dir=cfg.data_dir, model=cfg.model, device=cfg.device,
                                   checkpoint=_default_checkpoint(cfg), feature_model_dir=_feature_model_dir(cfg),
                                   simulated_gpu=cfg.simulated_gpu and cfg.simulated_gpu.model_dump())
    host_settings = HostSettings(**cfg.model_dump(include=set(HostSettings.model_fields)))
    host_deployment = SessionHost if host_replicas is None else SessionHost.options(num_replicas=host_replicas)
    recognizer_options = cfg.asr.recognizer()
    if recognizer_options.get("model_dir"):
        recognizer_options["model_dir"] = _anchor(recognizer_options["model_dir"])
    asr = SpeechRecognizer.bind(recognizer_options=recognizer_options)
    host = host_deployment.bind(tts, renderer, settings=host_settings.model_dump(), asr=asr,
                                vad=cfg.asr.vad(), llm=cfg.llm)
    return Api.bind(host, settings=_with_session_secret(cfg.api).model_dump())


def _with_session_secret(api: ApiSettings) -> ApiSettings:
    """`api` with a session secret: the configured one, else a new one for this deploy.

    Bound here, once, so every Api replica of the deploy signs and checks tokens with the same
    key; a generated one changes with each deploy (set `api.session_secret` or env
    AVATAR_SESSION_SECRET to keep tokens valid across redeploys).
    """
    if api.session_secret is not None:
        return api
    return api.model_copy(update={"session_secret": SecretStr(secrets.token_hex(32))})
