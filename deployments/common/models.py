"""The model registry: every lip-sync model and feature extractor, what it needs and where its weights live.

Everything that picks a model reads this one table: `serve_app.py` (config validation, default
checkpoints), `AvatarRenderer` (engine, feature extractor, avatar inputs), the avatar builder
(crop size) and the weight loaders (network class, expected file). Code is named as
`"module:attribute"` and imported only when chosen (`registry.import_path`), so the weight-free
default never imports torch. LiveTalking's names are aliases: `wav2lip` is `wav2lip256` (its
`models/wav2lip.pth` is the 256 model), `ultralight` is `ultralight_hubert`.

Paths are relative to the repository (anchored by `serve_app`) and follow LiveTalking's
`models/` layout; `models/README.md` lists them for users.
"""

from __future__ import annotations

from dataclasses import dataclass

from deployments.common.features import FEATURE_KINDS, FeatureKind
from deployments.common.registry import Registry

_LIPSYNC = "deployments.avatar.lipsync"
_NETWORKS = "deployments.avatar.models"
_FEATURES = "deployments.asr"


@dataclass(frozen=True)
class LipSyncModel:
    """One lip-sync model.

    Attributes:
        name: Canonical name (configs, errors, metrics).
        feature_kind: The per-frame audio features it reads: a `common.features` kind for every
            served model ("wenet" for the unserved Ultralight variant).
        engine: The `LipSyncEngine` class, `"module:Class"`.
        network: The torch network's factory, `"module:callable"`; None for a weight-free model.
        network_args: Arguments of that factory.
        checkpoint: Default weights file relative to the repo; None when it lives in the avatar's
            folder (`avatar_checkpoint`) or there are no weights.
        avatar_checkpoint: File name of per-avatar weights (Ultralight trains one model per person).
        checkpoint_layout: What the user should put there, for errors and models/README.md.
        native_face_size: Crop side the network works at (avatars built at it skip a resize).
        needs_latents: Renders from the avatar's VAE latents (MuseTalk) instead of its crops.
        served: Selectable in a config (False: the network loads, but nothing can feed it).
        gflops_per_frame: The network's forward cost per frame at `native_face_size` (torch
            `FlopCounterMode` at batch 1, docs/PERFORMANCE.md "The networks alone"); what the
            simulated GPU (`avatar.gpu_cost`) charges. None for a weight-free model.
    """

    name: str
    feature_kind: str
    engine: str
    network: str | None = None
    network_args: tuple = ()
    checkpoint: str | None = None
    avatar_checkpoint: str | None = None
    checkpoint_layout: str = ""
    native_face_size: int | None = None
    needs_latents: bool = False
    served: bool = True
    gflops_per_frame: float | None = None

    @property
    def needs_torch(self) -> bool:
        """A torch network (weights, a device, torch threads); False for the weight-free model."""
        return self.network is not None


@dataclass(frozen=True)
class FeatureModel:
    """One per-frame feature extractor (its window shape is in `common.features.FEATURE_SHAPES`).

    Attributes:
        kind: The feature kind it produces.
        engine: Its `FeatureEngine` class, `"module:Class"`.
        model_dir: Default folder of its pretrained network, relative to the repo; None: no weights.
        repo: The HF repo whose files belong in that folder.
    """

    kind: FeatureKind
    engine: str
    model_dir: str | None = None
    repo: str | None = None

    @property
    def needs_torch(self) -> bool:
        """A pretrained torch network (mel is numpy)."""
        return self.model_dir is not None


ULTRALIGHT_LAYOUT = "data/avatars/<id>/ultralight.pth (Ultralight train.py output, legacy or head keys)"

LIPSYNC_MODELS: Registry[LipSyncModel] = Registry("lip-sync model", {
    "parametric": LipSyncModel("parametric", "mel", f"{_LIPSYNC}.base:ParametricEngine"),
    "wav2lip96": LipSyncModel(
        "wav2lip96", "mel", f"{_LIPSYNC}.wav2lip:Wav2LipEngine", f"{_NETWORKS}.wav2lip:Wav2Lip96",
        checkpoint="models/wav2lip.pth",
        checkpoint_layout="models/wav2lip.pth (Rudrabha wav2lip.pth or wav2lip_gan.pth)",
        native_face_size=96, gflops_per_frame=7.9),
    "wav2lip256": LipSyncModel(
        "wav2lip256", "mel", f"{_LIPSYNC}.wav2lip:Wav2LipEngine", f"{_NETWORKS}.wav2lip:Wav2Lip256",
        checkpoint="models/wav2lip.pth", checkpoint_layout="models/wav2lip.pth (LiveTalking's wav2lip256.pth, renamed)",
        native_face_size=256, gflops_per_frame=55.6),
    "ultralight_hubert": LipSyncModel(
        "ultralight_hubert", "hubert", f"{_LIPSYNC}.ultralight:UltralightEngine", f"{_NETWORKS}.ultralight:Ultralight",
        ("hubert",), avatar_checkpoint="ultralight.pth", checkpoint_layout=ULTRALIGHT_LAYOUT, native_face_size=168,
        gflops_per_frame=6.3),
    # Loads exactly, but needs WeNet encoder features nothing offline provides (docs/decisions.md).
    "ultralight_wenet": LipSyncModel(
        "ultralight_wenet", "wenet", f"{_LIPSYNC}.ultralight:UltralightEngine", f"{_NETWORKS}.ultralight:Ultralight",
        ("wenet",), avatar_checkpoint="ultralight.pth", checkpoint_layout=ULTRALIGHT_LAYOUT, native_face_size=168,
        served=False, gflops_per_frame=6.8),
    "musetalk": LipSyncModel(
        "musetalk", "whisper", f"{_LIPSYNC}.musetalk:MuseTalkEngine", f"{_NETWORKS}.musetalk:MuseTalkUNet",
        checkpoint="models/musetalkV15/unet.pth", checkpoint_layout="models/musetalkV15/unet.pth (with musetalk.json)",
        # 177.8: one UNet step only; the VAE decode around it (70% of a frame on the CPU) is not counted.
        native_face_size=256, needs_latents=True, gflops_per_frame=177.8),
}, aliases={"wav2lip": "wav2lip256", "ultralight": "ultralight_hubert"})

SERVED_MODELS: tuple[str, ...] = tuple(n for n in LIPSYNC_MODELS.names if LIPSYNC_MODELS.get(n).served)
assert all(LIPSYNC_MODELS.get(n).feature_kind in FEATURE_KINDS for n in SERVED_MODELS)

FEATURE_MODELS: Registry[FeatureModel] = Registry("feature kind", {
    "mel": FeatureModel("mel", f"{_FEATURES}.feature_engines:MelEngine"),
    "hubert": FeatureModel("hubert", f"{_FEATURES}.hubert_features:HubertFeatureEngine",
                           "models/hubert-large-ls960-ft", "facebook/hubert-large-ls960-ft"),
    "whisper": FeatureModel("whisper", f"{_FEATURES}.whisper_features:WhisperFeatureEngine",
                            "models/whisper", "openai/whisper-tiny"),
})


def lipsync_model(name: str) -> LipSyncModel:
    """The registry entry of `name` (or its alias).

    Raises:
        ValueError: Unknown name (the message lists the accepted ones).
    """
    return LIPSYNC_MODELS.get(name)


def served_model(name: str) -> LipSyncModel:
    """`lipsync_model(name)` if it can be served in a config, else ValueError listing those that can."""
    model = lipsync_model(name)
    if not model.served:
        raise ValueError(f"lip-sync model {model.name!r} is not served: choose one of {', '.join(SERVED_MODELS)}")
    return model
