"""Training configuration: dataclasses, loaded from YAML with ``key=value`` overrides.

``method`` selects the training procedure; this package implements ``supervised`` (the UNet-L /
UNet-F baseline). The MONA stages (``glcon``, ``acr``) will add their own sections; unknown keys
are an error, never ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ..augment import AugmentConfig

METHODS = ("supervised",)


@dataclass
class DataConfig:
    cache: str = ""                       # a prepared cache (``mona prepare``)
    labeled_patients: int | None = None   # whole labeled patients (first n of the train split) ...
    labeled_ratio: float | None = None    # ... or a ratio of the train patients (ACDC: 0.01/0.05/0.1 -> 1/3/7)
    batch_size: int = 12                  # the paper's 6 is labeled + unlabeled halves; supervised uses all labeled
    labeled_bs: int | None = None         # None: = batch_size (supervised)


@dataclass
class ModelConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    dropout: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    heads: tuple[str, ...] = ()           # training-only heads: representation, global, local


@dataclass
class OptimConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"                # "step" (lr/10 every step_size iterations) or "poly"
    step_size: int = 2500
    gamma: float = 0.1
    poly_power: float = 0.9


@dataclass
class TrainConfig:
    method: str = "supervised"
    out_dir: str = "runs/supervised"
    seed: int = 1337
    iterations: int = 30000
    val_every: int = 500
    log_every: int = 10
    checkpoint_every: int = 500
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    amp: bool = True                      # mixed precision (only used on CUDA)
    threads: int | None = None            # torch CPU threads (None: torch default)
    dice_weight: float = 0.5              # loss = dice_weight * Dice + ce_weight * CE
    ce_weight: float = 0.5
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"config: method must be one of {METHODS} (MONA stages come later), got {self.method!r}")
        if not self.data.cache:
            raise ValueError("config: data.cache is required (a directory written by `mona prepare`)")
        if (self.data.labeled_patients is None) == (self.data.labeled_ratio is None):
            raise ValueError("config: set exactly one of data.labeled_patients and data.labeled_ratio")
        if self.optim.schedule not in ("step", "poly"):
            raise ValueError(f"config: optim.schedule must be 'step' or 'poly', got {self.optim.schedule!r}")
        for name in ("iterations", "val_every", "log_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"config: {name} must be > 0, got {getattr(self, name)}")
        if self.data.batch_size <= 0:
            raise ValueError(f"config: data.batch_size must be > 0, got {self.data.batch_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML/override value to the field's declared type."""
    origin = getattr(typ, "__origin__", None)
    args = getattr(typ, "__args__", ())
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ValueError(f"config: {key} must be a mapping, got {value!r}")
        return _build(typ, value, key + ".")
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"config: {key} may not be null")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config: {key} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"config: {key} must be {getattr(typ, '__name__', typ)}, got {value!r}") from None
    return value


def _build(cls, values: dict, prefix: str = ""):
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"config: unknown key(s) {[prefix + u for u in unknown]}; valid: {sorted(names)}")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in values.items()})


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"config override {dotted!r}: {p} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """YAML file (optional) + overrides (``["optim.lr=0.02", "data.labeled_patients=3"]`` or a dotted dict)."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config: {p} does not exist")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config: {p} is not valid YAML ({err})") from err
        if not isinstance(tree, dict):
            raise ValueError(f"config: {p} must hold a mapping at the top level")
    items = overrides.items() if isinstance(overrides, dict) else []
    if isinstance(overrides, list):
        parsed = []
        for ov in overrides:
            if "=" not in ov:
                raise ValueError(f"config override {ov!r} must look like key=value (e.g. optim.lr=0.02)")
            k, v = ov.split("=", 1)
            parsed.append((k.strip(), yaml.safe_load(v)))
        items = parsed
    for k, v in items:
        _set_dotted(tree, k, v)
    cfg = _build(TrainConfig, tree)
    cfg.validate()
    return cfg


def config_from_dict(d: dict) -> TrainConfig:
    """Rebuild a config saved with :meth:`TrainConfig.to_dict` (e.g. from a checkpoint)."""
    return _build(TrainConfig, d)
