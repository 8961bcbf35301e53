"""Models: the UNet backbone, the training-only heads and the :class:`MonaNet` wrapper."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .heads import GlobalProjectionHead, LocalProjectionHead, Predictor, RepresentationHead
from .unet import UNet, UNetOutput


@dataclass
class ModelOutput:
    """logits ``[B, C, H, W]``; unet: the backbone's output (bottleneck, decoder maps);
    embedding ``[B, 512, H/s, W/s]`` (representation head) or embedding_hidden ``[B, 64, H/s, W/s]``
    (the head before its last 1x1 convolution); global_proj / global_pred ``[B, 512]``."""

    logits: torch.Tensor
    unet: UNetOutput
    embedding: torch.Tensor | None = None
    embedding_hidden: torch.Tensor | None = None
    global_proj: torch.Tensor | None = None
    global_pred: torch.Tensor | None = None


class MonaNet(nn.Module):
    """UNet + optional training-only heads. ``inference_state_dict()`` holds the UNet only."""

    def __init__(
        self,
        num_classes: int = 4,
        in_channels: int = 1,
        channels: tuple[int, ...] = (16, 32, 64, 128, 256),
        dropout: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5),
        heads: tuple[str, ...] = (),
        embed_dim: int = 512,
        rep_stride: int = 1,
        head_norm: str = "layer",
    ):
        super().__init__()
        unknown = set(heads) - {"representation", "global", "local"}
        if unknown:
            raise ValueError(f"MonaNet: unknown heads {sorted(unknown)}")
        self.unet = UNet(in_channels, num_classes, channels, dropout)
        self.heads = nn.ModuleDict()
        dec = tuple(reversed(channels[:4]))
        if "representation" in heads:
            self.heads["representation"] = RepresentationHead(dec, embed_dim, output_stride=rep_stride)
        if "global" in heads:
            self.heads["global"] = GlobalProjectionHead(channels[4], embed_dim, norm=head_norm)
            self.heads["predictor"] = Predictor(embed_dim, norm=head_norm)
        if "local" in heads:
            self.heads["local"] = LocalProjectionHead(channels[0], embed_dim, norm=head_norm)

    def forward(
        self,
        x: torch.Tensor,
        *,
        with_heads: bool = True,
        feature_perturbation: float = 0.0,
        representation: str = "map",
    ) -> ModelOutput:
        """x: ``[B, in_channels, H, W]``; ``feature_perturbation``: see :meth:`UNet.forward` (``unet.logits_fp``).
        ``representation``: ``"map"`` (``embedding``: the ``[B, embed_dim, h, w]`` map) or ``"hidden"``
        (``embedding_hidden``: the head's map before its last 1x1 convolution, for
        ``heads["representation"].project_rows`` at a few pixels; ``embedding`` stays None)."""
        if representation not in ("map", "hidden"):
            raise ValueError(f"MonaNet: representation must be 'map' or 'hidden', got {representation!r}")
        u = self.unet(x, feature_perturbation) if feature_perturbation > 0 else self.unet(x)
        out = ModelOutput(u.logits, u)
        if with_heads and "representation" in self.heads:
            head = self.heads["representation"]
            if representation == "hidden":
                out.embedding_hidden = head.hidden(u.decoder)
            else:
                out.embedding = head(u.decoder)
        if with_heads and "global" in self.heads:
            out.global_proj = self.heads["global"](u.bottleneck)
            out.global_pred = self.heads["predictor"](out.global_proj)
        return out

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """Exported weights: the UNet only (heads are training-only)."""
        return {k: v.detach().cpu() for k, v in self.unet.state_dict().items()}


def build_model(meta: dict, heads: tuple[str, ...] = ()) -> MonaNet:
    """The one model builder (training, checkpoint loading, inference).

    ``meta``: the model metadata stored in every checkpoint (:func:`mona.train.checkpoint.model_meta`):
    ``num_classes``, ``channels``, ``dropout`` and optionally ``embed_dim``, ``rep_stride``, ``head_norm``
    (absent in checkpoints of mona <= 0.3, whose MLP heads used BatchNorm1d: ``batch``).
    ``heads``: training-only heads to add (inference uses none).
    """
    try:
        return MonaNet(
            int(meta["num_classes"]),
            channels=tuple(meta["channels"]),
            dropout=tuple(meta["dropout"]),
            heads=tuple(heads),
            embed_dim=int(meta.get("embed_dim", 512)),
            rep_stride=int(meta.get("rep_stride", 1)),
            head_norm=str(meta.get("head_norm", "batch")),
        )
    except KeyError as err:
        raise ValueError(f"model metadata lacks {err} (got keys {sorted(meta)})") from None


__all__ = [
    "build_model",
    "UNet",
    "UNetOutput",
    "MonaNet",
    "ModelOutput",
    "RepresentationHead",
    "GlobalProjectionHead",
    "Predictor",
    "LocalProjectionHead",
]
