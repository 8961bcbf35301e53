"""Config overrides that make the MONA heads and samplers tiny, for tests that check behaviour, not
quality (a module of its own, imported by name, like niftilib)."""

from __future__ import annotations

SMALL = {
    "glcon.mined_views": 4,
    "glcon.local_crops": 4,
    "model.embed_dim": 16,
    "mona.num_queries": 8,
    "mona.num_negatives": 16,
    "mona.bank_size": 32,
    "mona.bank_push_per_class": 8,
    "mona.knn_queue": 8,
    "mona.knn_k": 3,
}


def tiny_run_config(cache, out, method: str, every: int = 3, **kw):
    """A CPU run config on the tiny cache: 1 labeled patient, batch 4, logged every step, validated and
    checkpointed every ``every`` steps, the tiny heads of :data:`SMALL`; ``kw``: more overrides."""
    from mona.train import load_config

    ov = [
        f"data.cache={cache}",
        f"out_dir={out}",
        "data.labeled_patients=1",
        "data.batch_size=4",
        f"val_every={every}",
        "log_every=1",
        f"checkpoint_every={every}",
        "threads=1",
        "device=cpu",
        f"method={method}",
    ]
    return load_config(None, ov + [f"{k}={v}" for k, v in {**SMALL, **kw}.items()])
