"""torch.ops.mona.bank_push / queue_push and the ClassMemoryBank / FeatureQueue modules, checked
against a per-class ``collections.deque`` model of the same pushes (mona_ext.reference.banks)."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_testing import DEVICES, KERNEL_DEVICES, device_of, on

from mona_ext import ClassMemoryBank, FeatureQueue
from mona_ext.reference import DequeBank


def random_push(g, M, C, D, ignore_frac=0.2, dtype=torch.float32):
    keys = torch.randn(M, D, generator=g).to(dtype)
    labels = torch.randint(0, C, (M,), generator=g)
    labels[torch.rand(M, generator=g) < ignore_frac] = -1
    valid = torch.rand(M, generator=g) > 0.2
    return keys, labels, valid


def assert_bank_equals_model(bank_state, model):
    storage, ptr, fill = (t.cpu() for t in bank_state)
    ref_storage, ref_ptr, ref_fill = model.ring_state()
    assert torch.equal(ptr, ref_ptr), (ptr, ref_ptr)
    assert torch.equal(fill, ref_fill), (fill, ref_fill)
    torch.testing.assert_close(storage, ref_storage, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
def test_wraparound_sequence_matches_deque(device, label_dtype):
    C, K, D = 3, 5, 4
    g = torch.Generator().manual_seed(0)
    bank = ClassMemoryBank(C, K, D, device=device)
    model = DequeBank(C, K, D)
    for M in [0, 1, 3, 7, 2, 13, 30, 4, 1, 0, 9]:  # includes pushes with more than K keys of a class
        keys, labels, valid = random_push(g, M, C, D)
        bank.push(keys.to(device), labels.to(device=device, dtype=label_dtype), valid.to(device))
        model.push(keys, labels, valid)
        assert_bank_equals_model((bank.storage, bank.ptr, bank.fill), model)
    for c in range(C):
        torch.testing.assert_close(bank.class_keys(c).cpu(), model.class_keys(c), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_more_keys_than_slots_keeps_newest_in_order(device):
    bank = ClassMemoryBank(2, 3, 1, device=device)
    keys = torch.arange(10, dtype=torch.float32, device=device)[:, None]
    labels = torch.tensor([0, 1, 0, 0, 0, 1, 0, 0, -1, 0], device=device)
    bank.push(keys, labels)
    # class 0 got keys 0,2,3,4,6,7,9 -> newest three, oldest first: 6, 7, 9; class 1 got 1, 5
    assert bank.class_keys(0).flatten().tolist() == [6.0, 7.0, 9.0]
    assert bank.class_keys(1).flatten().tolist() == [1.0, 5.0]
    assert bank.ptr.tolist() == [7 % 3, 2] and bank.fill.tolist() == [3, 2]
    # the newest entry sits at (ptr - 1) mod K
    assert bank.storage[0, (bank.ptr[0] - 1) % 3].item() == 9.0


@settings(max_examples=30, deadline=None)
@given(
    C=st.integers(1, 4),
    K=st.integers(1, 6),
    D=st.integers(0, 3),
    cap=st.sampled_from([None, 0, 1, 2, 5]),
    sizes=st.lists(st.integers(0, 20), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_property_op_matches_deque(C, K, D, cap, sizes, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    storage = torch.zeros(C, K, D, dtype=dtype)
    ptr = torch.zeros(C, dtype=torch.int64)
    fill = torch.zeros(C, dtype=torch.int64)
    model = DequeBank(C, K, D, dtype=dtype)
    for M in sizes:
        keys, labels, valid = random_push(g, M, C, D, dtype=dtype)
        # coarse priorities create ties: ties must go to the lower index
        priority = (torch.rand(M, generator=g) * 4).floor() if cap is not None else None
        torch.ops.mona.bank_push(storage, ptr, fill, keys, labels, valid, priority, -1 if cap is None else cap)
        model.push(keys, labels, valid, priority=priority, cap=cap)
        assert_bank_equals_model((storage, ptr, fill), model)
    assert bool((fill <= K).all())


@pytest.mark.parametrize("device", DEVICES)
def test_cap_subset_is_uniform_in_order_and_reproducible(device):
    M, cap, trials = 8, 3, 1500
    keys = torch.arange(M, dtype=torch.float32, device=device)[:, None]
    labels = torch.zeros(M, dtype=torch.int64, device=device)
    counts = torch.zeros(M)
    g = torch.Generator(device=device).manual_seed(1)
    bank = ClassMemoryBank(1, cap, 1, device=device)
    for _ in range(trials):
        bank.reset()
        bank.push(keys, labels, cap=cap, generator=g)
        kept = bank.class_keys(0).flatten().cpu()
        assert kept.numel() == cap and torch.all(kept[1:] > kept[:-1])  # input order, no repeats
        counts[kept.long()] += 1
    # each key kept with probability cap / M = 0.375; binomial sd ~ 0.0125 -> 5 sd band
    freq = counts / trials
    assert torch.all((freq - cap / M).abs() < 0.0625), freq
    # same generator state -> same subset
    b1, b2 = ClassMemoryBank(1, 4, 1, device=device), ClassMemoryBank(1, 4, 1, device=device)
    b1.push(keys, labels, cap=3, generator=torch.Generator(device=device).manual_seed(7))
    b2.push(keys, labels, cap=3, generator=torch.Generator(device=device).manual_seed(7))
    assert torch.equal(b1.storage, b2.storage)
    # cap larger than the class keeps everything, cap 0 keeps nothing
    b1.reset()
    b1.push(keys[:3], labels[:3], cap=10)
    assert b1.class_keys(0).flatten().tolist() == [0.0, 1.0, 2.0]
    b1.push(keys, labels, cap=0)
    assert b1.fill.tolist() == [3] and b1.ptr.tolist() == [3]


@pytest.mark.parametrize("device", DEVICES)
def test_feature_queue_matches_deque(device):
    K, D = 6, 3
    q = FeatureQueue(K, D, device=device)
    model = DequeBank(1, K, D)
    g = torch.Generator().manual_seed(3)
    for M in [2, 3, 0, 4, 11, 1]:
        keys = torch.randn(M, D, generator=g)
        q.push(keys.to(device))
        model.push(keys, torch.zeros(M, dtype=torch.int64))
        storage, ptr, fill = model.ring_state()
        torch.testing.assert_close(q.queue.cpu(), storage[0], rtol=0, atol=0)
        assert q.ptr.tolist() == ptr.tolist() and q.fill.tolist() == fill.tolist()
    torch.testing.assert_close(q.ordered().cpu(), model.class_keys(0), rtol=0, atol=0)
    assert q.is_full() and q.filled().shape == (K, D)


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_round_trip_and_memory_stays_put(device):
    g = torch.Generator().manual_seed(4)
    bank = ClassMemoryBank(3, 4, 5, device=device)
    address = bank.storage.data_ptr()
    for _ in range(20):
        keys, labels, valid = random_push(g, 9, 3, 5)
        bank.push(keys.to(device), labels.to(device), valid.to(device))
    assert bank.storage.data_ptr() == address and bank.storage.shape == (3, 4, 5)
    buf = io.BytesIO()
    torch.save(bank.state_dict(), buf)
    buf.seek(0)
    other = ClassMemoryBank(3, 4, 5, device=device)
    other.load_state_dict(torch.load(buf))
    for name in ("storage", "ptr", "fill"):
        assert torch.equal(getattr(other, name), getattr(bank, name))
    keys, labels, valid = random_push(g, 11, 3, 5)
    for b in (bank, other):  # both continue identically after the reload
        b.push(keys.to(device), labels.to(device), valid.to(device))
    assert torch.equal(other.storage, bank.storage) and torch.equal(other.ptr, bank.ptr)
    q = FeatureQueue(4, 2, device=device)
    q.push(torch.randn(5, 2, device=device))
    q2 = FeatureQueue(4, 2, device=device)
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2.queue, q.queue) and torch.equal(q2.ptr, q.ptr) and torch.equal(q2.fill, q.fill)
    assert set(bank.state_dict()) == {"storage", "ptr", "fill"}


@pytest.mark.parametrize("device", DEVICES)
def test_sample_is_uniform_over_filled_slots(device):
    bank = ClassMemoryBank(3, 8, 1, device=device)
    bank.push(torch.arange(5.0, device=device)[:, None], torch.zeros(5, dtype=torch.long, device=device))
    classes = torch.tensor([0] * 5000 + [2] * 10, device=device)
    keys, available = bank.sample(classes, generator=torch.Generator(device=device).manual_seed(0))
    assert keys.shape == (5010, 1)
    assert torch.all(available[:5000]) and not torch.any(available[5000:])  # class 2 is empty
    assert torch.all(keys[5000:] == 0)
    hist = torch.bincount(keys[:5000, 0].long().cpu(), minlength=8).float() / 5000
    assert torch.all(hist[5:] == 0) and torch.all((hist[:5] - 0.2).abs() < 0.03), hist


def test_module_moves_with_to():
    bank = ClassMemoryBank(2, 3, 4).to(torch.float64)
    assert bank.storage.dtype == torch.float64 and bank.ptr.dtype == torch.int64


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
def test_module_moved_to_device_pushes_there(kernel_device):
    dev = device_of(kernel_device)
    bank = ClassMemoryBank(2, 3, 4).to(torch.float64).to(dev)
    assert bank.storage.device.type == dev and bank.ptr.device.type == dev and bank.fill.device.type == dev
    assert bank.storage.dtype == torch.float64 and bank.ptr.dtype == torch.int64
    model = DequeBank(2, 3, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(8)
    for M in [4, 9, 1]:
        keys, labels, valid = random_push(g, M, 2, 4, dtype=torch.float64)
        with on(kernel_device):
            bank.push(keys.to(dev), labels.to(dev), valid.to(dev))
        model.push(keys, labels, valid)
        assert_bank_equals_model((bank.storage, bank.ptr, bank.fill), model)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(labels=torch.tensor([0, 3, 1])), r"labels contain 3 .*num_classes=3"),
        (dict(labels=torch.tensor([0, -2, 1])), r"labels contain -2 .*ignore_index=-1"),
        (dict(labels=torch.tensor([0.0, 1.0, 1.0])), "labels must be int64 or int32"),
        (dict(labels=torch.tensor([0, 1])), r"labels must be \[M\] = \[3\]"),
        (dict(keys=torch.randn(3, 5)), r"keys must be \[M, D\] with D = 4"),
        (dict(keys=torch.randn(3)), r"keys must be \[M, D\]"),
        (dict(storage=torch.zeros(3, 4)), r"storage must be \[C, K, D\]"),
        (dict(storage=torch.zeros(3, 0, 4)), "K > 0 slots"),
        (dict(storage=torch.zeros(3, 5, 4, dtype=torch.long)), "storage must be a floating tensor"),
        (dict(ptr=torch.zeros(3, dtype=torch.int32)), "ptr and fill must be int64"),
        (dict(fill=torch.zeros(2, dtype=torch.long)), "ptr and fill must be contiguous with 3 element"),
        (dict(valid=torch.ones(3)), "valid must be bool"),
        (dict(cap=2), "cap=2 needs a priority tensor"),
        (dict(cap=-3), "cap must be -1"),
        (dict(priority=torch.rand(3, dtype=torch.float64)), "priority must be float32"),
    ],
)
def test_bad_input_messages(change, message):
    args = dict(
        storage=torch.zeros(3, 5, 4),
        ptr=torch.zeros(3, dtype=torch.long),
        fill=torch.zeros(3, dtype=torch.long),
        keys=torch.randn(3, 4),
        labels=torch.tensor([0, 1, 2]),
        valid=None,
        priority=None,
        cap=-1,
    )
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        torch.ops.mona.bank_push(*args.values())


def test_queue_bad_input_messages():
    with pytest.raises(ValueError, match=r"queue must be \[K, D\]"):
        torch.ops.mona.queue_push(
            torch.zeros(2, 3, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.zeros(1, 4)
        )
    with pytest.raises(ValueError, match=r"keys must be \[M, D\] with D = 4"):
        torch.ops.mona.queue_push(
            torch.zeros(3, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.zeros(1, 3)
        )
    with pytest.raises(ValueError, match="ClassMemoryBank: need num_classes > 0"):
        ClassMemoryBank(0, 3, 4)


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("cap", [-1, 0, 3, 40])
def test_device_matches_cpu(kernel_device, cap):
    dev = device_of(kernel_device)
    g = torch.Generator().manual_seed(6)
    C, K, D = 5, 64, 33
    cpu = [torch.zeros(C, K, D), torch.zeros(C, dtype=torch.long), torch.zeros(C, dtype=torch.long)]
    gpu = [t.clone().to(dev) for t in cpu]
    for M in [10, 500, 3000, 0, 77]:
        keys, labels, valid = random_push(g, M, C, D)
        priority = torch.rand(M, generator=g) if cap >= 0 else None
        torch.ops.mona.bank_push(*cpu, keys, labels, valid, priority, cap)
        with on(kernel_device):
            torch.ops.mona.bank_push(
                *gpu,
                keys.to(dev),
                labels.to(dev),
                valid.to(dev),
                priority.to(dev) if priority is not None else None,
                cap,
            )
        for a, b in zip(cpu, gpu):
            assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
def test_device_storage_dtypes_match_cpu(kernel_device, dtype, label_dtype):
    # bank_copy_kernel<scalar_t, index_t> for every storage dtype; float32 keys are converted to the
    # storage dtype exactly as on the CPU. Includes a capped push and the queue.
    dev = device_of(kernel_device)
    g = torch.Generator().manual_seed(11)
    C, K, D = 3, 6, 35
    cpu = [torch.zeros(C, K, D, dtype=dtype), torch.zeros(C, dtype=torch.long), torch.zeros(C, dtype=torch.long)]
    gpu = [t.clone().to(dev) for t in cpu]
    q_cpu = [torch.zeros(K, D, dtype=dtype), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)]
    q_gpu = [t.clone().to(dev) for t in q_cpu]
    for M, cap in [(7, -1), (20, 2), (0, -1), (13, -1)]:
        keys, labels, valid = random_push(g, M, C, D)
        labels = labels.to(label_dtype)
        priority = torch.rand(M, generator=g) if cap >= 0 else None
        torch.ops.mona.bank_push(*cpu, keys, labels, valid, priority, cap)
        torch.ops.mona.queue_push(*q_cpu, keys)
        with on(kernel_device):
            torch.ops.mona.bank_push(
                *gpu,
                keys.to(dev),
                labels.to(dev),
                valid.to(dev),
                priority.to(dev) if priority is not None else None,
                cap,
            )
            torch.ops.mona.queue_push(*q_gpu, keys.to(dev))
        for a, b in zip(cpu + q_cpu, gpu + q_gpu):
            assert torch.equal(a, b.cpu())
