"""Slice-wise inference at the training resolution, reassembled into the original volume geometry."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.prepare import normalise_volume, resize_image_slices


@torch.no_grad()
def predict_volume(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    normalisation: dict,
    size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
) -> np.ndarray:
    """Segment a raw volume.

    image: ``[X, Y, Z]`` raw intensities. Each slice is normalised (per volume, as in ``prepare``),
    resized to ``size x size`` (bilinear), segmented; the class probabilities are resized back to
    ``X x Y`` (bilinear) and the argmax taken there. Returns int64 labels ``[X, Y, Z]``.
    ``model(x)`` must return an object with ``.logits`` ``[B, C, size, size]``.
    """
    if image.ndim != 3:
        raise ValueError(f"predict_volume: expected an [X, Y, Z] volume, got shape {image.shape}")
    was_training = model.training
    model.eval()
    x_all = resize_image_slices(normalise_volume(image, normalisation), size)  # [Z, S, S]
    X, Y, Z = image.shape
    out = np.empty((X, Y, Z), np.int64)
    try:
        for z0 in range(0, Z, batch_size):
            x = torch.from_numpy(x_all[z0 : z0 + batch_size])[:, None].to(device)
            probs = torch.softmax(model(x).logits.float(), dim=1)
            probs = F.interpolate(probs, size=(X, Y), mode="bilinear", align_corners=False)
            out[:, :, z0 : z0 + x.shape[0]] = probs.argmax(1).permute(1, 2, 0).cpu().numpy()
    finally:
        model.train(was_training)
    return out
