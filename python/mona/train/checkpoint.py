"""Checkpoints: written atomically (temporary file + ``os.replace``), holding everything needed to
resume exactly (model, optimiser, scheduler, AMP scaler, iteration, all RNG states, sampler state)
and the metadata inference needs (classes, input size, normalisation, model config).

``export_inference`` writes the UNet weights only (training heads excluded) + that metadata.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models import MonaNet

FORMAT = "mona-checkpoint-v1"
INFERENCE_FORMAT = "mona-inference-v1"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def model_meta(num_classes: int, class_names: list[str], size: int, normalisation: dict, channels, dropout) -> dict:
    return {"num_classes": num_classes, "class_names": list(class_names), "size": int(size),
            "normalisation": dict(normalisation), "channels": list(channels), "dropout": list(dropout)}


def export_inference(model: MonaNet, meta: dict, path: str | Path) -> None:
    """Inference weights: ``{"format", "meta", "unet"}`` (no training heads)."""
    atomic_torch_save({"format": INFERENCE_FORMAT, "meta": meta, "unet": model.inference_state_dict()}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    try:
        ck = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {p}: unreadable ({type(err).__name__}: {err})") from err
    if not isinstance(ck, dict) or ck.get("format") not in (FORMAT, INFERENCE_FORMAT):
        raise ValueError(f"checkpoint {p}: not a mona checkpoint (format {ck.get('format') if isinstance(ck, dict) else type(ck)})")
    return ck


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MonaNet, dict]:
    """A model for inference (heads dropped) from a training checkpoint or an exported model. Returns (model, meta)."""
    ck = load_checkpoint(path)
    meta = ck["meta"]
    model = MonaNet(meta["num_classes"], channels=tuple(meta["channels"]), dropout=tuple(meta["dropout"]))
    if ck["format"] == INFERENCE_FORMAT:
        state = ck["unet"]
    else:
        state = {k[len("unet."):]: v for k, v in ck["model"].items() if k.startswith("unet.")}
    model.unet.load_state_dict(state)
    return model.to(device).eval(), meta
