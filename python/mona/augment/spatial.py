"""Random invertible spatial transforms on batched tensors.

A :class:`SpatialTransform` is a per-image sampling map ``S`` (output pixel -> input location, in
``grid_sample``'s normalised coordinates, ``align_corners=False``) made of a smooth diffeomorphic
deformation followed by an affine map (flip, rotation, crop/zoom, shift):
``S(p) = A(phi(p))`` with ``phi = exp(v)`` (a stationary velocity field integrated by scaling and
squaring). Its inverse is ``S^-1(q) = phi^-1(A^-1 q)`` with ``phi^-1 = exp(-v)``, so T and T^-1 are
available for images, labels and logit maps alike. Warping uses ``torch.nn.functional.grid_sample``
(images and logits: bilinear; labels: nearest), on whatever device the tensors live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def identity_grid(b: int, h: int, w: int, device: torch.device | str = "cpu", dtype=torch.float32) -> torch.Tensor:
    """``[B, H, W, 2]`` pixel-centre coordinates (x, y) in [-1, 1] (align_corners=False convention)."""
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).expand(b, h, w, 2).contiguous()


def _sample_field(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Displacement field ``[B, H, W, 2]`` sampled bilinearly at ``points [B, h, w, 2]`` -> ``[B, h, w, 2]``."""
    out = F.grid_sample(field.permute(0, 3, 1, 2), points, mode="bilinear", padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def integrate_velocity(v: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """exp(v) by scaling and squaring. v: velocity ``[B, H, W, 2]`` (normalised units); returns the
    displacement u of phi = id + u, ``[B, H, W, 2]``."""
    b, h, w, _ = v.shape
    grid = identity_grid(b, h, w, v.device, v.dtype)
    u = v / (2**steps)
    for _ in range(steps):
        u = u + _sample_field(u, grid + u)
    return u


@dataclass
class SpatialTransform:
    """affine ``[B, 2, 3]`` (output -> input, normalised coords) and displacement ``[B, H, W, 2]`` of phi
    (and of phi^-1 in ``inv_disp``). ``grid``: the sampling map S, ``[B, H, W, 2]``."""

    affine: torch.Tensor
    disp: torch.Tensor
    inv_disp: torch.Tensor
    inverted: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        b, h, w, _ = self.disp.shape
        return b, h, w

    def grid(self) -> torch.Tensor:
        b, h, w = self.shape
        g = identity_grid(b, h, w, self.disp.device, self.disp.dtype)
        lin, t = self.affine[:, :, :2], self.affine[:, :, 2]
        if not self.inverted:  # S(p) = A(p + u(p))
            p = g + self.disp
            return torch.einsum("bij,bhwj->bhwi", lin, p) + t[:, None, None, :]
        # S^-1(q) = phi^-1(A^-1 q) = x + u_inv(x), x = A^-1 q
        inv_lin = torch.linalg.inv(lin)
        x = torch.einsum("bij,bhwj->bhwi", inv_lin, g - t[:, None, None, :])
        return x + _sample_field(self.inv_disp, x)

    def inverse(self) -> "SpatialTransform":
        return SpatialTransform(self.affine, self.disp, self.inv_disp, not self.inverted)

    def __getitem__(self, index: slice) -> "SpatialTransform":
        """The transforms of a sub-batch (e.g. ``t[:bl]`` for the labeled half)."""
        return SpatialTransform(self.affine[index], self.disp[index], self.inv_disp[index], self.inverted)

    def to(self, device: torch.device | str) -> "SpatialTransform":
        return SpatialTransform(self.affine.to(device), self.disp.to(device), self.inv_disp.to(device), self.inverted)

    def _check(self, x: torch.Tensor, name: str) -> None:
        b, h, w = self.shape
        if x.shape[0] != b or tuple(x.shape[-2:]) != (h, w):
            raise ValueError(
                f"SpatialTransform: {name} has shape {tuple(x.shape)}, transform is for batch {b} of {h}x{w}"
            )

    def apply_image(self, x: torch.Tensor) -> torch.Tensor:
        """Images or logit maps ``[B, C, H, W]`` (bilinear; outside the field: 0)."""
        self._check(x, "image")
        g = self.grid().to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        return F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=False)

    def apply_label(self, y: torch.Tensor, fill: int = 0) -> torch.Tensor:
        """Integer labels ``[B, H, W]`` (nearest; outside the field: ``fill``). Values stay in the input's set
        (plus ``fill``)."""
        self._check(y, "label")
        g = self.grid().to(y.device)
        src = (y.to(torch.float32) - fill)[:, None]
        out = F.grid_sample(src, g, mode="nearest", padding_mode="zeros", align_corners=False)
        return (out[:, 0].round() + fill).to(y.dtype)

    def valid_mask(self) -> torch.Tensor:
        """``[B, H, W]`` bool: output pixels whose source lies inside the input field."""
        g = self.grid()
        return (g.abs() <= 1).all(dim=-1)


def random_affine(
    b: int,
    gen: torch.Generator,
    *,
    rotate_deg: float = 20.0,
    flip: bool = True,
    scale: tuple[float, float] = (0.8, 1.0),
    shift: bool = True,
) -> torch.Tensor:
    """``[B, 2, 3]`` random affine (output -> input): horizontal/vertical flips (p = .5 each), rotation
    uniform in ``+-rotate_deg``, zoom by a crop fraction ``s`` in ``scale`` (< 1 zooms in, i.e. a crop
    resized to full size) and a shift keeping the crop inside the image."""
    u = torch.rand(b, 6, generator=gen, dtype=torch.float64)
    ang = (u[:, 0] * 2 - 1) * math.radians(rotate_deg)
    s = scale[0] + u[:, 1] * (scale[1] - scale[0])
    fx = torch.where((u[:, 2] < 0.5) & flip, -1.0, 1.0).double()
    fy = torch.where((u[:, 3] < 0.5) & flip, -1.0, 1.0).double()
    c, si = torch.cos(ang), torch.sin(ang)
    lin = torch.stack([torch.stack([c * s * fx, -si * s * fy], -1), torch.stack([si * s * fx, c * s * fy], -1)], 1)
    room = (1 - s).clamp(min=0)
    t = torch.stack([(u[:, 4] * 2 - 1) * room, (u[:, 5] * 2 - 1) * room], -1) if shift else torch.zeros(b, 2).double()
    return torch.cat([lin, t[:, :, None]], dim=2).float()


def random_velocity(
    b: int, h: int, w: int, gen: torch.Generator, *, amplitude: float = 0.03, control: int = 5
) -> torch.Tensor:
    """Smooth random velocity ``[B, H, W, 2]``: Gaussian noise on a ``control x control`` grid, bicubic
    upsampled; ``amplitude`` is the standard deviation in normalised units (1 = half the image)."""
    coarse = torch.randn(b, 2, control, control, generator=gen) * amplitude
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1).contiguous()


def random_transform(
    b: int,
    h: int,
    w: int,
    gen: torch.Generator,
    *,
    rotate_deg: float = 20.0,
    flip: bool = True,
    scale: tuple[float, float] = (0.8, 1.0),
    deform: float = 0.0,
    deform_control: int = 5,
    device: torch.device | str = "cpu",
) -> SpatialTransform:
    """A random invertible T for a batch of ``b`` images of ``h x w``; parameters drawn on the CPU from
    ``gen`` (same generator state -> same T on any device)."""
    affine = random_affine(b, gen, rotate_deg=rotate_deg, flip=flip, scale=scale)
    if deform > 0:
        v = random_velocity(b, h, w, gen, amplitude=deform, control=deform_control).to(device)
        disp, inv = integrate_velocity(v), integrate_velocity(-v)
    else:
        disp = inv = torch.zeros(b, h, w, 2, device=device)
    return SpatialTransform(affine.to(device), disp, inv)
