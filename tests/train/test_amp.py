"""Mixed precision (config ``amp``) and the channels-last model (``model.channels_last``) on the CPU.

bf16 autocast runs on the CPU too, so the mixed-precision path of every method is exercised here:
the network runs in bf16, every loss is computed outside autocast from fp32 inputs (the fused
contrastive loss reads the bf16 representation map as it is and accumulates in fp32), and the
representation map reaches ``contrast_loss`` as the head wrote it (no converted or transposed copy).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from tinyconfig import SMALL

import mona_ext
from mona.train import load_config
from mona.train.loop import setup, train_one_iteration


def _cfg(cache, out, method="mona", **kw):
    ov = [
        f"data.cache={cache}",
        f"out_dir={out}",
        "data.labeled_patients=1",
        "data.batch_size=4",
        "iterations=10",
        "val_every=100",
        "log_every=1",
        "checkpoint_every=100",
        "threads=1",
        "device=cpu",
        f"method={method}",
    ]
    return load_config(None, ov + [f"{k}={v}" for k, v in {**SMALL, **kw}.items()])


def _record_losses(run) -> list[tuple[str, list[torch.dtype], bool, torch.dtype]]:
    """Wrap the run's four loss functions: (name, tensor input dtypes, autocast on?, output dtype) per call."""
    calls = []

    def wrap(name, fn):
        def inner(*args, **kw):
            dtypes = [
                a.dtype for a in list(args) + list(kw.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()
            ]
            out = fn(*args, **kw)
            calls.append((name, dtypes, torch.is_autocast_enabled("cpu"), out.dtype))
            return out

        return inner

    L = run.method.losses
    run.method.losses = dataclasses.replace(
        L,
        contrast=wrap("contrast", L.contrast),
        pixel_kl=wrap("pixel_kl", L.pixel_kl),
        similarity_kl=wrap("similarity_kl", L.similarity_kl),
        knn=wrap("knn", L.knn),
    )
    return calls


def test_amp_values_legacy_booleans_and_fp16_on_the_cpu(tiny_cache, tmp_path):
    assert _cfg(tiny_cache, tmp_path).amp == "auto"
    assert _cfg(tiny_cache, tmp_path, amp="true").amp == "auto"  # mona <= 0.2 configs: amp: true
    assert _cfg(tiny_cache, tmp_path, amp="off").amp == "off"  # YAML reads `off` as false
    with pytest.raises(ValueError, match=r"amp must be one of \('auto', 'off', 'fp16', 'bf16'\), got 'fp8'"):
        _cfg(tiny_cache, tmp_path, amp="fp8")
    with pytest.raises(ValueError, match="amp 'fp16' needs a CUDA device .* use amp: bf16 or off"):
        setup(_cfg(tiny_cache, tmp_path / "fp16", amp="fp16"))
    run = setup(_cfg(tiny_cache, tmp_path / "auto"))
    assert run.method.amp_dtype is None and not run.method.scaler.is_enabled()  # auto = full precision on CPU


@pytest.mark.parametrize("method", ["supervised", "glcon", "mona"])
def test_bf16_autocast_on_the_cpu_with_every_loss_in_fp32(tiny_cache, tmp_path, method):
    # the full-map contrastive path (mona.query_map=full); the query-rows path: tests/train/test_query_map.py
    run = setup(_cfg(tiny_cache, tmp_path, method, amp="bf16", **{"mona.query_map": "full"}))
    assert run.method.amp_dtype == torch.bfloat16 and not run.method.scaler.is_enabled()  # bf16: no loss scaling
    calls = _record_losses(run)
    net_dtypes = []
    run.method.student.unet.register_forward_hook(lambda mod, i, o: net_dtypes.append(o.logits.dtype))
    run.method.student.train()
    for _ in range(3):
        loss, parts, _ = train_one_iteration(run)
        assert math.isfinite(loss) and all(math.isfinite(v) for v in parts.values()), parts
    assert net_dtypes and set(net_dtypes) == {torch.bfloat16}  # the network ran under autocast
    expected = {"supervised": set(), "glcon": {"similarity_kl"}, "mona": {"contrast", "pixel_kl", "knn"}}[method]
    assert {c[0] for c in calls} == expected
    for name, dtypes, autocast_on, out_dtype in calls:
        assert not autocast_on, name  # no loss runs under autocast
        assert out_dtype == torch.float32, name  # every loss value in fp32
        if name == "contrast":  # the representation map as the head wrote it (bf16), accumulated in fp32
            assert dtypes[0] == torch.bfloat16
        else:
            assert set(dtypes) == {torch.float32}, (name, dtypes)
    if method == "mona":
        assert run.method.bank.storage.dtype == torch.bfloat16  # features, keys and bank: one dtype


def test_fp16_teacher_logits_at_temperature_001_overflow_and_our_path_does_not():
    """GLCon's teacher distribution is softmax(cos / 0.01): logits up to 100, while fp16 overflows above
    65504 = e^11.09. Computed naively in fp16 (exp, or the dot products of unnormalised embeddings
    divided by 0.01) it is inf / nan; our losses get fp32 inputs (tested above) and the fused op
    normalises and accumulates in fp32 even from fp16 inputs."""
    g = torch.Generator().manual_seed(0)
    student = torch.randn(6, 512, generator=g) * 4  # projection-head outputs are not unit vectors
    teacher = student + torch.randn(6, 512, generator=g)
    queue = torch.cat([teacher[:3] + 0.1 * torch.randn(3, 512, generator=g), 4 * torch.randn(33, 512, generator=g)])
    # the hazard
    cos = F.normalize(teacher, dim=1) @ F.normalize(queue, dim=1).T
    assert cos.max() > 0.9
    assert torch.isinf(torch.exp(cos.half() / 0.01)).any()  # exp(logit) in fp16
    naive = torch.exp(cos.half() / 0.01) / torch.exp(cos.half() / 0.01).sum(1, keepdim=True)
    assert torch.isnan(naive).any()
    assert torch.isinf((teacher.half() @ queue.half().T) / 0.01).any()  # unnormalised dot / 0.01
    # our path: the fused op, from fp32 (as GLCon passes them) or even fp16 inputs
    ref = mona_ext.reference.similarity_kl(student.double(), teacher.double(), queue.double(), 0.1, 0.01)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-2)):
        ours = mona_ext.similarity_kl(student.to(dtype), teacher.to(dtype), queue.to(dtype), 0.1, 0.01)
        assert torch.isfinite(ours)
        assert ours.double().item() == pytest.approx(ref.item(), rel=tol), dtype


@pytest.mark.parametrize("amp", ["off", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_representation_map_reaches_contrast_loss_without_a_copy(tiny_cache, tmp_path, amp, channels_last):
    run = setup(
        _cfg(tiny_cache, tmp_path, "mona", amp=amp, **{"model.channels_last": channels_last, "mona.query_map": "full"})
    )
    student = run.method.student
    if channels_last:  # every 4-d weight of student and teacher in channels-last
        for model in (student, run.method.teacher):
            convs = [p for p in model.parameters() if p.dim() == 4]
            assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    head_out: list[torch.Tensor] = []
    student.heads["representation"].register_forward_hook(lambda mod, i, o: head_out.append(o))
    seen: list[torch.Tensor] = []
    contrast = run.method.losses.contrast

    def spy(features, *args, **kw):
        seen.append(features)
        return contrast(features, *args, **kw)

    run.method.losses = dataclasses.replace(run.method.losses, contrast=spy)
    run.method.student.train()
    train_one_iteration(run)
    assert len(head_out) == 1 and len(seen) == 1
    rep, feats = head_out[0], seen[0]
    assert feats is rep or (feats.data_ptr() == rep.data_ptr() and feats.stride() == rep.stride())
    assert feats.is_contiguous(memory_format=torch.channels_last)  # contrast_loss's fast path
    assert feats.dtype == (torch.bfloat16 if amp == "bf16" else torch.float32)
