"""Training configuration: dataclasses, loaded from YAML with ``key=value`` overrides.

``method`` selects the training procedure (``mona.train.methods``): ``supervised`` (the UNet-L /
UNet-F baseline, weak augmentation), ``supervised_strong`` (the same with the semi-supervised student's
augmentation: the fair baseline of every semi-supervised method), ``mean_teacher`` (the field's standard
control), ``glcon`` (stage 1, global + local relational pre-training) and ``mona`` (stage 2,
anatomical contrastive reconstruction fine-tuning; with ``pretrain_iterations > 0`` one command runs
the GLCon stage first), ``unimatch`` and ``bcp`` (peer methods; ``bcp`` with ``pretrain_iterations > 0``
runs its copy-paste pre-training ``bcp_pretrain`` first). Each method reads its own section (``glcon:``,
``mona:``, ``mean_teacher:``, ``unimatch:``, ``bcp:``);
unknown keys are an error, never ignored.

The semi-supervised stabilisers (``rampup_iterations``, ``pseudo_warmup_iterations``, ``ema_warmup``,
``eval_model``) apply to every method with an EMA teacher (``mean_teacher``, ``glcon``, ``mona``, ``bcp``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ..augment import AugmentConfig
from ..errors import UsageError

METHODS = ("supervised", "supervised_strong", "mean_teacher", "glcon", "mona", "unimatch", "bcp_pretrain", "bcp")
SUPERVISED = ("supervised", "supervised_strong")
TEACHER_METHODS = ("mean_teacher", "glcon", "mona", "bcp")
#: method -> (its stage-1 method, the stage's directory under out_dir) when ``pretrain_iterations > 0``
PRETRAIN_STAGES = {"mona": ("glcon", "pretrain_glcon"), "bcp": ("bcp_pretrain", "pretrain_bcp")}
EVAL_MODELS = ("auto", "student", "teacher")
CONSISTENCY = ("mse", "ce")
UNSUP_MASKS = ("pixel", "image")
CLASS_THRESHOLDS = ("fixed", "adaptive")
IMPLS = ("ext", "reference")
AMP_MODES = ("auto", "off", "fp16", "bf16")
DIST_BACKENDS = ("auto", "nccl", "gloo")
NEGATIVE_SOURCES = ("batch", "bank", "both")


@dataclass
class DataConfig:
    cache: str = ""  # a prepared cache (``mona prepare``)
    labeled_patients: int | None = None  # whole labeled patients (first n of the train split) ...
    labeled_ratio: float | None = None  # ... or a ratio of the train patients (ACDC: 0.01/0.05/0.1 -> 1/3/7)
    batch_size: int = 12  # the paper's 6 is labeled + unlabeled halves; supervised uses all labeled
    labeled_bs: int | None = None  # labeled half; None: batch_size (supervised) or batch_size // 2
    labeled_list: str | None = None  # a file of labeled patient ids / patient_slice_K entries


@dataclass
class ModelConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    dropout: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    embed_dim: int = 512  # projection / representation embedding dimension
    rep_stride: int = 1  # representation head output stride (1: full resolution)
    # student and teacher weights / activations in torch.channels_last: oneDNN's convolutions are faster
    # on it (the demo's MONA step 941 -> 801 ms on the CPU: benchmarks/README.md), tensor cores want it
    channels_last: bool = True
    # the norm layer of the global / predictor / local MLP heads: "layer" (LayerNorm) or "batch" (BatchNorm1d,
    # ISD's; with small batches of similar slices it multiplies the relational terms' gradient: docs/training.md)
    head_norm: str = "layer"


@dataclass
class OptimConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  # "step" (lr/10 every step_size iterations) or "poly"
    step_size: int = 2500
    gamma: float = 0.1
    poly_power: float = 0.9


@dataclass
class GLConConfig:
    """Stage 1 (GLCon): ISD-style relational KL, global (bottleneck) + local (decoder crops)."""

    mined_views: int = 36  # unlabeled views per step for the teacher; = queue size
    tau_student: float = 0.1
    tau_teacher: float = 0.01
    local_crops: int = 36  # crops per step (over the batch), same location in student/teacher
    local_crop_size: int = 64  # at a 256-px input; scaled with the input size
    global_weight: float = 1.0
    local_weight: float = 1.0
    sup_weight: float = 1.0


@dataclass
class MonaConfig:
    """Stage 2 (ACR fine-tuning): L_sup + 0.01 L_contrast + L_eqv + L_unsup + L_nn (a weight 0 skips the term)."""

    sup_weight: float = 1.0
    contrast_weight: float = 0.01
    eqv_weight: float = 1.0
    unsup_weight: float = 1.0
    nn_weight: float = 1.0
    temperature: float = 0.5
    num_queries: int = 256
    num_negatives: int = 512
    strong_threshold: float = 0.97  # easy/hard query split and the L_unsup confidence threshold
    weak_threshold: float = 0.7  # teacher confidence for a valid pseudo-label pixel
    negatives: str = "both"  # batch | bank | both
    # the student's representation for L_contrast: "queries" (the head's last 1x1 conv at the sampled query
    # pixels only, mona_ext.contrast_loss_at_queries: the B x D x H x W map and its gradient never exist),
    # "full" (the whole map, as the paper's code), "auto" (queries with impl ext; full with impl reference,
    # whose plain-PyTorch loss takes a map). Same loss either way, up to rounding.
    query_map: str = "auto"
    bank_size: int = 2048  # keys per class in the ClassMemoryBank
    bank_push_per_class: int = 256  # capped random subset of confident teacher keys per class and step
    knn_k: int = 5
    knn_queue: int = 36  # FIFO of teacher global embeddings (the paper's 36)
    eqv_symmetric: bool = True
    # L_unsup's confidence weighting: "pixel" (CE on the pixels with teacher confidence >= strong_threshold,
    # averaged over all pixels, FixMatch-style) or "image" (the public code: each image's mean CE weighted
    # by its confident fraction, which background dominates, so wrong foreground labels train at almost
    # full weight)
    unsup_mask: str = "pixel"
    # pseudo-label thresholds per class (mona.thresholds): "fixed" (strong_threshold / weak_threshold for
    # every class, the paper's) or "adaptive" (each class's threshold scaled by its learning status,
    # FlexMatch-style, normalised by class frequency; never above the fixed one nor below threshold_floor)
    class_thresholds: str = "fixed"
    threshold_momentum: float = 0.95  # EMA of the per-class confident / predicted pixel counts, per step
    threshold_floor: float = 0.5
    # ReMixMatch's distribution alignment of the teacher's probabilities before pseudo-labelling
    # (mona.alignment): each class scaled by its labeled share over the teacher's mean prediction on the
    # unlabeled half (EMA of both with alignment_momentum per step), then renormalised
    distribution_alignment: bool = False
    alignment_momentum: float = 0.99


@dataclass
class MeanTeacherConfig:
    """The field's standard control (SSL4MIS ``train_mean_teacher_2D.py``): L_sup + w(t) L_cons on the
    unlabeled half, student on the strong view, EMA teacher on the weak view.

    Default ``ce`` at weight 1 (the weight of MONA's L_unsup): measured on the phantoms (issue 22,
    docs/training.md), SSL4MIS's ``mse`` at 0.1 gives the consistency term 1.3 % of L_sup's gradient
    on the encoder, so that control trains as supervised on its labeled half alone; ``ce`` at 1 gives
    it about a third of L_sup's."""

    consistency: str = "ce"  # "ce": CE on confident teacher labels; "mse": MSE of the softmax maps (SSL4MIS)
    # None: 1 for "ce", SSL4MIS's 0.1 for "mse"; the ramp-up multiplies it
    weight: float | None = None
    threshold: float = 0.95  # "ce": teacher confidence of a pseudo-labelled pixel


@dataclass
class UniMatchConfig:
    """UniMatch (Yang et al., CVPR 2023; the medical version of the public code): weak-to-strong
    pseudo-labelling by the model itself (no EMA teacher), two strong views and a feature-perturbation
    stream. ``L = (L_sup + s1_weight L_s1 + s2_weight L_s2 + fp_weight L_fp) / 2`` (paper: 0.25, 0.25, 0.5)."""

    threshold: float = 0.95  # confidence of a pseudo-labelled pixel (the weak view's prediction)
    fp_dropout: float = 0.5  # Dropout2d on the encoder's maps of the feature-perturbation stream
    s1_weight: float = 0.25
    s2_weight: float = 0.25
    fp_weight: float = 0.5
    # the paper has neither a ramp-up nor a pseudo-label warm-up; true applies the shared stabilisers
    # (rampup_iterations, pseudo_warmup_iterations) to the three unlabeled terms
    rampup: bool = False


@dataclass
class BCPConfig:
    """BCP (Bai et al., CVPR 2023; its ACDC code): bidirectional copy-paste of a box between labeled and
    unlabeled slices, pseudo-labels of the EMA teacher; stage 1 (``bcp_pretrain``) copy-pastes between
    labeled slices. ``L = sup + u_weight * unl`` (see :mod:`mona.train.methods.bcp`)."""

    u_weight: float = 0.5  # weight of the pseudo-labelled parts (the paper's alpha)
    patch_fraction: float = 2 / 3  # the pasted box's side as a fraction of the slice's (the paper's beta)
    # keep only each class's largest connected component of the teacher's pseudo-labels (the public
    # ACDC code's filter; it assumes one region per class and slice, so it is off unless the data are so)
    largest_component: bool = False
    # the paper has neither a ramp-up nor a pseudo-label warm-up; true applies the shared stabilisers
    # (rampup_iterations, pseudo_warmup_iterations) to the pseudo-labelled parts
    rampup: bool = False


@dataclass
class DistributedConfig:
    """Multi-process training under ``torchrun`` (read only when WORLD_SIZE > 1; see mona.train.distributed)."""

    backend: str = "auto"  # auto: nccl on CUDA, gloo on the CPU
    timeout_s: float = 600.0  # a collective waiting longer (a rank died or hangs) ends the job
    sync_batchnorm: bool = True  # BatchNorm statistics over the global batch (SyncBatchNorm)


@dataclass
class TrainConfig:
    method: str = "supervised"
    out_dir: str = "runs/supervised"
    seed: int = 1337
    iterations: int = 30000
    val_every: int = 500
    log_every: int = 10
    checkpoint_every: int = 500
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (fp16 on CUDA, off on the CPU) | off | fp16 (CUDA) | bf16
    threads: int | None = None  # torch CPU threads (None: torch default)
    dice_weight: float = 0.5  # loss = dice_weight * Dice + ce_weight * CE
    ce_weight: float = 0.5
    ema_decay: float = 0.99  # teacher = EMA of the student (mean_teacher, glcon, mona)
    # semi-supervised stabilisers (mean_teacher, glcon, mona; see docs/training.md "Stabilisers"):
    # every unlabeled / relational term's weight times exp(-5 (1 - t / T)^2) for t < T (SSL4MIS's sigmoid
    # ramp-up); T = rampup_iterations, None: 40 % of the stage, 0: no ramp-up
    rampup_iterations: int | None = None
    # no pseudo-label term (L_unsup, the pseudo-labelled half of L_contrast, mean teacher's consistency)
    # before the teacher has trained this many iterations; None: 10 % of the stage
    pseudo_warmup_iterations: int | None = None
    ema_warmup: bool = True  # EMA decay min(1 - 1 / (t + 1), ema_decay) (SSL4MIS): a young teacher follows the student
    # which network is validated, kept as best.pt and exported: the student, the EMA teacher, or "auto":
    # both are validated, the better one is kept (recorded in the checkpoint, val log and report)
    eval_model: str = "auto"
    log_grad_norms: bool = True  # each weighted term's gradient norm on the UNet encoder, every log_every
    log_pseudo_quality: bool = True  # pseudo-label Dice / confident-pixel precision vs the cache's labels
    impl: str = "ext"  # ext: fused mona_ext ops; reference: plain PyTorch (mona_ext.reference)
    init_from: str | None = None  # checkpoint whose student weights initialise this run (stage 1 -> 2)
    # mona / bcp: run a stage 1 of this length first (glcon into out_dir/pretrain_glcon, bcp_pretrain
    # into out_dir/pretrain_bcp), then this method initialised from its last.pt
    pretrain_iterations: int = 0
    max_nonfinite_steps: int = 10  # a non-finite loss/gradient skips the step; this many in a row stop the run
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    glcon: GLConConfig = field(default_factory=GLConConfig)
    mona: MonaConfig = field(default_factory=MonaConfig)
    mean_teacher: MeanTeacherConfig = field(default_factory=MeanTeacherConfig)
    unimatch: UniMatchConfig = field(default_factory=UniMatchConfig)
    bcp: BCPConfig = field(default_factory=BCPConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        # configs and checkpoints of mona <= 0.2 hold ``amp: true / false`` (true: fp16 on CUDA only)
        if isinstance(self.amp, bool) or self.amp in ("True", "False"):
            self.amp = "auto" if self.amp in (True, "True") else "off"

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"config: method must be one of {METHODS}, got {self.method!r}")
        if self.impl not in IMPLS:
            raise UsageError(f"config: impl must be one of {IMPLS}, got {self.impl!r}")
        if self.amp not in AMP_MODES:
            raise UsageError(f"config: amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.distributed.backend not in DIST_BACKENDS:
            raise UsageError(
                f"config: distributed.backend must be one of {DIST_BACKENDS}, got {self.distributed.backend!r}"
            )
        if not self.distributed.timeout_s > 0:
            raise UsageError(f"config: distributed.timeout_s must be > 0, got {self.distributed.timeout_s}")
        if not self.data.cache:
            raise UsageError("config: data.cache is required (a directory written by `mona prepare`)")
        given = [k for k in ("labeled_patients", "labeled_ratio", "labeled_list") if getattr(self.data, k) is not None]
        if len(given) > 1:
            raise UsageError(
                f"config: set at most one of data.labeled_patients, data.labeled_ratio and "
                f"data.labeled_list, got {['data.' + g for g in given]}"
            )
        if self.data.labeled_ratio is not None and not 0 < self.data.labeled_ratio <= 1:
            raise UsageError(f"config: data.labeled_ratio must be in (0, 1], got {self.data.labeled_ratio}")
        if self.data.labeled_patients is not None and self.data.labeled_patients < 1:
            raise UsageError(f"config: data.labeled_patients must be >= 1, got {self.data.labeled_patients}")
        if self.method in SUPERVISED and self.data.labeled_bs not in (None, self.data.batch_size):
            raise UsageError(f"config: {self.method} training uses labeled slices only; leave data.labeled_bs unset")
        if self.method not in SUPERVISED:
            lbs = self.labeled_bs
            if not 0 < lbs < self.data.batch_size:
                raise UsageError(
                    f"config: {self.method} needs a labeled and an unlabeled half: data.labeled_bs must be "
                    f"in 1..{self.data.batch_size - 1} (data.batch_size - 1), got {lbs}"
                )
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"config: ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.pretrain_iterations < 0 or (self.pretrain_iterations and self.method not in PRETRAIN_STAGES):
            raise UsageError(
                f"config: pretrain_iterations (>= 0) applies to method: {' or '.join(PRETRAIN_STAGES)} only"
            )
        if self.pretrain_iterations and self.init_from:
            raise UsageError(
                "config: give either pretrain_iterations (run stage 1 here) or init_from (a stage-1 "
                "checkpoint), not both"
            )
        m, g = self.mona, self.glcon
        if m.query_map not in ("auto", "queries", "full"):
            raise UsageError(f"config: mona.query_map must be auto, queries or full, got {m.query_map!r}")
        if m.query_map == "queries" and self.impl != "ext":
            raise UsageError(
                "config: mona.query_map=queries needs impl: ext (the reference contrastive loss takes the "
                f"whole map), got impl: {self.impl}; use mona.query_map=full or auto"
            )
        if m.negatives not in NEGATIVE_SOURCES:
            raise UsageError(f"config: mona.negatives must be one of {NEGATIVE_SOURCES}, got {m.negatives!r}")
        for key, val in (
            ("mona.temperature", m.temperature),
            ("glcon.tau_student", g.tau_student),
            ("glcon.tau_teacher", g.tau_teacher),
        ):
            if val <= 0:
                raise UsageError(f"config: {key} must be > 0, got {val}")
        for key, val in (
            ("mona.num_queries", m.num_queries),
            ("mona.num_negatives", m.num_negatives),
            ("mona.bank_size", m.bank_size),
            ("mona.bank_push_per_class", m.bank_push_per_class),
            ("mona.knn_k", m.knn_k),
            ("mona.knn_queue", m.knn_queue),
            ("glcon.mined_views", g.mined_views),
            ("glcon.local_crops", g.local_crops),
            ("glcon.local_crop_size", g.local_crop_size),
            ("model.embed_dim", self.model.embed_dim),
        ):
            if val <= 0:
                raise UsageError(f"config: {key} must be > 0, got {val}")
        if g.mined_views < 2:
            raise UsageError(
                f"config: glcon.mined_views must be >= 2 (the teacher's heads normalise over them), got {g.mined_views}"
            )
        if m.knn_k > m.knn_queue:
            raise UsageError(f"config: mona.knn_k ({m.knn_k}) must be <= mona.knn_queue ({m.knn_queue})")
        for key in ("sup_weight", "contrast_weight", "eqv_weight", "unsup_weight", "nn_weight"):
            if getattr(m, key) < 0:
                raise UsageError(f"config: mona.{key} must be >= 0, got {getattr(m, key)}")
        for key in ("global_weight", "local_weight", "sup_weight"):
            if getattr(g, key) < 0:
                raise UsageError(f"config: glcon.{key} must be >= 0, got {getattr(g, key)}")
        for key in ("strong_threshold", "weak_threshold"):
            if not 0 <= getattr(m, key) <= 1:
                raise UsageError(f"config: mona.{key} must be in [0, 1], got {getattr(m, key)}")
        if m.unsup_mask not in UNSUP_MASKS:
            raise UsageError(f"config: mona.unsup_mask must be one of {UNSUP_MASKS}, got {m.unsup_mask!r}")
        if m.class_thresholds not in CLASS_THRESHOLDS:
            raise UsageError(
                f"config: mona.class_thresholds must be one of {CLASS_THRESHOLDS}, got {m.class_thresholds!r}"
            )
        if not 0 <= m.threshold_momentum < 1:
            raise UsageError(f"config: mona.threshold_momentum must be in [0, 1), got {m.threshold_momentum}")
        if not 0 <= m.threshold_floor <= 1:
            raise UsageError(f"config: mona.threshold_floor must be in [0, 1], got {m.threshold_floor}")
        if not 0 <= m.alignment_momentum < 1:
            raise UsageError(f"config: mona.alignment_momentum must be in [0, 1), got {m.alignment_momentum}")
        mt = self.mean_teacher
        if mt.consistency not in CONSISTENCY:
            raise UsageError(f"config: mean_teacher.consistency must be one of {CONSISTENCY}, got {mt.consistency!r}")
        if mt.weight is None:
            mt.weight = 0.1 if mt.consistency == "mse" else 1.0
        if mt.weight < 0:
            raise UsageError(f"config: mean_teacher.weight must be >= 0, got {mt.weight}")
        if not 0 <= mt.threshold <= 1:
            raise UsageError(f"config: mean_teacher.threshold must be in [0, 1], got {mt.threshold}")
        um = self.unimatch
        if not 0 <= um.threshold <= 1:
            raise UsageError(f"config: unimatch.threshold must be in [0, 1], got {um.threshold}")
        if not 0 <= um.fp_dropout < 1:
            raise UsageError(f"config: unimatch.fp_dropout must be in [0, 1), got {um.fp_dropout}")
        for key in ("s1_weight", "s2_weight", "fp_weight"):
            if getattr(um, key) < 0:
                raise UsageError(f"config: unimatch.{key} must be >= 0, got {getattr(um, key)}")
        bc = self.bcp
        if not 0 < bc.patch_fraction < 1:
            raise UsageError(f"config: bcp.patch_fraction must be in (0, 1), got {bc.patch_fraction}")
        if bc.u_weight < 0:
            raise UsageError(f"config: bcp.u_weight must be >= 0, got {bc.u_weight}")
        if self.method in ("bcp", "bcp_pretrain"):
            lbs = self.labeled_bs
            if lbs % 2 or (self.method == "bcp" and 2 * lbs != self.data.batch_size):
                raise UsageError(
                    f"config: {self.method} copy-pastes between two halves of the labeled slices"
                    + (" and pairs each labeled slice with an unlabeled one" if self.method == "bcp" else "")
                    + f": data.labeled_bs must be even{' and half of data.batch_size' if self.method == 'bcp' else ''}, "
                    f"got data.labeled_bs {lbs}, data.batch_size {self.data.batch_size}"
                )
        if self.eval_model not in EVAL_MODELS:
            raise UsageError(f"config: eval_model must be one of {EVAL_MODELS}, got {self.eval_model!r}")
        if self.eval_model == "teacher" and self.method not in TEACHER_METHODS:
            raise UsageError(f"config: eval_model 'teacher' needs a method with an EMA teacher {TEACHER_METHODS}")
        for key in ("rampup_iterations", "pseudo_warmup_iterations"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise UsageError(f"config: {key} must be >= 0 (or null for the default), got {getattr(self, key)}")
        if self.model.head_norm not in ("layer", "batch"):
            raise UsageError(f"config: model.head_norm must be 'layer' or 'batch', got {self.model.head_norm!r}")
        if self.model.rep_stride not in (1, 2, 4, 8):
            raise UsageError(f"config: model.rep_stride must be 1, 2, 4 or 8, got {self.model.rep_stride}")
        if self.optim.schedule not in ("step", "poly"):
            raise UsageError(f"config: optim.schedule must be 'step' or 'poly', got {self.optim.schedule!r}")
        for name in ("iterations", "val_every", "log_every", "checkpoint_every", "max_nonfinite_steps"):
            if getattr(self, name) <= 0:
                raise UsageError(f"config: {name} must be > 0, got {getattr(self, name)}")
        if self.data.batch_size <= 0:
            raise UsageError(f"config: data.batch_size must be > 0, got {self.data.batch_size}")

    @property
    def labeled_bs(self) -> int:
        """Labeled slices per batch: ``data.labeled_bs``, else all (supervised) or half (semi-supervised)."""
        if self.data.labeled_bs is not None:
            return self.data.labeled_bs
        return self.data.batch_size if self.method in SUPERVISED else max(1, self.data.batch_size // 2)

    @property
    def rampup(self) -> int:
        """T of the sigmoid ramp-up (``rampup_iterations``; default 40 % of the stage)."""
        if self.rampup_iterations is not None:
            return self.rampup_iterations
        return int(round(0.4 * self.iterations))

    @property
    def pseudo_warmup(self) -> int:
        """Iterations without pseudo-label terms (``pseudo_warmup_iterations``; default 10 % of the stage)."""
        if self.pseudo_warmup_iterations is not None:
            return self.pseudo_warmup_iterations
        return int(round(0.1 * self.iterations))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML/override value to the field's declared type."""
    origin = getattr(typ, "__origin__", None)
    args = getattr(typ, "__args__", ())
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise UsageError(f"config: {key} must be a mapping, got {value!r}")
        return _build(typ, value, key + ".")
    if value is None:
        if type(None) in args:
            return None
        raise UsageError(f"config: {key} may not be null")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"config: {key} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"config: {key} must be {getattr(typ, '__name__', typ)}, got {value!r}") from None
    return value


def _build(cls, values: dict, prefix: str = ""):
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UsageError(f"config: unknown key(s) {[prefix + u for u in unknown]}; valid: {sorted(names)}")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in values.items()})


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UsageError(f"config override {dotted!r}: {p} is not a section")
    node[parts[-1]] = value


LABELED_KEYS = ("data.labeled_patients", "data.labeled_ratio", "data.labeled_list")


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """YAML file (optional) + overrides (``["optim.lr=0.02", "data.labeled_patients=3"]`` or a dotted dict)."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise UsageError(f"config: {p} does not exist")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            what = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise UsageError(f"config: {p} is not valid YAML ({where}{what})") from err
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"config: {p}: cannot read ({err})") from err
        if not isinstance(tree, dict):
            raise UsageError(f"config: {p} must hold a mapping at the top level")
    items = overrides.items() if isinstance(overrides, dict) else []
    if isinstance(overrides, list):
        parsed = []
        for ov in overrides:
            if "=" not in ov:
                raise UsageError(f"config override {ov!r} must look like key=value (e.g. optim.lr=0.02)")
            k, v = ov.split("=", 1)
            parsed.append((k.strip(), yaml.safe_load(v)))
        items = parsed
    items = list(items)
    # the labeled set is one choice: an override naming one of its keys replaces what the file chose with
    # another (data.labeled_list=FILE on a packaged config that sets labeled_patients); two of them given
    # as overrides still conflict (validate says so)
    chosen = [k for k, v in items if k in LABELED_KEYS and v is not None]
    if chosen and isinstance(tree.get("data"), dict):
        for k in LABELED_KEYS:
            if k not in chosen:
                tree["data"].pop(k.split(".", 1)[1], None)
    for k, v in items:
        _set_dotted(tree, k, v)
    cfg = _build(TrainConfig, tree)
    cfg.validate()
    return cfg


def config_from_dict(d: dict) -> TrainConfig:
    """Rebuild a config saved with :meth:`TrainConfig.to_dict` (e.g. from a checkpoint)."""
    return _build(TrainConfig, d)
