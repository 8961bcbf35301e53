"""Training under torch.distributed on the CPU (gloo, 2 processes, tiny phantoms, a few steps).

* every rank holds the same weights, teacher, banks and queues after every step (glcon, mona);
* 2 ranks with per-rank batch b = 1 rank with batch 2b (first-step loss and the weights after it),
  which needs the sharded sampler, gradient averaging and the synchronised BatchNorm all right;
* resume under DDP is exact, and a resume with another world size is a clear error;
* `torchrun -m mona train` runs, only rank 0 writes; a killed rank ends the job non-zero, no hang.

The processes are started with torch.multiprocessing (the env vars torchrun would set) or with
torchrun itself. CI time: about a minute on 2 cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from tinyconfig import SMALL as TINY_HEADS

from mona.train import load_config, train
from mona.train.checkpoint import load_checkpoint, student_state
from mona.train.loop import setup, train_one_iteration

WORLD = 2
ROOT = Path(__file__).resolve().parents[2]
SMALL = {"model.channels": "[4,8,16,32,64]", **TINY_HEADS}  # a tiny UNet as well


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(cache, out, method, batch, **kw) -> list[str]:
    ov = [
        f"data.cache={cache}",
        f"out_dir={out}",
        "data.labeled_patients=1",
        f"data.batch_size={batch}",
        "val_every=100",
        "log_every=1",
        "checkpoint_every=100",
        "threads=1",
        "device=cpu",
        f"method={method}",
        "iterations=100",
    ]
    return ov + [f"{k}={v}" for k, v in {**SMALL, **kw}.items()]


def _snapshot(run) -> dict[str, torch.Tensor]:
    """Every tensor that must agree across ranks: student, teacher, banks, queues, optimiser momenta."""
    m = run.method
    out = {f"student.{k}": v.detach().clone() for k, v in m.student.state_dict().items()}
    if m.teacher is not None:
        out.update({f"teacher.{k}": v.detach().clone() for k, v in m.teacher.state_dict().items()})
    for name, obj in run.objects.items():
        if name.startswith(("bank", "queue")):
            out.update({f"{name}.{k}": v.detach().clone() for k, v in obj.state_dict().items()})
    for i, p in enumerate(m.student.parameters()):
        buf = m.optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[f"momentum.{i}"] = buf.clone()
    return out


def _worker(rank: int, port: int, job: str, args: dict) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from mona.train import distributed

    try:
        out = Path(args["out"])
        if job == "steps":  # a snapshot after every step
            run = setup(load_config(None, args["overrides"]))
            run.method.student.train()
            snaps, losses = [], []
            for _ in range(args["steps"]):
                lv, parts, _ = train_one_iteration(run)
                losses.append((lv, parts))
                snaps.append(_snapshot(run))
            batches = [run.sampler.next_batch() for _ in range(3)]  # what this rank would draw next
            torch.save(
                {"snaps": snaps, "losses": losses, "batches": batches, "world": run.dist.world_size},
                out / f"rank{rank}.pt",
            )
        elif job == "nonfinite":  # rank 1 alone sees a NaN loss term at its second step
            if rank == 1:
                from mona import faults

                os.environ["MONA_FAULT"] = "loss.ce@2:nan"
                faults.reload()
            run = setup(load_config(None, args["overrides"]))
            run.method.student.train()
            snaps, skipped = [], []
            for _ in range(4):
                train_one_iteration(run)
                skipped.append(list(run.step_nonfinite))
                snaps.append(_snapshot(run))
            torch.save({"snaps": snaps, "skipped": skipped}, out / f"rank{rank}.pt")
        elif job == "resume":  # uninterrupted vs stopped + resumed, both under DDP
            cfg_full = load_config(None, args["overrides"] + [f"out_dir={out / 'full'}", "iterations=5"])
            full = train(cfg_full, progress=False)
            cfg_part = load_config(None, args["overrides"] + [f"out_dir={out / 'part'}", "iterations=5"])
            part = train(cfg_part, progress=False, stop_after=3)
            torch.manual_seed(999 + rank)  # a fresh process's global RNG must not matter
            rest = train(cfg_part, progress=False, resume=out / "part" / "last.pt")
            torch.save(
                {
                    "full": full.losses,
                    "part": part.losses,
                    "rest": rest.losses,
                    "files": sorted(p.name for p in (out / "part").iterdir()),
                },
                out / f"rank{rank}.pt",
            )
        elif job == "hang":  # rank 1 stops taking part (alive, e.g. stuck in I/O): rank 0 must not wait forever
            run = setup(load_config(None, args["overrides"]))
            run.method.student.train()
            for step in range(4):
                if rank == 1 and step == 2:
                    time.sleep(600)
                train_one_iteration(run)
        elif job == "syncbn":  # our CPU SyncBatchNorm vs nn.BatchNorm2d on the concatenated batch
            distributed.init("cpu")
            torch.manual_seed(0)
            x = torch.randn(2 * WORLD, 3, 5, 5) * 3 + 1
            bn = distributed.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu"))
            with torch.no_grad():
                bn[0].weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
                bn[0].bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
            mine = x[2 * rank : 2 * rank + 2].clone().contiguous(memory_format=torch.channels_last).requires_grad_()
            y = bn(mine)
            (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
            torch.save(
                {
                    "y": y.detach(),
                    "gx": mine.grad,
                    "gw": bn[0].weight.grad,
                    "gb": bn[0].bias.grad,
                    "rm": bn[0].running_mean,
                    "rv": bn[0].running_var,
                    "cl": y.is_contiguous(memory_format=torch.channels_last),
                    "type": type(bn[0]).__name__,
                },
                out / f"rank{rank}.pt",
            )
    finally:
        distributed.shutdown()


def _spawn(job: str, args: dict) -> list[dict]:
    mp.spawn(_worker, args=(_free_port(), job, args), nprocs=WORLD, join=True)
    return [torch.load(Path(args["out"]) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize(
    "method,sync_bn", [("glcon", True), ("glcon", False), ("mona", True), ("unimatch", True), ("bcp", True)]
)
def test_ranks_hold_identical_weights_banks_and_queues_after_every_step(tiny_cache, tmp_path, method, sync_bn):
    # mona with bf16 autocast and the channels-last model (the resume test below runs it in fp32);
    # without SyncBatchNorm the running statistics are averaged after every step
    extra = {"amp": "bf16", "model.channels_last": "true"} if method == "mona" else {}
    ov = _overrides(
        tiny_cache, tmp_path / "run", method, batch=4, **extra, **{"distributed.sync_batchnorm": str(sync_bn).lower()}
    )
    ranks = _spawn("steps", {"out": str(tmp_path), "overrides": ov, "steps": 4})
    assert ranks[0]["world"] == WORLD
    kinds = set()
    for step, (a, b) in enumerate(zip(ranks[0]["snaps"], ranks[1]["snaps"])):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (step, k)
            kinds.add(k.split(".")[0])
    if method == "unimatch":  # no teacher, no bank or queue: the student and the optimiser agree
        assert {"student", "momentum"} <= kinds and "teacher" not in kinds
    elif method == "bcp":  # an EMA teacher, no bank or queue
        assert {"student", "teacher", "momentum"} <= kinds and not {"bank", "queue"} & kinds
    else:
        assert {"student", "teacher", "momentum"} <= kinds
        assert ({"queue"} if method == "glcon" else {"bank", "queue"}) <= kinds
    # the losses reported are the means over the ranks, the same on both
    assert [l for l, _ in ranks[0]["losses"]] == [l for l, _ in ranks[1]["losses"]]
    # the ranks draw different slices of each global batch
    for (l0, u0), (l1, u1) in zip(ranks[0]["batches"], ranks[1]["batches"]):
        assert len(l0) == len(l1) == 2 and len(u0) == len(u1) == 2
    last = ranks[0]["snaps"][-1]
    if method in ("unimatch", "bcp"):
        return
    if method == "mona":
        # both ranks' teacher keys went in: the pushes were gathered, the bank holds this many keys
        fills = last["bank.fill"]
        assert int(fills.sum()) > 0
        # the L_nn queue (8 entries) is full after one step: 2 ranks x 4 teacher embeddings
        assert int(ranks[0]["snaps"][0]["queue.knn.fill"]) == 8
    else:
        # the mined views are split over the ranks: the gathered queue holds the step's 4 views
        assert int(last["queue.global.fill"]) == 4


def test_a_nonfinite_loss_on_one_rank_skips_the_step_on_every_rank(tiny_cache, tmp_path):
    ov = _overrides(tiny_cache, tmp_path / "run", "mona", batch=4)
    ranks = _spawn("nonfinite", {"out": str(tmp_path), "overrides": ov})
    assert ranks[1]["skipped"] == [[], ["ce"], [], []]
    assert ranks[0]["skipped"] == [[], ["loss on another process"], [], []]
    for step in range(4):
        a, b = ranks[0]["snaps"][step], ranks[1]["snaps"][step]
        assert all(torch.equal(a[k], b[k]) for k in a), step
    # the skipped step changed nothing (weights, teacher, momenta, bank, queue); the next ones train
    before, skipped, after = ranks[0]["snaps"][0], ranks[0]["snaps"][1], ranks[0]["snaps"][2]
    assert all(torch.equal(before[k], skipped[k]) for k in before)
    assert not torch.equal(skipped["student.unet.inc.body.0.weight"], after["student.unet.inc.body.0.weight"])


def test_two_ranks_with_batch_b_equal_one_rank_with_batch_2b(tiny_cache, tmp_path):
    """Supervised, cross-entropy only (a mean over pixels: the mean over ranks of per-rank means is the
    global mean), no dropout, no random augmentation: the only differences are the reduction order."""
    kw = {
        "dice_weight": 0.0,
        "ce_weight": 1.0,
        "model.dropout": "[0,0,0,0,0]",
        "augment.rotate_deg": 0,
        "augment.flip": "false",
        "augment.crop_scale": "[1.0,1.0]",
        "optim.lr": 0.1,
    }
    ov2 = _overrides(tiny_cache, tmp_path / "two", "supervised", batch=2, **kw)
    ranks = _spawn("steps", {"out": str(tmp_path), "overrides": ov2, "steps": 2})
    # one process, twice the batch
    torch.set_num_threads(1)
    run = setup(load_config(None, _overrides(tiny_cache, tmp_path / "one", "supervised", batch=4, **kw)))
    run.method.student.train()
    one = []
    for _ in range(2):
        lv, _, _ = train_one_iteration(run)
        one.append((lv, _snapshot(run)))
    for step in range(2):
        assert ranks[0]["losses"][step][0] == pytest.approx(one[step][0], rel=1e-5), step
        for k, v in one[step][1].items():
            if k.endswith("num_batches_tracked"):
                assert torch.equal(ranks[0]["snaps"][step][k], v), (step, k)
            else:
                torch.testing.assert_close(ranks[0]["snaps"][step][k], v, rtol=1e-4, atol=1e-5, msg=(step, k))
    # the two ranks drew the two halves of the single process's batches
    single = [run.sampler.next_batch()[0] for _ in range(3)]
    assert [b0 + b1 for (b0, _), (b1, _) in zip(ranks[0]["batches"], ranks[1]["batches"])] == single


def test_cpu_sync_batchnorm_equals_batchnorm_on_the_global_batch(tmp_path):
    ranks = _spawn("syncbn", {"out": str(tmp_path)})
    torch.manual_seed(0)
    x = (torch.randn(2 * WORLD, 3, 5, 5) * 3 + 1).requires_grad_()
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    y = bn(x)
    # each rank's loss weights its own outputs; the sum over ranks = this loss on the global batch
    w = torch.cat([torch.arange(2 * 75).reshape(2, 3, 5, 5)] * WORLD).float()
    (y * w).sum().backward()
    for r, st in enumerate(ranks):
        assert st["type"] == "SyncBatchNorm" and st["cl"]
        torch.testing.assert_close(st["y"], y[2 * r : 2 * r + 2].detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(st["gx"], x.grad[2 * r : 2 * r + 2], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(st["rm"], bn.running_mean)
        torch.testing.assert_close(st["rv"], bn.running_var)
        # DDP averages parameter gradients over ranks; a rank's own is the gradient of its own loss
    torch.testing.assert_close(ranks[0]["gw"] + ranks[1]["gw"], bn.weight.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ranks[0]["gb"] + ranks[1]["gb"], bn.bias.grad, rtol=1e-4, atol=1e-3)


def test_resume_under_ddp_is_exact_and_another_world_size_is_an_error(tiny_cache, tmp_path):
    ov = _overrides(tiny_cache, tmp_path / "unused", "mona", batch=4, checkpoint_every=3)
    ranks = _spawn("resume", {"out": str(tmp_path), "overrides": ov})
    for st in ranks:
        assert st["part"] + st["rest"] == st["full"]  # bit-identical on CPU
        assert len(st["full"]) == 5
    a = student_state(load_checkpoint(tmp_path / "full" / "last.pt"))
    b = student_state(load_checkpoint(tmp_path / "part" / "last.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ck = load_checkpoint(tmp_path / "part" / "last.pt")
    assert ck["world_size"] == WORLD and len(ck["ranks"]) == WORLD
    # only rank 0 wrote: one set of logs, each iteration once
    lines = (tmp_path / "part" / "train_log.csv").read_text().splitlines()
    assert [int(l.split(",")[0]) for l in lines[1:]] == [1, 2, 3, 4, 5]
    with pytest.raises(
        ValueError,
        match=r"written by a run of 2 process\(es\), this run has 1; resume with the "
        r"same number",
    ):
        setup(load_config(None, ov + [f"out_dir={tmp_path / 'part'}"]), resume=tmp_path / "part" / "last.pt")


def test_a_rank_that_stops_responding_times_the_job_out(tiny_cache, tmp_path):
    """Without torchrun's agent (e.g. a node that hangs) the collective timeout ends the job."""
    ov = _overrides(tiny_cache, tmp_path / "run", "mona", batch=4, **{"distributed.timeout_s": 3})
    with pytest.raises(mp.ProcessRaisedException, match=r"(?i)timed? ?out"):
        _spawn("hang", {"out": str(tmp_path), "overrides": ov})


def _torchrun(tmp_path: Path, script_args: list[str]) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'python'}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "--monitor_interval",
        "0.2",
        *script_args,
    ]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_torchrun_cli_trains_and_only_rank0_writes(tiny_cache, tmp_path):
    out = tmp_path / "run"
    proc = _torchrun(
        tmp_path,
        [
            "-m",
            "mona",
            "train",
            "--config",
            "demo",
            "--no-progress",
            *_overrides(tiny_cache, out, "supervised", batch=2, iterations=3, val_every=3),
        ],
    )
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text
    assert "distributed: 2 processes (gloo)" in text
    assert text.count("finished at iteration 3") == 1, text  # rank 0 reports, rank 1 is quiet
    for name in ("best.pt", "last.pt", "model.pt", "train_log.csv", "val_log.csv"):
        assert (out / name).exists(), name
    assert load_checkpoint(out / "last.pt")["world_size"] == WORLD


KILL_AT = 3
_KILLER = f"""
import os, signal, sys
from mona.train import loop
_step = loop.train_one_iteration
def _dying_step(run):
    out = _step(run)
    if run.dist.rank == 1 and run.method.scheduler.last_epoch == {KILL_AT}:
        os.kill(os.getpid(), signal.SIGKILL)   # as the OOM killer or a lost node would
    return out
loop.train_one_iteration = _dying_step
from mona.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_rank_ends_the_job_with_an_error(tiny_cache, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    proc = _torchrun(
        tmp_path,
        [
            str(script),
            "train",
            "--config",
            "demo",
            "--no-progress",
            *_overrides(tiny_cache, tmp_path / "run", "mona", batch=4, iterations=50, **{"distributed.timeout_s": 60}),
        ],
    )
    try:
        text, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the job hung after a rank was killed") from None
    assert proc.returncode != 0
    assert "Signals.SIGKILL" in text or "exitcode  : -9" in text, text
    assert not (tmp_path / "run" / "model.pt").exists()
