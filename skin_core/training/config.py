"""Training configuration: one frozen record, readable from YAML, saved in every run.

Defaults are the CPU-friendly small version of the published study (see docs/training.md
for the reasons behind each): AdamW, cosine schedule with linear warmup, class-weighted
cross-entropy (inverse frequency), and the last epoch of the fixed schedule as the member (never
an epoch chosen by a score on the fold it then predicts out-of-fold; ``epoch_selection:
inner`` chooses it on an inner split of the training folds instead).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from skin_core.errors import ConfigError
from skin_core.training.losses import SAMPLINGS

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
BACKENDS: tuple[str, ...] = ("local", "ray")
LOSS_WEIGHTINGS: tuple[str, ...] = ("inverse_frequency", "logit_adjusted", "none")
#: ``last``: the member is the last epoch of the fixed schedule; ``inner``: the epoch with the
#: best balanced accuracy on an inner split of the fold's training images (never trained on).
EPOCH_SELECTIONS: tuple[str, ...] = ("last", "inner")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (what ``config.yaml`` stores under ``train``).

    Attributes
    ----------
    archs: timm architecture names, one member per (arch, seed).
    folds: number of cross-validation folds ``K`` (>= 2).
    epochs: maximum epochs per fold.
    img_size: square input side in pixels.
    img_sizes: per-architecture input sides overriding ``img_size`` (the published study
        trained EfficientNet-B4/B5/B6 at 380/456/528 px), e.g. ``{"efficientnet_b5": 456}``.
    batch_size: images per optimisation step.
    lr: peak learning rate (AdamW).
    weight_decay: AdamW weight decay.
    warmup_epochs: linear warmup length (fraction of an epoch allowed).
    label_smoothing: cross-entropy label smoothing (0 = off).
    loss_weighting: ``"inverse_frequency"`` (weighted CE, as in the study),
        ``"logit_adjusted"`` (plain CE on logits plus the log class prior, so the network's
        logits learn the class-balanced posterior; Menon et al. 2021) or ``"none"``.
    sampling: how an epoch draws its images: ``"uniform"`` (each once), ``"balanced"`` (classes
        equally likely) or ``"sqrt"`` (classes ~ sqrt of their size), the last two with
        replacement; the loss weighting then corrects the stream's class mix
        (:mod:`skin_core.training.losses`).
    epoch_selection: which epoch's weights become the member and give the out-of-fold
        predictions: ``"last"`` (default) the last epoch of the fixed schedule; ``"inner"`` the
        epoch with the best balanced accuracy on the fold's **inner split**, a lesion-grouped,
        class-stratified ``inner_fraction`` of the fold's training images that the fold then
        does not train on. Never a score on the fold being predicted.
    inner_fraction: share of each fold's training images (whole lesions, per class) held out
        as the inner split when ``epoch_selection`` is ``"inner"`` (in ``(0, 0.5]``).
    patience: with ``epoch_selection: inner``, stop a fold after this many epochs without a
        better inner-split balanced accuracy (0 = never stop early); must be 0 with ``"last"``.
    seeds: training seeds; several seeds give members ``arch@s<seed>``.
    seed: seed of the folds (when no folds file is given) and of the inner splits.
    pretrained: ``"none"``, ``"hub"`` or a weights file path, for every architecture; or a
        mapping ``{arch: spec}`` (with an optional ``default`` entry, else ``"none"``) when each
        architecture starts from its own weights file.
    device: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"`` or ``"mps"``.
    amp: mixed precision on CUDA (ignored elsewhere).
    channels_last: model and batches in channels-last (NHWC) memory layout, on every device
        (oneDNN's depthwise convolutions run ~1.5-3x faster so on CPU; see docs/training.md).
    threads: ``torch.set_num_threads`` (0 = leave torch's default).
    deterministic: ``torch.use_deterministic_algorithms(True, warn_only=True)`` on CPU.
    augment: train-time augmentation on/off.
    freeze: keep the stem and the first ``freeze`` stages at their pretrained weights and
        compute their activations once per run (:mod:`skin_core.training.frozen`); epochs then
        train only the rest (EfficientNet-family networks; 0 = train everything).
    freeze_views: with ``freeze``, versions of each image whose activations are cached: the
        image itself and ``freeze_views - 1`` random augmentations (each epoch reads one).
    mixup: Beta parameter of mixup on each training batch (0 = off); with ``freeze`` the blend
        is of the cached activations (manifold mixup; :mod:`skin_core.training.regularise`).
    cutmix: Beta parameter of CutMix (0 = off); with ``mixup`` too, one of the two per batch.
    ema: decay of an exponential moving average of the weights, which then becomes the member
        (0 = off; e.g. 0.998 averages over ~500 steps; :mod:`skin_core.training.regularise`).
    drop_rate: dropout before the classifier (timm ``drop_rate``; 0 = off).
    drop_path_rate: stochastic depth of the residual blocks (timm ``drop_path_rate``; 0 = off).
    tta: out-of-fold predictions average the identity and the three flips, and the bundle
        tells the served pipeline to do the same (so both see the same model).
    resize: image cache resize mode (``"center"`` or ``"stretch"``).
    cache_dir: image cache folder (None = ``$SKIN_CORE_CACHE_DIR`` or ``.cache/images``).
    cache_workers: processes decoding images into the cache (0 = CPU count).
    eval_batch_size: batch size for validation (0 = 2 x batch_size).
    backend: ``"local"`` or ``"ray"``.
    ray_address: Ray cluster address (None = start a local Ray).
    ray_cpus_per_task: CPUs per (arch, fold) task on CPU clusters.
    """

    archs: tuple[str, ...] = ("resnet18",)
    folds: int = 5
    epochs: int = 10
    img_size: int = 128
    img_sizes: dict[str, int] = field(default_factory=dict)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    loss_weighting: str = "inverse_frequency"
    sampling: str = "uniform"
    epoch_selection: str = "last"
    inner_fraction: float = 0.1
    patience: int = 0
    seeds: tuple[int, ...] = (0,)
    seed: int = 0
    pretrained: str | dict[str, str] = "none"
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    threads: int = 0
    deterministic: bool = True
    augment: bool = True
    freeze: int = 0
    freeze_views: int = 8
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float = 0.0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    tta: bool = False
    resize: str = "center"
    cache_dir: str | None = None
    cache_workers: int = 0
    eval_batch_size: int = 0
    backend: str = "local"
    ray_address: str | None = None
    ray_cpus_per_task: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["archs"] = list(self.archs)
        d["seeds"] = list(self.seeds)
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        return replace(self, **changes)

    def size_for(self, arch: str) -> int:
        """The input side for ``arch``: its ``img_sizes`` entry, else ``img_size``."""
        return int(self.img_sizes.get(arch, self.img_size))

    def pretrained_for(self, arch: str) -> str:
        """The starting weights of ``arch``: ``"none"``, ``"hub"`` or a weights file path."""
        if isinstance(self.pretrained, dict):
            return str(self.pretrained.get(arch, self.pretrained.get("default", "none")))
        return str(self.pretrained)

    @property
    def multi_seed(self) -> bool:
        return len(self.seeds) > 1


def model_ids(config: TrainConfig) -> list[tuple[str, str, int]]:
    """``(model id, arch, seed)`` for every member: ``arch`` or ``arch@s<seed>``."""
    out = []
    for arch in config.archs:
        for s in config.seeds:
            out.append((f"{arch}@s{s}" if config.multi_seed else arch, arch, int(s)))
    return out


def _fail(name: str, expected: str, got: Any) -> None:
    raise ConfigError(f"The {name!r} training option must be {expected}; got {got!r}.")


def validate_config(c: TrainConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid option (one sentence)."""
    if not c.archs or not all(isinstance(a, str) and a for a in c.archs):
        _fail("archs", "a non-empty list of timm architecture names", c.archs)
    if len(set(c.archs)) != len(c.archs):
        _fail("archs", "a list without repeats", list(c.archs))
    if not isinstance(c.folds, int) or c.folds < 2:
        _fail("folds", "an integer >= 2", c.folds)
    if not isinstance(c.epochs, int) or c.epochs < 1:
        _fail("epochs", "an integer >= 1", c.epochs)
    if not isinstance(c.img_size, int) or c.img_size < 8:
        _fail("img_size", "an integer >= 8 (pixels)", c.img_size)
    if not isinstance(c.img_sizes, dict) or not all(
            isinstance(v, int) and v >= 8 for v in c.img_sizes.values()):
        _fail("img_sizes", "a mapping of architecture -> integer >= 8 (pixels)", c.img_sizes)
    stray = sorted(set(c.img_sizes) - set(c.archs))
    if stray:
        _fail("img_sizes", f"keyed by architectures of this run {list(c.archs)}", stray)
    if isinstance(c.pretrained, dict):
        if not all(isinstance(v, str) and v for v in c.pretrained.values()):
            _fail("pretrained", "a mapping of architecture -> 'none', 'hub' or a weights file",
                  c.pretrained)
        stray = sorted(set(c.pretrained) - set(c.archs) - {"default"})
        if stray:
            _fail("pretrained", f"keyed by architectures of this run {list(c.archs)} (or "
                  "'default')", stray)
    elif not isinstance(c.pretrained, str) or not c.pretrained:
        _fail("pretrained", "'none', 'hub', a weights file path or a mapping arch -> one of "
              "those", c.pretrained)
    if not isinstance(c.batch_size, int) or c.batch_size < 2:
        _fail("batch_size", "an integer >= 2", c.batch_size)
    if not (isinstance(c.lr, (int, float)) and c.lr > 0):
        _fail("lr", "a positive number", c.lr)
    if not (isinstance(c.weight_decay, (int, float)) and c.weight_decay >= 0):
        _fail("weight_decay", "a number >= 0", c.weight_decay)
    if not (isinstance(c.warmup_epochs, (int, float)) and c.warmup_epochs >= 0):
        _fail("warmup_epochs", "a number >= 0", c.warmup_epochs)
    if not (isinstance(c.label_smoothing, (int, float)) and 0 <= c.label_smoothing < 1):
        _fail("label_smoothing", "a number in [0, 1)", c.label_smoothing)
    if c.loss_weighting not in LOSS_WEIGHTINGS:
        _fail("loss_weighting", f"one of {LOSS_WEIGHTINGS}", c.loss_weighting)
    if c.sampling not in SAMPLINGS:
        _fail("sampling", f"one of {SAMPLINGS}", c.sampling)
    if c.epoch_selection not in EPOCH_SELECTIONS:
        _fail("epoch_selection", f"one of {EPOCH_SELECTIONS}", c.epoch_selection)
    if (isinstance(c.inner_fraction, bool) or not isinstance(c.inner_fraction, (int, float))
            or not 0 < c.inner_fraction <= 0.5):
        _fail("inner_fraction", "a number in (0, 0.5]", c.inner_fraction)
    if isinstance(c.patience, bool) or not isinstance(c.patience, int) or c.patience < 0:
        _fail("patience", "an integer >= 0", c.patience)
    if c.patience and c.epoch_selection != "inner":
        raise ConfigError(
            f"Early stopping (patience={c.patience}) needs epoch_selection: inner, which "
            "watches an inner split of the training folds (the fold being predicted is never "
            "used to choose an epoch); set epoch_selection: inner or patience: 0."
        )
    if not c.seeds or len(set(c.seeds)) != len(c.seeds):
        _fail("seeds", "a non-empty list of distinct integers", c.seeds)
    if c.device not in DEVICES:
        _fail("device", f"one of {DEVICES}", c.device)
    if c.backend not in BACKENDS:
        _fail("backend", f"one of {BACKENDS}", c.backend)
    if isinstance(c.freeze, bool) or not isinstance(c.freeze, int) or c.freeze < 0:
        _fail("freeze", "an integer >= 0 (frozen stages; 0 = none)", c.freeze)
    if (isinstance(c.freeze_views, bool) or not isinstance(c.freeze_views, int)
            or c.freeze_views < 1):
        _fail("freeze_views", "an integer >= 1", c.freeze_views)
    for name in ("mixup", "cutmix"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10:
            _fail(name, "a number in [0, 10] (the Beta parameter; 0 = off)", v)
    for name in ("drop_rate", "drop_path_rate"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            _fail(name, "a number in [0, 1)", v)
    if isinstance(c.ema, bool) or not isinstance(c.ema, (int, float)) or not 0 <= c.ema < 1:
        _fail("ema", "a number in [0, 1) (the averaging decay per step; 0 = off)", c.ema)
    if not isinstance(c.tta, bool):
        _fail("tta", "true or false", c.tta)
    if c.resize not in ("center", "stretch"):
        _fail("resize", "one of ('center', 'stretch')", c.resize)
    if not isinstance(c.threads, int) or c.threads < 0:
        _fail("threads", "an integer >= 0", c.threads)
    if not isinstance(c.ray_cpus_per_task, int) or c.ray_cpus_per_task < 1:
        _fail("ray_cpus_per_task", "an integer >= 1", c.ray_cpus_per_task)


_TUPLE_FIELDS = {"archs", "seeds"}


def config_from_dict(d: dict[str, Any], *, base: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a mapping (e.g. YAML); unknown keys are an error."""
    names = {f.name for f in fields(TrainConfig)}
    aliases = {"arch": "archs", "img-size": "img_size", "batch-size": "batch_size"}
    clean: dict[str, Any] = {}
    for key, value in d.items():
        k = aliases.get(key, key).replace("-", "_")
        if k not in names:
            raise ConfigError(
                f"Unknown training option {key!r}; expected one of {sorted(names)}."
            )
        if k in _TUPLE_FIELDS:
            value = (value,) if isinstance(value, (str, int)) else tuple(value)
        if k == "img_sizes":
            value = dict(value or {})
        if k == "pretrained" and value is not None:
            value = ({str(a): str(v) for a, v in value.items()} if isinstance(value, dict)
                     else str(value))
        clean[k] = value
    return replace(base or TrainConfig(), **clean)


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``train`` mapping of a YAML config file (or the whole file when it has none).

    A top-level ``dataset`` key is returned as ``{"dataset": ...}`` beside the options.
    """
    from skin_core.io import read_yaml_mapping

    doc = read_yaml_mapping(path, what="Config file")
    out = dict(doc.get("train", {k: v for k, v in doc.items() if k != "dataset"}))
    if "dataset" in doc:
        out["dataset"] = doc["dataset"]
    return out
