"""UNet + heads: shapes of the typed output, SSL4MIS parameter count, inference weights without heads."""

from __future__ import annotations

import pytest
import torch

from mona.models import MonaNet


def test_outputs_and_shapes():
    m = MonaNet(num_classes=4, heads=("representation", "global", "local"), rep_stride=2)
    out = m(torch.randn(2, 1, 64, 64))
    assert out.logits.shape == (2, 4, 64, 64)
    assert out.unet.bottleneck.shape == (2, 256, 4, 4)
    assert [d.shape[1] for d in out.unet.decoder] == [128, 64, 32, 16]
    assert out.embedding.shape == (2, 512, 32, 32)
    assert out.global_proj.shape == out.global_pred.shape == (2, 512)
    crops = out.unet.decoder[-1][:, :, :16, :16]
    assert m.heads["local"](crops).shape == (2, 512)


def test_ssl4mis_unet_size_and_inference_export():
    m = MonaNet(num_classes=4, heads=("representation", "global"))
    unet_params = sum(p.numel() for p in m.unet.parameters())
    assert unet_params == 1_813_764  # SSL4MIS UNet(in_chns=1, class_num=4): 1.81 M parameters
    state = m.inference_state_dict()
    assert state and all(not k.startswith("heads") for k in state)
    assert set(state) == set(m.unet.state_dict())


def test_bad_input_shape():
    with pytest.raises(ValueError, match="divisible by 16"):
        MonaNet()(torch.randn(1, 1, 50, 50))
