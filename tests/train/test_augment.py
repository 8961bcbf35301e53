"""Augmentation: labels stay in range and aligned with images; T^-1 undoes T; flips are exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mona.augment import apply_cutmix, cutmix, cutmix_boxes, random_contrast_brightness, strong, weak
from mona.augment.spatial import identity_grid, random_transform


def _blobs(b=3, h=48, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(b, h, w, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for i in range(b):
        for c in (1, 2, 3):
            cy, cx = torch.randint(8, h - 8, (2,), generator=g).tolist()
            y[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = c
    return y


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), strong_aug=st.booleans())
def test_labels_stay_in_range_and_dtype(seed, strong_aug):
    y = _blobs(seed=seed % 1000)
    x = y[:, None].float() / 3
    fn = strong if strong_aug else weak
    xa, ya = fn(x, y, torch.Generator().manual_seed(seed))
    assert ya.dtype == torch.long and ya.shape == y.shape and xa.shape == x.shape
    assert set(ya.unique().tolist()) <= {0, 1, 2, 3}


def test_same_generator_state_same_result():
    y = _blobs()
    x = torch.rand(3, 1, 48, 48)
    a = strong(x, y, torch.Generator().manual_seed(5))
    b = strong(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_images_and_labels_get_the_same_geometry():
    """Warping the one-hot label bilinearly and taking the argmax must agree with the nearest-warped label."""
    y = _blobs()
    t = random_transform(3, 48, 48, torch.Generator().manual_seed(1), deform=0.05)
    onehot = F.one_hot(y, 4).permute(0, 3, 1, 2).float()
    soft = t.apply_image(onehot).argmax(1)
    hard = t.apply_label(y)
    inside = t.valid_mask()
    agree = (soft == hard)[inside].float().mean()
    assert agree > 0.97


def test_pure_flip_is_exact():
    y = _blobs()
    cfg = dict(rotate_deg=0.0, scale=(1.0, 1.0))
    for seed in range(6):
        t = random_transform(3, 48, 48, torch.Generator().manual_seed(seed), flip=True, **cfg)
        fx, fy = t.affine[:, 0, 0], t.affine[:, 1, 1]
        out = t.apply_label(y)
        for i in range(3):
            exp = y[i]
            if fx[i] < 0:
                exp = exp.flip(-1)
            if fy[i] < 0:
                exp = exp.flip(-2)
            assert torch.equal(out[i], exp)


@pytest.mark.parametrize("deform", [0.0, 0.05])
def test_inverse_undoes_transform(deform):
    t = random_transform(4, 64, 64, torch.Generator().manual_seed(3), deform=deform)
    fwd, inv = t.grid(), t.inverse().grid()
    # S(S^-1(q)) == q where S^-1(q) lands inside the field
    comp = F.grid_sample(fwd.permute(0, 3, 1, 2), inv, align_corners=False, padding_mode="border").permute(0, 2, 3, 1)
    inside = (inv.abs() < 0.9).all(-1)
    err_pixels = ((comp - identity_grid(4, 64, 64)) * 32)[inside].abs().max()
    assert err_pixels < (0.05 if deform == 0 else 0.3)
    # T^-1(T(x)) == x for a smooth image away from the field border
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    img = (torch.sin(3 * xx) * torch.cos(2 * yy)).expand(4, 1, 64, 64)
    back = t.inverse().apply_image(t.apply_image(img))
    both = t.inverse().valid_mask() & inside
    assert (back - img)[:, 0][both].abs().max() < 0.1


def test_transform_applies_to_logit_maps_on_any_channel_count():
    t = random_transform(2, 32, 32, torch.Generator().manual_seed(0), deform=0.03)
    logits = torch.randn(2, 7, 32, 32)
    out = t.apply_image(logits)
    assert out.shape == logits.shape
    with pytest.raises(ValueError, match="transform is for batch 2 of 32x32"):
        t.apply_image(torch.randn(3, 1, 32, 32))


def test_cutmix_boxes_match_between_images_and_labels():
    y = _blobs(b=6)
    x = y[:, None].float()
    xm, ym, mask = cutmix(x, y, torch.Generator().manual_seed(0), prob=1.0)
    assert mask.any()
    assert torch.equal(xm[:, 0].long(), ym)  # images encode labels: mixing kept them paired


def test_intensity_changes_images_only_and_keeps_shape():
    x = torch.rand(4, 1, 16, 16)
    out = random_contrast_brightness(x, torch.Generator().manual_seed(0), contrast=(1.0, 1.0), brightness=0.0)
    torch.testing.assert_close(out, x)
    out = random_contrast_brightness(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)


@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("seed", range(6))
def test_paste_boxes_in_place_equals_apply_cutmix(stride, seed):
    """The in-place box paste (the teacher key map's CutMix) gives apply_cutmix's values, at full
    resolution and on stride-s maps, including chains of images that are each other's sources."""
    from mona.augment import cutmix_box_list, paste_boxes_

    g = torch.Generator().manual_seed(seed)
    b, h, w = 5, 24, 20
    perm, mask, boxes = cutmix_box_list(b, h, w, g, prob=0.9)
    again = cutmix_boxes(b, h, w, torch.Generator().manual_seed(seed), prob=0.9)
    assert torch.equal(again[0], perm) and torch.equal(again[1], mask)  # the same draws as cutmix_boxes
    assert boxes and all(
        mask[i, t:bt, l:r].all() and mask[i].sum() == (bt - t) * (r - l) for i, _, t, bt, l, r in boxes
    )
    t = torch.randn(b, 3, h // stride, w // stride, generator=g)
    expected = apply_cutmix(t, perm, mask)
    out = paste_boxes_(t.clone(), boxes, (h, w))
    assert torch.equal(out, expected)


def test_paste_boxes_rejects_a_map_that_is_no_stride_view():
    from mona.augment import paste_boxes_

    with pytest.raises(ValueError, match="whole-stride view"):
        paste_boxes_(torch.zeros(2, 1, 7, 8), [], (16, 16))
