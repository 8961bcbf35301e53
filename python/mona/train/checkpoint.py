"""Checkpoints: written atomically (temporary file + ``os.replace``), holding everything needed to
resume exactly and the metadata inference needs (classes, input size, normalisation, model config).

A training checkpoint (``mona-checkpoint-v2``) stores ``objects``: the state of every named stateful
object of the run (student, teacher, optimiser, scheduler, scaler, samplers, banks, queues, every
``torch.Generator``), produced by :func:`state_of` from the same dictionary that :func:`restore`
loads it into, so nothing can be saved and forgotten on load (or the reverse). The student's
weights are ``objects["student"]`` (:func:`student_state`), stored once.

``export_inference`` writes the UNet weights only (training heads excluded) + that metadata.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..atomicio import atomic_write
from ..errors import DataError, MissingFileError
from ..models import MonaNet, build_model

FORMAT = "mona-checkpoint-v2"
OLD_FORMATS = ("mona-checkpoint-v1",)  # supervised checkpoints of mona 0.1: loadable for inference
INFERENCE_FORMAT = "mona-inference-v1"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (:func:`mona.atomicio.atomic_write`, fault points
    ``checkpoint.*``): a reader sees the previous complete checkpoint or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, dict) and "format" in obj:
        obj = {**obj, "mona_version": __version__}
    atomic_write(path, lambda fh: torch.save(obj, fh), tag="checkpoint")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_meta(
    num_classes: int,
    class_names: list[str],
    size: int,
    normalisation: dict,
    channels,
    dropout,
    embed_dim: int = 512,
    rep_stride: int = 1,
    label_values: list[int] | None = None,
    head_norm: str = "layer",
) -> dict:
    """What :func:`mona.models.build_model` and inference need to rebuild the network."""
    return {
        "num_classes": num_classes,
        "class_names": list(class_names),
        "size": int(size),
        "normalisation": dict(normalisation),
        "channels": list(channels),
        "dropout": list(dropout),
        "embed_dim": int(embed_dim),
        "rep_stride": int(rep_stride),
        "label_values": label_values,
        "head_norm": head_norm,
    }


def state_of(obj: Any) -> Any:
    """The saved state of one stateful object: ``get_state()`` of a ``torch.Generator``, else ``state_dict()``."""
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    return obj.state_dict()


def states_of(objects: dict[str, Any]) -> dict[str, Any]:
    return {name: state_of(obj) for name, obj in objects.items()}


def restore(objects: dict[str, Any], states: dict[str, Any], source: str | Path) -> None:
    """Load ``states`` (from :func:`states_of`) into ``objects``; the two key sets must be equal."""
    missing, extra = sorted(set(objects) - set(states)), sorted(set(states) - set(objects))
    if missing or extra:
        raise DataError(
            f"checkpoint {source}: its stateful objects do not match this run (missing {missing}, "
            f"unexpected {extra}); was it written by another method or version?"
        )
    for name, obj in objects.items():
        try:
            if isinstance(obj, torch.Generator):
                obj.set_state(states[name])
            else:
                obj.load_state_dict(states[name])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            first = (str(err).strip().splitlines() or [""])[0]
            raise DataError(
                f"checkpoint {source}: the saved state of {name!r} does not fit this run ({first})"
            ) from err


def export_inference(model: MonaNet, meta: dict, path: str | Path) -> None:
    """Inference weights: ``{"format", "meta", "unet"}`` (no training heads)."""
    atomic_torch_save({"format": INFERENCE_FORMAT, "meta": meta, "unet": model.inference_state_dict()}, path)


KNOWN_FORMATS = (FORMAT, INFERENCE_FORMAT, *OLD_FORMATS)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint or exported model as a dict; :class:`DataError` naming the file if it is missing,
    not a file, empty, truncated / corrupt, not a mona checkpoint, or of a format this version cannot read."""
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"checkpoint {p} does not exist")
    if p.is_dir():
        raise DataError(f"checkpoint {p}: is a directory, not a checkpoint file (e.g. {p / 'last.pt'})")
    if p.stat().st_size == 0:
        raise DataError(f"checkpoint {p}: empty file (0 bytes)")
    try:
        ck = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as err:  # torch / pickle / zipfile raise many types for a damaged file
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0]
        raise DataError(
            f"checkpoint {p}: unreadable: truncated, corrupt or not a PyTorch file ({type(err).__name__}: {first})"
        ) from err
    if not isinstance(ck, dict) or "format" not in ck:
        raise DataError(f"checkpoint {p}: not a mona checkpoint (a saved {type(ck).__name__} without a 'format' key)")
    fmt = ck["format"]
    if fmt not in KNOWN_FORMATS:
        raise DataError(
            f"checkpoint {p}: format {fmt!r} (written by mona {ck.get('mona_version', '?')}) is not "
            f"one mona {__version__} reads ({', '.join(KNOWN_FORMATS)})"
        )
    return ck


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MonaNet, dict]:
    """A model for inference (heads dropped) from a training checkpoint or an exported model. Returns (model, meta)."""
    ck = load_checkpoint(path)
    meta = ck["meta"]
    model = build_model(meta)
    try:
        model.unet.load_state_dict(unet_state(ck))
    except (RuntimeError, KeyError) as err:
        first = (str(err).strip().splitlines() or [""])[-1].strip()
        raise DataError(
            f"checkpoint {path}: its weights do not fit its own metadata ({meta['num_classes']} classes, "
            f"channels {meta['channels']}): {first}"
        ) from err
    return model.to(device).eval(), meta


def student_state(ck: dict) -> dict[str, torch.Tensor]:
    """The student's ``MonaNet`` state of a loaded checkpoint: a training checkpoint's student (v1: its
    ``model``), or an exported model's UNet (keys prefixed ``unet.``, no heads)."""
    if ck["format"] == INFERENCE_FORMAT:
        return {f"unet.{k}": v for k, v in ck["unet"].items()}
    if ck["format"] in OLD_FORMATS:
        return ck["model"]
    return ck["objects"]["student"]


def unet_state(ck: dict, model: str = "student") -> dict[str, torch.Tensor]:
    """The UNet weights of a loaded training checkpoint (``model``: its ``student`` or its EMA
    ``teacher``) or exported model."""
    if model == "teacher":
        if ck.get("format") != FORMAT or "teacher" not in ck.get("objects", {}):
            raise ValueError("unet_state: this checkpoint holds no EMA teacher")
        state = ck["objects"]["teacher"]
    else:
        state = student_state(ck)
    return {k[len("unet.") :]: v for k, v in state.items() if k.startswith("unet.")}
