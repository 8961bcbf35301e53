"""Pure-PyTorch references of the fused KL family: ``pixel_kl``, ``similarity_kl``, ``knn_loss``.

Written with the obvious PyTorch calls (``F.log_softmax``, ``F.kl_div``, ``F.normalize``, ``topk``);
differentiable by autograd. The benchmarks use ``pixel_kl`` as the plain-PyTorch composite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops._common import acc_dtype


def pixel_kl(
    logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor | None = None, symmetric: bool = True
) -> torch.Tensor:
    """Reference of ``mona.pixel_kl``: ``F.kl_div`` on log-softmaxes over dim 1, masked mean over pixels."""
    acc = acc_dtype(logits_a.dtype)
    la = F.log_softmax(logits_a.to(acc), dim=1)
    lb = F.log_softmax(logits_b.to(acc), dim=1)
    kl = F.kl_div(lb, la, reduction="none", log_target=True).sum(1)  # KL(p_a || p_b) per pixel
    if symmetric:
        kl = kl + F.kl_div(la, lb, reduction="none", log_target=True).sum(1)
    if mask is None:
        return kl.mean().to(logits_a.dtype)
    w = mask.to(acc)
    den = w.sum()
    return torch.where(den > 0, (kl * w).sum() / den.clamp_min(torch.finfo(acc).tiny), 0.0).to(logits_a.dtype)


def similarity_kl(
    student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor, tau_student: float, tau_teacher: float
) -> torch.Tensor:
    """Reference of ``mona.similarity_kl`` (ISD / GLCon): mean over rows of
    KL(softmax(cos(teacher, queue) / tau_t) || softmax(cos(student, queue) / tau_s))."""
    acc = acc_dtype(student.dtype)
    q = F.normalize(queue.to(acc), dim=1)
    s = F.normalize(student.to(acc), dim=1) @ q.T / tau_student
    t = F.normalize(teacher.to(acc), dim=1) @ q.T / tau_teacher
    log_s = F.log_softmax(s, dim=1)
    log_t = F.log_softmax(t, dim=1)
    kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) if student.shape[0] else s.sum() * 0
    return kl.to(student.dtype)


def knn_loss(student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor, k: int) -> torch.Tensor:
    """Reference of ``mona.knn_loss``: the k queue entries nearest (cosine) to each teacher embedding;
    loss = -mean over rows and neighbours of cos(student, neighbour)."""
    acc = acc_dtype(student.dtype)
    q = F.normalize(queue.to(acc), dim=1)
    idx = (F.normalize(teacher.to(acc), dim=1) @ q.T).topk(k, dim=1).indices  # [B, k]
    s = F.normalize(student.to(acc), dim=1)
    cos = (s[:, None, :] * q[idx]).sum(-1)
    loss = -cos.mean() if student.shape[0] else cos.sum() * 0
    return loss.to(student.dtype)
