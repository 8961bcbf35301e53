"""Grid-stride loops of the CUDA kernels under the emulation, with a grid smaller than the
launcher's (emu.grid_limits): every block walks more than one row, as on a GPU beyond CUDA's grid
limits, so the barrier at the end of a row's iteration (its shared memory is rewritten by the
next row) is exercised, and its removal is a race the detector reports (scripts/mutation_check.sh)."""

from __future__ import annotations

import emu
import pytest
import torch

import mona_ext

pytestmark = pytest.mark.emu


def make_inputs(B, d, K, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, d, generator=g, dtype=torch.float64) * 3
    t = s + 0.5 * torch.randn(B, d, generator=g, dtype=torch.float64)
    q = torch.randn(K, d, generator=g, dtype=torch.float64)
    return s, t, q


def run_knn(s, t, q, k):
    x = s.clone().requires_grad_(True)
    loss, idx = torch.ops.mona.knn_loss(x, t, q, k)
    (loss * 3).backward()
    return loss.detach(), idx, x.grad


def run_similarity_kl(s, t, q):
    x = s.clone().requires_grad_(True)
    out = mona_ext.similarity_kl(x, t, q, 0.1, 0.05)
    (out * 3).backward()
    return out.detach(), x.grad


KNN_LIMITS = {
    "knn_loss_topk_kernel": (0, 2, 0),  # grid (splits, B): 2 rows per y
    "knn_loss_select_kernel": (2, 0, 0),  # grid (B): 2 blocks
    "knn_loss_backward_dots_kernel": (0, 2, 0),
    "knn_loss_backward_kernel": (2, 0, 0),
}


def test_knn_loss_rows_beyond_the_grid_match_cpu():
    s, t, q = make_inputs(B=5, d=20, K=700, seed=3)  # 700 entries: 2 splits per row; 5 rows on 2 blocks
    ref = run_knn(s, t, q, 6)
    with emu.emulated(), emu.grid_limits(KNN_LIMITS):
        out = run_knn(s, t, q, 6)
        grids = emu.last_grids()
    assert grids["knn_loss_topk_kernel<double>"][1] == 5  # the launcher asked for one block row per row
    assert torch.equal(out[1], ref[1])
    torch.testing.assert_close(out[0], ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[2], ref[2], rtol=1e-10, atol=1e-12)


SKL_LIMITS = {
    "similarity_kl_forward_kernel": (0, 2, 0),  # grid (splits, B)
    "similarity_kl_backward_kernel": (0, 2, 0),
    "similarity_kl_backward_finish_kernel": (2, 0, 0),  # grid (B)
    "similarity_kl_finish_kernel": (1, 0, 0),
}


def test_similarity_kl_rows_beyond_the_grid_match_cpu():
    s, t, q = make_inputs(B=5, d=24, K=700, seed=4)
    ref = run_similarity_kl(s, t, q)
    with emu.emulated(), emu.grid_limits(SKL_LIMITS):
        out = run_similarity_kl(s, t, q)
        grids = emu.last_grids()
    assert grids["similarity_kl_backward_kernel<double>"][1] == 5
    torch.testing.assert_close(out[0], ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_class_mean_channel_groups_beyond_the_grid_match_cpu(layout):
    # class_sums_kernel walks channel groups with a stride of gridDim.y: one block row walks them all
    g = torch.Generator().manual_seed(21)
    f = torch.randn(2, 40, 5, 6, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        f = f.contiguous(memory_format=torch.channels_last)
    lab = torch.randint(-1, 4, (2, 5, 6), generator=g)
    ref = mona_ext.class_mean(f, lab, 4)
    with emu.emulated(), emu.grid_limits({"class_sums_kernel": (0, 1, 0), "class_counts_kernel": (1, 0, 0)}):
        out = mona_ext.class_mean(f, lab, 4)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
