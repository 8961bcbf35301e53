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
