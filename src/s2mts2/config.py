"""Typed run configuration: dataclasses, YAML presets, ``--set key=value`` overrides.

A run's configuration is one ``RunConfig``. Presets in ``configs/*.yaml`` hold the same tree.
Overrides use dotted keys (``pretrain.epochs=3``); inside a stage subcommand a key whose first part
is not a top-level field is looked up in that stage's section (``s2mts2 pretrain --set epochs=3``,
``--set augment.jitter_p=0``).
Unknown keys and values of the wrong type are errors that name the key.

Paths in a config (``data.dir``, ``finetune.pretrained``, ``model.weights``), in a preset as in
your own file, are taken relative to the folder the command runs in, like paths on the command
line, never relative to the YAML file: a built-in preset's ``data.dir: runs/ham`` means
``./runs/ham``. A training run records them as absolute paths in its ``config.yaml``.

Three seeds, three jobs:

- ``seed``: the repetition of a run: network initialisation, batch order, augmentation. Change
  it (alone) to repeat an experiment on the same labelled images.
- ``data.split_seed``: which labelled subset: the seed of its draw from the training images
  (``DIR/labelled/labelled-f<F>-s<S>.txt``, drawn once and reused). Change it too for a
  repetition with another labelled subset. ``s2mts2 prepare --seed S`` draws the same subset
  ahead of training (for the summary's counts); a run draws it itself when it is missing.
- The train/val/test split is not drawn by either: it is the dataset's own or the adapter's
  (``prepare --option seed=N`` where an adapter draws one), fixed when the data is prepared.
"""

from __future__ import annotations

import difflib
import logging
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from s2mts2.errors import ConfigError

log = logging.getLogger("s2mts2")


@dataclass(frozen=True)
class LabelledDraw:
    """Which labelled subset ``PreparedData.labelled`` draws: a ``fraction`` of train per class
    or an absolute ``count`` (exactly one is set), the draw's ``seed``, whole groups or not."""

    fraction: float | None = None
    count: int | None = None
    seed: int = 0
    by_group: bool = False


@dataclass
class DataConfig:
    """Which prepared dataset to train on and how its labelled subset is drawn."""

    dir: str = "runs/data"  # output folder of `s2mts2 prepare`
    size: int = 64  # training and evaluation size in pixels (stage 2: unless finetune.size)
    # resolution of the image cache both stages and their evaluation read (`DIR/cache-<px>px`
    # must exist); 0 = each stage's training size. Larger: crops are cut from it and resized down
    # with antialiasing, as crops of the original image would be.
    cache_size: int = 0
    labelled: float = 0.2  # fraction of train per class (the paper's sampling, docs/method.md)
    labelled_count: int = 0  # absolute number of labelled images; > 0 replaces `labelled`
    labelled_by_group: bool = False  # sample whole patients/lesions
    # which labelled subset: the seed of its draw (= prepare --seed; the file is reused per
    # seed); change it for a repetition with other labelled images (module docstring: seeds)
    split_seed: int = 0

    def cache_for(self, size: int) -> int:
        """Resolution of the cache to read for training at ``size`` px."""
        return self.cache_size or size

    def labelled_draw(self) -> LabelledDraw:
        """The labelled subset these settings ask for; a count wins over the fraction."""
        count = self.labelled_count or None
        fraction = None if count else self.labelled
        return LabelledDraw(fraction, count, self.split_seed, self.labelled_by_group)


@dataclass
class ModelConfig:
    """Network family shared by both stages."""

    backbone: str = "densenet121"  # densenet121 | resnet18 | resnet50 | resnet18_small
    init: Literal["random", "imagenet"] = "random"
    weights: str = ""  # local ImageNet weights file (else the torch hub cache is searched)
    proj_dim: int = 128  # stage-1 embedding size
    proj_hidden: int = 0  # hidden width of the projection head (0 = backbone feature width)
    head_hidden: int = 0  # hidden width of the classifier head (0 = backbone feature width)
    sync_bn: bool = False  # several CUDA processes: SyncBatchNorm in student and teacher


@dataclass
class AugmentOverrides:
    """Optional overrides of an augmentation preset (``null`` keeps the preset's value)."""

    crop_scale_min: float | None = None
    rotate_deg: float | None = None
    rotate_p: float | None = None
    hflip_p: float | None = None
    vflip_p: float | None = None
    jitter_p: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    blur_p: float | None = None
    erase_p: float | None = None


@dataclass
class PretrainConfig:
    """Stage 1: self-supervised mean teacher with JCL (defaults: the released settings)."""

    loss: Literal["jcl", "moco"] = "jcl"
    epochs: int = 100
    batch_size: int = 256
    views: int = 2  # M key views per image
    queue_size: int = 65536  # K negatives (capped at the number of training images)
    # what the queue stores of each image: μ, its mean key (the released code), or
    # μ/|μ| (then the negatives are unit vectors like MoCo's keys; |μ| < 1 when the views differ)
    queue_entries: Literal["mean", "normalised_mean"] = "mean"
    temperature: float = 0.07
    lam_max: float = 2.0  # λ ramps linearly to this value: λ_t = λ_max·(epoch+1)/epochs
    # teacher EMA momentum, per step, in both stages (the paper's m in stage 1, α in stage 2):
    # θ' ← ema·θ' + (1−ema)·θ
    ema: float = 0.999
    ema_buffers: Literal["own", "copy", "ema"] = "own"
    shuffle_bn: bool = True  # several processes: batch-shuffle BN for the teacher (MoCo)
    # one process: split batch norm in G groups, keys regrouped across them (MoCo's single-GPU
    # recipe against BN leakage); 0 = auto (up to 8 groups of >= 16 images), 1 = off
    bn_groups: int = 0
    exclude_own_keys: bool = True  # a query's own image's earlier key is never its negative
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    monitor_every: int = 5  # kNN representation check every N epochs (and at the end); 0 = end only
    knn_k: int = 20  # neighbours of the kNN check
    knn_temperature: float = 0.07  # T of its similarity weights exp(sim/T)
    augment: AugmentOverrides = field(default_factory=AugmentOverrides)


@dataclass
class FinetuneConfig:
    """Stage 2: semi-supervised mean teacher (or its baselines)."""

    method: Literal["supervised", "mean-teacher", "s2mts2"] = "s2mts2"
    pretrained: str = ""  # stage-1 checkpoint for method s2mts2
    size: int = 0  # training and evaluation size in pixels; 0 = data.size (that of stage 1)
    epochs: int = 30
    steps_per_epoch: int = 0  # 0 = one pass over the labelled images
    batch_size: int = 32  # labelled images per step
    unlabelled_ratio: float = 1.0  # unlabelled images per step = ratio * batch_size
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 1e-4
    backbone_lr_scale: float = 1.0  # LR multiplier of the (pre-trained) backbone
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    consistency: float = 1.0  # maximum weight of the consistency term
    consistency_ramp: Literal["linear", "sigmoid"] = "linear"
    consistency_ramp_epochs: float = 10.0  # w(t) reaches its maximum after this many epochs
    ema: float = 0.999  # teacher EMA momentum per step (as pretrain.ema)
    ema_buffers: Literal["own", "copy", "ema"] = "own"
    independent_views: bool = True  # student and teacher see independently augmented views
    augment_preset: Literal["weak", "strong"] = "weak"
    augment: AugmentOverrides = field(default_factory=AugmentOverrides)  # overrides of the preset
    pos_weight: bool = False  # per-class positive weights in the BCE (multi-label)
    select: Literal["val", "last"] = "val"  # model selection: best validation mean AUC, or last
    eval_every: int = 1  # validate every N epochs


@dataclass
class RunConfig:
    """Everything one run needs; written resolved into every run folder."""

    # the run's repetition: initialisation, batch order, augmentation (module docstring: seeds)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # forward passes: bf16 / fp16 autocast + channels-last, or fp32 NCHW; auto = bf16 on GPUs
    # with native bf16, fp16 (loss-scaled) on older GPUs, fp32 on CPUs
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # torch.compile the networks of the training steps (TorchInductor: fused kernels, compiled
    # at the first steps); the same numbers up to float rounding
    compile: bool = False
    # stage 1 on one CUDA GPU without compile: replay the networks' kernels from CUDA graphs
    # captured before the first step (the host no longer launches them one by one); same numbers
    cuda_graphs: bool = True
    threads: int = 0  # torch CPU threads (0 = all cores)
    log_every: int = 10  # steps between progress-bar metric refreshes (no per-step host sync)
    # seconds between checkpoint writes (last.pt, with best.pt when the best changed); 0 = after
    # every epoch. The final epoch is always written; a resumed run replays the epochs since the
    # last write. For epochs of a second or two, where a write (~0.5 s) is a large share
    checkpoint_interval: float = 0.0
    tensorboard: bool = False  # also write the per-epoch metrics to OUT/tensorboard (the tb extra)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def finetune_size(self) -> int:
        """Stage 2's training and evaluation size in pixels."""
        return self.finetune.size or self.data.size

    def absolute_paths(self) -> None:
        """Make the paths it names absolute, relative ones taken from the current folder (module
        docstring), so that the run folder's ``config.yaml`` means the same files anywhere."""
        for section, key in (("data", "dir"), ("finetune", "pretrained"), ("model", "weights")):
            obj = getattr(self, section)
            if getattr(obj, key):
                setattr(obj, key, str(Path(getattr(obj, key)).expanduser().absolute()))


PRESET_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class _Range:
    """The values a numeric setting may take (``None``: unbounded on that side)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself is excluded
    or_zero: bool = False  # 0 is allowed too (it stands for a default)

    def holds(self, v: float) -> bool:
        above = self.low is None or (v > self.low if self.open_low else v >= self.low)
        return (self.or_zero and v == 0) or (above and (self.high is None or v <= self.high))

    def __str__(self) -> str:
        zero = "0 or " if self.or_zero else ""
        if self.high is None:
            return f"{zero}{'>' if self.open_low else '≥'} {self.low:g}"
        return f"{zero}in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"


_POSITIVE, _NATURAL, _COUNT = _Range(0, open_low=True), _Range(0), _Range(1)
_UNIT, _FRACTION = _Range(0, 1), _Range(0, 1, open_low=True)
_MOMENTUM = _Range(0, 0.9999)  # SGD momentum below 1
_IMAGE_SIZE, _IMAGE_SIZE_OR_DEFAULT = _Range(8), _Range(8, or_zero=True)  # pixels; 0: default
_AUGMENT_PROBABILITIES = ("rotate_p", "hflip_p", "vflip_p", "jitter_p", "blur_p", "erase_p")
_EITHER_STAGE = {  # keys of both training stages
    "epochs": _COUNT,
    "batch_size": _Range(2),  # BatchNorm needs two images
    "lr": _POSITIVE,
    "momentum": _MOMENTUM,
    "weight_decay": _NATURAL,
    "warmup_epochs": _NATURAL,
    "ema": _UNIT,
}
# (section, key) -> range: checked as each value is set, so the error names the key (and file)
_RANGES: dict[tuple[type, str], _Range] = {
    (RunConfig, "threads"): _NATURAL,
    (RunConfig, "log_every"): _COUNT,
    (RunConfig, "checkpoint_interval"): _NATURAL,
    (DataConfig, "size"): _IMAGE_SIZE,
    (DataConfig, "cache_size"): _IMAGE_SIZE_OR_DEFAULT,
    (DataConfig, "labelled"): _FRACTION,
    (DataConfig, "labelled_count"): _NATURAL,
    (ModelConfig, "proj_dim"): _COUNT,
    (ModelConfig, "proj_hidden"): _NATURAL,
    (ModelConfig, "head_hidden"): _NATURAL,
    **{(AugmentOverrides, k): _UNIT for k in _AUGMENT_PROBABILITIES},
    **{(AugmentOverrides, k): _NATURAL for k in ("brightness", "contrast", "saturation")},
    (AugmentOverrides, "crop_scale_min"): _FRACTION,
    (AugmentOverrides, "rotate_deg"): _Range(0, 180),
    (AugmentOverrides, "hue"): _Range(0, 0.5),
    **{
        (stage, k): r
        for stage in (PretrainConfig, FinetuneConfig)
        for k, r in _EITHER_STAGE.items()
    },
    (PretrainConfig, "views"): _COUNT,
    (PretrainConfig, "queue_size"): _COUNT,
    (PretrainConfig, "bn_groups"): _NATURAL,
    (PretrainConfig, "temperature"): _POSITIVE,
    (PretrainConfig, "lam_max"): _NATURAL,
    (PretrainConfig, "monitor_every"): _NATURAL,
    (PretrainConfig, "knn_k"): _COUNT,
    (PretrainConfig, "knn_temperature"): _POSITIVE,
    (FinetuneConfig, "size"): _IMAGE_SIZE_OR_DEFAULT,
    (FinetuneConfig, "steps_per_epoch"): _NATURAL,
    (FinetuneConfig, "unlabelled_ratio"): _POSITIVE,
    (FinetuneConfig, "backbone_lr_scale"): _NATURAL,
    (FinetuneConfig, "consistency"): _NATURAL,
    (FinetuneConfig, "consistency_ramp_epochs"): _NATURAL,
    (FinetuneConfig, "eval_every"): _COUNT,
}


def preset_path(name: str) -> Path:
    """Path of a built-in preset (``demo``, ``ham10000-cpu``, ...), also at ``configs/`` in git."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"--config: no preset named {name!r}; built-in presets: {known}")
    return path


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': {value!r} is not a {_type_name(tp)}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 (PyYAML) reads 1e-3 as a string
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float and not isinstance(value, float):
        raise ConfigError(f"config key '{key}': expected a float, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"config key '{key}': expected text, got {value!r} (quote it in YAML)")
    return value


# Settings of earlier versions that are no longer read: key -> (the value that asks for what is
# now the only behaviour, why it went). Checkpoints and run records of those versions store them,
# and so does the resolved config.yaml of their runs, which a user may pass to --config again.
RETIRED_KEYS: dict[str, tuple[Any, str]] = {
    "model.shared_bn_stats": (
        False,
        "was removed: DenseNet's shared batch-norm statistics made training slower on an H200 "
        "(stage 1 at 0.72x) and no faster on a CPU (benchmarks/README.md)",
    ),
}


# Settings renamed since earlier versions: old key -> (new key in the same section, the type of
# the values the old key held; a value of another type is the new meaning of a reused name).
RENAMED_KEYS: dict[str, tuple[str, type]] = {
    "finetune.augment": ("finetune.augment_preset", str),  # "weak" | "strong"
    "finetune.augment_overrides": ("finetune.augment", dict),
}


def renamed_keys(values: dict[str, Any], prefix: str = "", quiet: bool = False) -> dict[str, Any]:
    """A copy of the nested ``values`` with the keys of :data:`RENAMED_KEYS` under their new
    names; each renamed key is logged, naming its new key, unless ``quiet``."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if key in RENAMED_KEYS and isinstance(v, RENAMED_KEYS[key][1]):
            new = RENAMED_KEYS[key][0]
            if not quiet:
                log.warning("config: %s is now %s", key, new)
            key, k = new, new.rsplit(".", 1)[-1]
        out[k] = renamed_keys(v, f"{key}.", quiet) if isinstance(v, dict) else v
    return out


def _apply(obj: Any, values: dict[str, Any], prefix: str = "", stored: bool = False) -> None:
    """Set ``values`` (nested mappings) on the config ``obj``. A key of :data:`RETIRED_KEYS` is
    skipped where it holds its kept value, or anywhere in a config a run stored (``stored``), and
    refused with its reason otherwise."""
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if key in RETIRED_KEYS:
            kept, why = RETIRED_KEYS[key]
            if stored or v == kept:
                continue
            raise ConfigError(f"config key '{key}' {why}")
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown config key '{key}'{hint}; valid keys here: {', '.join(sorted(names))}"
            )
        current = getattr(obj, k)
        if is_dataclass(current):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' is a section; expected a mapping, got {v!r}")
            _apply(current, v, prefix=f"{key}.", stored=stored)
        else:
            value = _coerce(v, hints[k], key)
            allowed = _RANGES.get((type(obj), k))
            if allowed is not None and value is not None and not allowed.holds(value):
                raise ConfigError(
                    f"config key '{key}': {value!r} is out of range; expected {allowed}"
                )
            setattr(obj, k, value)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def _resolve_key(key: str, stage: str | None) -> str:
    """A key whose first part is not a top-level field is taken from the current stage's section.

    ``epochs`` and ``augment.jitter_p`` inside ``s2mts2 pretrain`` mean ``pretrain.epochs`` and
    ``pretrain.augment.jitter_p``.
    """
    top = {f.name for f in fields(RunConfig)}
    head = key.split(".", 1)[0]
    if head in top or stage is None:
        return key
    stage_fields = {f.name for f in fields(getattr(RunConfig(), stage))}
    if head not in stage_fields and difflib.get_close_matches(head, top, n=1):
        return key  # a misspelt top-level key ("sed"): reported with its suggestion
    return f"{stage}.{key}"  # else reported among the stage's keys


def _field_type(dotted: str) -> Any:
    """The annotated type of a dotted config key, or None when there is no such key."""
    obj: Any = RunConfig()
    *sections, name = dotted.split(".")
    for section in sections:
        obj = getattr(obj, section, None)
        if not is_dataclass(obj):
            return None
    return get_type_hints(type(obj)).get(name)


def parse_value(text: str, hint: Any, where: str) -> Any:
    """A command-line value for a setting typed ``hint`` (None: an unknown setting).

    Text settings (paths, names, column names) take the value as typed, so ``2024`` stays the
    text ``2024`` and ``0012`` is not read as octal, unless it is quoted or a ``[list]``; every
    other value is parsed as YAML (``true``, ``0.1``, ``[a, b]``). ``where`` names the flag.
    """
    text = text.strip()
    typed_text = hint is not None and str in (set(get_args(hint)) or {hint})
    if typed_text and not text.startswith(("'", '"', "[")):
        return text
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: cannot parse value {text!r}: {_yaml_problem(e)}") from e


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: where and what."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def parse_override(text: str, stage: str | None = None) -> dict[str, Any]:
    """``"pretrain.epochs=3"`` -> ``{"pretrain": {"epochs": 3}}`` (values: ``parse_value``)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key = _resolve_key(key, stage)
    return _nest(key, parse_value(raw, _field_type(key), f"--set {key}"))


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    stage: str | None = None,
) -> RunConfig:
    """Defaults <- YAML ``path`` (a file or a built-in preset name) <- ``overrides`` (key=value)."""
    cfg = RunConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            if p.suffix or len(p.parts) > 1:
                raise ConfigError(f"--config: file not found: {p}")
            p = preset_path(str(p))
        try:
            values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {_yaml_problem(e)}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not a YAML text file ({e.reason})") from e
        if not isinstance(values, dict):
            raise ConfigError(f"{p}: expected a mapping of config sections at the top level")
        try:
            _apply(cfg, renamed_keys(values))
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from e
    for text in overrides:
        _apply(cfg, renamed_keys(parse_override(text, stage)))
    _check_sizes(cfg, stage)
    return cfg


def _check_sizes(cfg: RunConfig, stage: str | None = None) -> None:
    """Refuse a ``data.cache_size`` below the training size it is read for: stage 2's, or, for
    ``stage`` ``pretrain``, stage 1's (``data.size``)."""
    cache = cfg.data.cache_size
    size = cfg.data.size if stage == "pretrain" else cfg.finetune_size()
    if cache and cache < size:
        what = (
            "stage-1 training size (data.size)"
            if stage == "pretrain"
            else ("stage-2 training size (finetune.size, else data.size)")
        )
        raise ConfigError(
            f"config key 'data.cache_size': {cache} px is below the {what} {size} px; a cache is "
            f"resized down, not up: prepare one of at least {size} px, or 0 for the training size"
        )


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return asdict(cfg)


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """The config stored by a run (checkpoint, run record), also one of an earlier version."""
    cfg = RunConfig()
    _apply(cfg, renamed_keys(values, quiet=True), stored=True)
    return cfg
