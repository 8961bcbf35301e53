"""Bad input, table-driven: every row is one command with one bad input file / argument / config key,
and checks the exit code (2: usage error, 1: data error; see mona.errors) and the exact one-line
message ``mona COMMAND: error: ...`` naming the file or key; never a traceback (``--debug`` shows one).

The rows run the CLI's ``main()`` in this process (argument parsing, the command, the error report:
the same code as ``python -m mona``); a few are re-run in a subprocess to check the process's exit
status and stderr. Truncated ``.nii.gz`` files are cut at offsets drawn by hypothesis.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch
from faultlib import last_error_line, mona
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mona import __version__
from mona.cli import main
from mona.data.readers import load_nifti
from mona.errors import DataError

AFFINE = np.diag([1.5, 1.5, 4.0, 1.0])
CASES = ["a", "b", "c", "d", "e", "f"]


def _nifti(path: Path, arr: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def _good_raw(root: Path) -> Path:
    """A valid `folder` layout: 6 volumes 16 x 16 x 3, labels 0..3."""
    rng = np.random.default_rng(0)
    for c in CASES:
        _nifti(root / "images" / f"{c}.nii.gz", rng.normal(100, 20, (16, 16, 3)).astype(np.float32))
        _nifti(root / "labels" / f"{c}.nii.gz", rng.integers(0, 4, (16, 16, 3)).astype(np.uint8))
    return root


@dataclass
class W:
    """The workspace of one row: a fresh copy of the good raw folder, and shared good files."""

    tmp: Path
    raw: Path
    cache: Path  # a prepared 4-class cache (ACDC phantoms)
    last: Path  # a supervised training run's last.pt on it
    model: Path  # its model.pt
    glcon: Path  # a glcon run's last.pt
    run: Path  # the supervised run's out_dir
    out: Path  # a fresh output path

    @property
    def img(self) -> Path:
        return self.raw / "images" / "a.nii.gz"

    @property
    def lab(self) -> Path:
        return self.raw / "labels" / "a.nii.gz"

    def fmt(self, s: str) -> str:
        return s.format(
            tmp=self.tmp,
            raw=self.raw,
            cache=self.cache,
            last=self.last,
            model=self.model,
            glcon=self.glcon,
            run=self.run,
            out=self.out,
            img=self.img,
            lab=self.lab,
            version=__version__,
        )


@dataclass
class Row:
    name: str
    setup: Callable[[W], list[str]]  # writes the bad input, returns the command line
    code: int
    message: str  # after "mona CMD: error: "; {placeholders} of W.fmt


def prep(*extra: str) -> Callable[[W], list[str]]:
    return lambda w: [
        "prepare",
        "folder",
        str(w.raw),
        str(w.out),
        "--num-classes",
        "4",
        "--size",
        "16",
        "--no-progress",
        *extra,
    ]


def with_file(fn: Callable[[W], None], cmd: Callable[[W], list[str]]) -> Callable[[W], list[str]]:
    def setup(w: W) -> list[str]:
        fn(w)
        return cmd(w)

    return setup


def train(*extra: str) -> Callable[[W], list[str]]:
    return lambda w: [
        "train",
        "--config",
        "demo",
        f"data.cache={w.cache}",
        f"out_dir={w.out}",
        "iterations=2",
        "data.batch_size=2",
        "model.channels=[8,16,32,64,128]",
        "--no-progress",
        *[w.fmt(e) for e in extra],
    ]


def evaluate(*extra: str) -> Callable[[W], list[str]]:
    return lambda w: ["evaluate", *[w.fmt(e) for e in extra], "--no-progress"]


def predict(*extra: str) -> Callable[[W], list[str]]:
    return lambda w: ["predict", *[w.fmt(e) for e in extra]]


def _zero_spacing(p: Path) -> None:
    """pixdim[1] (the x spacing; float32 at byte 80 of the header) set to 0."""
    b = bytearray(gzip.decompress(p.read_bytes()))
    b[80:84] = np.float32(0).tobytes()
    p.write_bytes(gzip.compress(bytes(b)))


def _truncate(p: Path, keep: float = 0.5) -> None:
    """Keep the first ``keep`` fraction of the file (``keep`` >= 1: that many bytes)."""
    b = p.read_bytes()
    p.write_bytes(b[: int(keep) if keep >= 1 else int(len(b) * keep)])


def _img(w: W, arr: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    _nifti(w.img, arr, affine)


def _lab(w: W, arr: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    _nifti(w.lab, arr, affine)


def _vol(shape=(16, 16, 3), fill: float | None = None) -> np.ndarray:
    a = np.random.default_rng(1).normal(100, 20, shape).astype(np.float32)
    if fill is not None:
        a[3, 4, 1] = fill
    return a


def _ckpt(w: W, src: Path, dst: Path, edit: Callable[[dict], None]) -> None:
    ck = torch.load(src, weights_only=False)
    edit(ck)
    torch.save(ck, dst)


def _meta_classes(ck: dict) -> None:
    ck["meta"]["num_classes"] = 3
    ck["meta"]["class_names"] = ["background", "RV", "Myo"]


def _model3(path: Path) -> None:
    """An exported 3-class model (classes background, RV, Myo) at the cache's size."""
    from mona.models import build_model
    from mona.train.checkpoint import export_inference, model_meta

    meta = model_meta(
        3, ["background", "RV", "Myo"], 32, {"kind": "minmax"}, (8, 16, 32, 64, 128), (0.05, 0.1, 0.2, 0.3, 0.5)
    )
    export_inference(build_model(meta), meta, path)


def _cache_copy(w: W) -> Path:
    c = w.tmp / "cache_copy"
    shutil.copytree(w.cache, c)
    return c


def _corrupt_volume(w: W) -> None:
    c = _cache_copy(w)
    _truncate(c / "volumes" / "patient011_frame01.image.npy", 0.3)


def _cfg(w: W, text: str) -> list[str]:
    p = w.tmp / "cfg.yaml"
    p.write_text(text)
    return ["train", "--config", str(p), "--no-progress"]


ROWS: list[Row] = [
    # ------------------------------------------------------------------ prepare: the raw files
    Row(
        "prepare: raw dir missing",
        lambda w: prep()(w)[:2] + [str(w.tmp / "nope")] + prep()(w)[3:],
        1,
        "folder: raw directory '{tmp}/nope' does not exist or is not a directory",
    ),
    Row(
        "prepare: raw dir is a file",
        with_file(
            lambda w: (w.tmp / "f").write_text("x"),
            lambda w: ["prepare", "folder", str(w.tmp / "f"), str(w.out), "--num-classes", "4"],
        ),
        1,
        "folder: raw directory '{tmp}/f' does not exist or is not a directory",
    ),
    Row(
        "prepare: label file missing",
        with_file(lambda w: w.lab.unlink(), prep()),
        1,
        "folder: {img} has no label file labels/a.nii(.gz)",
    ),
    Row(
        "prepare: image is a directory",
        with_file(lambda w: (w.img.unlink(), w.img.mkdir()), prep()),
        1,
        "{img}: is a directory, not a NIfTI file",
    ),
    Row(
        "prepare: empty image file",
        with_file(lambda w: w.img.write_bytes(b""), prep()),
        1,
        "{img}: empty file (0 bytes)",
    ),
    Row(
        "prepare: empty label file",
        with_file(lambda w: w.lab.write_bytes(b""), prep()),
        1,
        "{lab}: empty file (0 bytes)",
    ),
    Row(
        "prepare: truncated image (.nii.gz cut in the data)",
        with_file(lambda w: _truncate(w.img, 0.9), prep()),
        1,
        "{img}: unreadable NIfTI file: truncated or corrupt data (EOFError: Compressed file ended before the end-of-stream marker "
        "was reached)",
    ),
    Row(
        "prepare: truncated image (cut in the header)",
        with_file(lambda w: _truncate(w.img, 40), prep()),
        1,
        "{img}: unreadable NIfTI file: header truncated or corrupt (gzip: EOFError)",
    ),
    Row(
        "prepare: not gzip but named .nii.gz",
        with_file(lambda w: w.img.write_bytes(b"hello world" * 40), prep()),
        1,
        "{img}: unreadable NIfTI file: not a gzip file, but named .gz (Not a gzipped file (b'he'))",
    ),
    Row(
        "prepare: wrong NIfTI magic",
        with_file(
            lambda w: w.img.write_bytes(
                gzip.compress(
                    gzip.decompress(w.img.read_bytes())[:344] + b"xyz\0" + gzip.decompress(w.img.read_bytes())[348:]
                )
            ),
            prep(),
        ),
        1,
        "{img}: unreadable NIfTI file: wrong magic b'xyz\\x00' (expected b'n+1\\x00' or b'ni1\\x00'): not NIfTI",
    ),
    Row(
        "prepare: wrong header size field",
        with_file(
            lambda w: w.img.write_bytes(gzip.compress(b"\x01\x02\x03\x04" + gzip.decompress(w.img.read_bytes())[4:])),
            prep(),
        ),
        1,
        "{img}: unreadable NIfTI file: wrong header size field 01020304 (neither 348 nor 540): not NIfTI",
    ),
    Row(
        "prepare: 4-D image",
        with_file(lambda w: _img(w, np.zeros((16, 16, 3, 2), np.float32)), prep()),
        1,
        "{img}: expected a 3-D image, got shape (16, 16, 3, 2)",
    ),
    Row(
        "prepare: 1-D image",
        with_file(lambda w: _img(w, np.zeros((16,), np.float32)), prep()),
        1,
        "{img}: expected a 3-D image, got shape (16,)",
    ),
    Row(
        "prepare: image/label shape mismatch",
        with_file(lambda w: _lab(w, np.zeros((16, 16, 4), np.uint8)), prep()),
        1,
        "{lab}: label shape (16, 16, 4) does not match image shape (16, 16, 3) of {img}",
    ),
    Row(
        "prepare: image/label affine mismatch",
        with_file(lambda w: _lab(w, np.zeros((16, 16, 3), np.uint8), np.diag([1.0, 1.5, 4.0, 1.0])), prep()),
        1,
        "{lab}: label affine differs from the affine of {img}",
    ),
    Row(
        "prepare: NaN intensity",
        with_file(lambda w: _img(w, _vol(fill=np.nan)), prep()),
        1,
        "{img}: image contains NaN or infinite values",
    ),
    Row(
        "prepare: inf intensity",
        with_file(lambda w: _img(w, _vol(fill=np.inf)), prep()),
        1,
        "{img}: image contains NaN or infinite values",
    ),
    Row(
        "prepare: label value outside the classes",
        with_file(lambda w: _lab(w, np.full((16, 16, 3), 7, np.uint8)), prep()),
        1,
        "{lab}: label values [7] outside the declared classes 0..3 (background, class1, class2, class3)",
    ),
    Row(
        "prepare: negative label value",
        with_file(lambda w: _lab(w, np.full((16, 16, 3), -1, np.int16)), prep()),
        1,
        "{lab}: label values [-1] outside the declared classes 0..3 (background, class1, class2, class3)",
    ),
    Row(
        "prepare: non-integer labels",
        with_file(lambda w: _lab(w, np.full((16, 16, 3), 0.5, np.float32)), prep()),
        1,
        "{lab}: label volume has non-integer values",
    ),
    Row(
        "prepare: NaN labels",
        with_file(lambda w: _lab(w, _vol(fill=np.nan) * 0), prep()),
        1,
        "{lab}: label volume has non-integer values",
    ),
    Row(
        "prepare: zero voxel spacing",
        with_file(lambda w: _zero_spacing(w.img), prep()),
        1,
        "{img}: invalid voxel spacing (0.0, 1.5, 4.0) in the header (pixdim)",
    ),
    # ------------------------------------------------------------------ prepare: options
    Row(
        "prepare: --num-classes 1",
        prep("--num-classes", "1"),
        2,
        "folder: num_classes must be >= 2 (background + at least one class), got 1",
    ),
    Row("prepare: --size 8", prep("--size", "8"), 2, "prepare: --size must be >= 16, got 8"),
    Row(
        "prepare: --size not a number",
        prep("--size", "big"),
        2,
        "argument --size: invalid int value: 'big' (see mona prepare --help)",
    ),
    Row(
        "prepare: unknown dataset",
        lambda w: ["prepare", "brats", str(w.raw), str(w.out)],
        2,
        "argument DATASET: invalid choice: 'brats' (choose from 'acdc', 'lits', 'mmwhs', 'folder', 'phantom') (see mona prepare "
        "--help)",
    ),
    Row(
        "prepare: --splits directory missing",
        prep("--splits", "/nonexistent/lists"),
        1,
        "--splits /nonexistent/lists: not a directory (it must hold train.list and test.list, optionally val.list "
        "and labeled.list)",
    ),
    # ------------------------------------------------------------------ train: the config
    Row(
        "train: --config missing",
        lambda w: ["train", "--config", str(w.tmp / "no.yaml")],
        2,
        "--config '{tmp}/no.yaml': no such file, and not a packaged config name (acdc_bcp, acdc_glcon, acdc_mona, "
        "acdc_supervised, acdc_unimatch, demo, demo_mona, lits_glcon, lits_mona, mmwhs_glcon, mmwhs_mona)",
    ),
    Row(
        "train: --config is a directory",
        lambda w: ["train", "--config", str(w.tmp)],
        2,
        "--config '{tmp}': is a directory, not a YAML file",
    ),
    Row(
        "train: empty config file",
        lambda w: _cfg(w, ""),
        2,
        "config: data.cache is required (a directory written by `mona prepare`)",
    ),
    Row(
        "train: config not YAML",
        lambda w: _cfg(w, "method: [supervised\n"),
        2,
        "config: {tmp}/cfg.yaml is not valid YAML (line 2, column 1: expected ',' or ']', but got '<stream end>')",
    ),
    Row(
        "train: config is a list",
        lambda w: _cfg(w, "- method\n"),
        2,
        "config: {tmp}/cfg.yaml must hold a mapping at the top level",
    ),
    Row(
        "train: unknown key",
        train("optim.learning_rate=0.1"),
        2,
        "config: unknown key(s) ['optim.learning_rate']; valid: ['gamma', 'lr', 'momentum', 'poly_power', "
        "'schedule', 'step_size', 'weight_decay']",
    ),
    Row("train: wrong type", train("optim.lr=fast"), 2, "config: optim.lr must be float, got 'fast'"),
    Row("train: wrong type (section)", train("optim=3"), 2, "config: optim must be a mapping, got 3"),
    Row("train: out of range (iterations=0)", train("iterations=0"), 2, "config: iterations must be > 0, got 0"),
    Row("train: out of range (ema_decay)", train("ema_decay=1.5"), 2, "config: ema_decay must be in [0, 1), got 1.5"),
    Row(
        "train: out of range (labeled_ratio)",
        train("data.labeled_patients=null", "data.labeled_ratio=2"),
        2,
        "config: data.labeled_ratio must be in (0, 1], got 2.0",
    ),
    Row(
        "train: out of range (max_nonfinite_steps)",
        train("max_nonfinite_steps=0"),
        2,
        "config: max_nonfinite_steps must be > 0, got 0",
    ),
    Row(
        "train: override without =",
        lambda w: ["train", "--config", "demo", "iterations"],
        2,
        "config override 'iterations' must look like key=value (e.g. optim.lr=0.02)",
    ),
    # ------------------------------------------------------------------ train: data and checkpoints
    Row(
        "train: data.cache missing",
        lambda w: train()(w)[:3] + [f"data.cache={w.tmp / 'nocache'}"] + train()(w)[4:],
        1,
        "{tmp}/nocache: the cache directory does not exist; create it with `mona prepare DATASET RAW_DIR "
        "{tmp}/nocache` (phantoms: `mona synth RAW_DIR` first, then `mona prepare acdc RAW_DIR {tmp}/nocache`), "
        "or point data.cache at an existing cache",
    ),
    Row(
        "train: data.cache without manifest",
        lambda w: (w.tmp.joinpath("empty").mkdir(), train(f"data.cache={w.tmp}/empty")(w))[1],
        1,
        "{tmp}/empty: not a prepared cache (no manifest.json; run `mona prepare`, or an earlier run was interrupted)",
    ),
    Row(
        "train: corrupt manifest",
        lambda w: (
            (_cache_copy(w) / "manifest.json").write_text('{"cases": ['),
            train(f"data.cache={w.tmp}/cache_copy")(w),
        )[1],
        1,
        "{tmp}/cache_copy/manifest.json: corrupt manifest (Expecting value: line 1 column 12 (char 11))",
    ),
    Row(
        "train: truncated cache volume",
        lambda w: (_corrupt_volume(w), train(f"data.cache={w.tmp}/cache_copy")(w))[1],
        1,
        "{tmp}/cache_copy/volumes/patient011_frame01.image.npy: unreadable cache volume (ValueError: mmap length "
        "is greater than file size); re-run `mona prepare`",
    ),
    Row(
        "train: init_from missing",
        train("init_from={tmp}/none.pt"),
        1,
        "init_from: checkpoint {tmp}/none.pt does not exist",
    ),
    Row(
        "train: init_from of another number of classes",
        lambda w: (_ckpt(w, w.model, w.tmp / "c3.pt", _meta_classes), train(f"init_from={w.tmp}/c3.pt")(w))[1],
        1,
        "init_from {tmp}/c3.pt: incompatible checkpoint: num_classes 3 != this run's 4",
    ),
    Row(
        "train: --resume a missing checkpoint",
        train("--resume", "{tmp}/gone.pt"),
        1,
        "checkpoint {tmp}/gone.pt does not exist",
    ),
    Row(
        "train: --resume an exported model",
        train("--resume", "{model}"),
        1,
        "--resume {model}: mona-inference-v1 is not a resumable training checkpoint (mona-checkpoint-v2); use the "
        "run's last.pt",
    ),
    Row(
        "train: --resume a checkpoint of another method",
        train("--resume", "{glcon}"),
        1,
        "--resume {glcon}: a 'glcon' checkpoint, but this config trains ['supervised']",
    ),
    Row(
        "train: --resume a truncated checkpoint",
        lambda w: (
            shutil.copy(w.last, w.tmp / "cut.pt"),
            _truncate(w.tmp / "cut.pt", 0.5),
            train("--resume", "{tmp}/cut.pt")(w),
        )[2],
        1,
        "checkpoint {tmp}/cut.pt: unreadable: truncated, corrupt or not a PyTorch file (RuntimeError: "
        "PytorchStreamReader failed reading zip archive: failed finding central directory)",
    ),
    Row(
        "train: --resume a checkpoint whose config has an unknown key",
        lambda w: (
            _ckpt(w, w.last, w.tmp / "k.pt", lambda ck: ck["config"].update(future_key=1)),
            train("--resume", "{tmp}/k.pt")(w),
        )[1],
        1,
        "checkpoint {tmp}/k.pt: its config does not fit this mona version (config: unknown key(s) ['future_key']; "
        "valid: ['amp', 'augment', 'bcp', 'ce_weight', 'checkpoint_every', 'data', 'device', 'dice_weight', "
        "'distributed', 'ema_decay', 'ema_warmup', 'eval_model', 'glcon', 'impl', 'init_from', "
        "'iterations', 'log_every', 'log_grad_norms', 'log_pseudo_quality', 'max_nonfinite_steps', "
        "'mean_teacher', 'method', 'model', 'mona', 'optim', 'out_dir', 'pretrain_iterations', "
        "'pseudo_warmup_iterations', 'rampup_iterations', 'seed', 'threads', 'unimatch', 'val_every'])",
    ),
    Row(
        "train: --resume a checkpoint of another mona version",
        lambda w: (
            _ckpt(w, w.last, w.tmp / "v9.pt", lambda ck: ck.update(format="mona-checkpoint-v9", mona_version="9.0")),
            train("--resume", "{tmp}/v9.pt")(w),
        )[1],
        1,
        "checkpoint {tmp}/v9.pt: format 'mona-checkpoint-v9' (written by mona 9.0) is not one mona {version} reads "
        "(mona-checkpoint-v2, mona-inference-v1, mona-checkpoint-v1)",
    ),
    Row(
        "train: data.labeled_list missing",
        train("data.labeled_patients=null", "data.labeled_list={tmp}/no.list"),
        1,
        "{tmp}/no.list: list file does not exist",
    ),
    Row(
        "train: semi-supervised without unlabeled slices",
        train("method=mona", "data.labeled_patients=3", "data.labeled_bs=1"),
        1,
        "method 'mona' needs unlabeled slices, but every train slice of {cache} is labeled (labeled_patients 3: the "
        "first 3 train patient(s): 18 labeled slices of 3 patient(s) (whole), 0 unlabeled slices of 0 patient(s)); "
        "label fewer patients or use method: supervised",
    ),
    # ------------------------------------------------------------------ evaluate
    Row("evaluate: checkpoint missing", evaluate("{tmp}/x.pt", "{cache}"), 1, "checkpoint {tmp}/x.pt does not exist"),
    Row(
        "evaluate: checkpoint is a directory",
        evaluate("{run}", "{cache}"),
        1,
        "checkpoint {run}: is a directory, not a checkpoint file (e.g. {run}/last.pt)",
    ),
    Row(
        "evaluate: empty checkpoint",
        lambda w: ((w.tmp / "e.pt").write_bytes(b""), evaluate("{tmp}/e.pt", "{cache}")(w))[1],
        1,
        "checkpoint {tmp}/e.pt: empty file (0 bytes)",
    ),
    Row(
        "evaluate: not a mona checkpoint",
        lambda w: (torch.save([1, 2], w.tmp / "l.pt"), evaluate("{tmp}/l.pt", "{cache}")(w))[1],
        1,
        "checkpoint {tmp}/l.pt: not a mona checkpoint (a saved list without a 'format' key)",
    ),
    Row(
        "evaluate: text file as checkpoint",
        lambda w: ((w.tmp / "t.pt").write_text("hello"), evaluate("{tmp}/t.pt", "{cache}")(w))[1],
        1,
        "checkpoint {tmp}/t.pt: unreadable: truncated, corrupt or not a PyTorch file (UnpicklingError: Memo value "
        "not found at index 101)",
    ),
    Row(
        "evaluate: checkpoint whose weights do not fit its metadata",
        lambda w: (_ckpt(w, w.model, w.tmp / "c3.pt", _meta_classes), evaluate("{tmp}/c3.pt", "{cache}")(w))[1],
        1,
        "checkpoint {tmp}/c3.pt: its weights do not fit its own metadata (3 classes, channels [8, 16, 32, 64, 128]): "
        "size mismatch for out_conv.bias: copying a param with shape torch.Size([4]) from checkpoint, the shape in "
        "current model is torch.Size([3]).",
    ),
    Row(
        "evaluate: checkpoint of another number of classes",
        lambda w: (_model3(w.tmp / "c3.pt"), evaluate("{tmp}/c3.pt", "{cache}")(w))[1],
        1,
        "{tmp}/c3.pt: a model of 3 classes (background, RV, Myo), but the cache {cache} has 4 (background, RV, Myo, LV)",
    ),
    Row(
        "evaluate: cache missing",
        evaluate("{model}", "{tmp}/nocache"),
        1,
        "{tmp}/nocache: the cache directory does not exist; create it with `mona prepare DATASET RAW_DIR "
        "{tmp}/nocache` (phantoms: `mona synth RAW_DIR` first, then `mona prepare acdc RAW_DIR {tmp}/nocache`), "
        "or point data.cache at an existing cache",
    ),
    Row(
        "evaluate: unknown --split",
        evaluate("{model}", "{cache}", "--split", "dev"),
        2,
        "argument --split: invalid choice: 'dev' (choose from 'train', 'val', 'test') (see mona evaluate --help)",
    ),
    Row(
        "evaluate: --overlay-slices 0",
        evaluate("{model}", "{cache}", "--overlay-slices", "0"),
        2,
        "--overlay-slices must be >= 1, got 0",
    ),
    # ------------------------------------------------------------------ predict
    Row(
        "predict: input missing",
        predict("{model}", "{tmp}/in.nii.gz", "{out}.nii.gz"),
        1,
        "{tmp}/in.nii.gz: file does not exist",
    ),
    Row(
        "predict: input is a directory",
        predict("{model}", "{tmp}", "{out}.nii.gz"),
        1,
        "{tmp}: is a directory, not a NIfTI file",
    ),
    Row(
        "predict: empty input",
        with_file(lambda w: w.img.write_bytes(b""), predict("{model}", "{img}", "{out}.nii.gz")),
        1,
        "{img}: empty file (0 bytes)",
    ),
    Row(
        "predict: truncated input",
        with_file(lambda w: _truncate(w.img, 0.9), predict("{model}", "{img}", "{out}.nii.gz")),
        1,
        "{img}: unreadable NIfTI file: truncated or corrupt data (EOFError: Compressed file ended before the end-of-stream marker "
        "was reached)",
    ),
    Row(
        "predict: 4-D input",
        with_file(lambda w: _img(w, np.zeros((16, 16, 3, 2), np.float32)), predict("{model}", "{img}", "{out}.nii.gz")),
        1,
        "{img}: expected a non-empty 2-D or 3-D image, got shape (16, 16, 3, 2)",
    ),
    Row(
        "predict: NaN input",
        with_file(lambda w: _img(w, _vol(fill=np.nan)), predict("{model}", "{img}", "{out}.nii.gz")),
        1,
        "{img}: image contains NaN or infinite values",
    ),
    Row(
        "predict: checkpoint of another mona version",
        lambda w: (
            _ckpt(w, w.model, w.tmp / "v9.pt", lambda ck: ck.update(format="mona-inference-v9", mona_version="9.0")),
            predict("{tmp}/v9.pt", "{img}", "{out}.nii.gz")(w),
        )[1],
        1,
        "checkpoint {tmp}/v9.pt: format 'mona-inference-v9' (written by mona 9.0) is not one mona {version} reads "
        "(mona-checkpoint-v2, mona-inference-v1, mona-checkpoint-v1)",
    ),
    Row(
        "predict: output is a directory",
        lambda w: ((w.tmp / "o.nii.gz").mkdir(), predict("{model}", "{img}", "{tmp}/o.nii.gz")(w))[1],
        1,
        "{tmp}/o.nii.gz: cannot write (Is a directory)",
    ),
    # ------------------------------------------------------------------ synth, demo
    Row(
        "synth: too many patients",
        lambda w: ["synth", str(w.out), "--train", "500", "--no-progress"],
        2,
        "synth: n_train must be in 0..70, got 500",
    ),
    Row(
        "synth: size too small",
        lambda w: ["synth", str(w.out), "--size-min", "8", "--no-progress"],
        2,
        "synth: need 32 <= size_min <= size_max, got 8, 144",
    ),
    Row(
        "synth: OUT_DIR is a file",
        lambda w: ((w.tmp / "file").write_text("x"), ["synth", str(w.tmp / "file"), "--no-progress"])[1],
        1,
        "{tmp}/file: File exists",
    ),
    Row("demo: --size 8", lambda w: ["demo", "--out", str(w.out), "--size", "8"], 2, "demo: size must be >= 16, got 8"),
    Row(
        "demo: --labeled-patients 0",
        lambda w: ["demo", "--out", str(w.out), "--labeled-patients", "0"],
        2,
        "demo: labeled_patients must be in 1..7 (MONA needs unlabeled train patients; 8 train patients), got 0",
    ),
    Row(
        "demo: unknown override key",
        lambda w: ["demo", "--out", str(w.out), "optim.lrr=1"],
        2,
        "config: unknown key(s) ['optim.lrr']; valid: ['gamma', 'lr', 'momentum', 'poly_power', 'schedule', "
        "'step_size', 'weight_decay']",
    ),
]


@pytest.fixture(scope="module")
def good(fault_cache, tmp_path_factory) -> dict:
    """The good inputs the rows damage copies of: a raw folder, checkpoints of a supervised and a glcon run."""
    from mona.train import load_config
    from mona.train import train as train_api

    root = tmp_path_factory.mktemp("bad_input")
    raw = _good_raw(root / "raw_tpl")
    common = [
        f"data.cache={fault_cache}",
        "iterations=2",
        "data.batch_size=2",
        "model.channels=[8,16,32,64,128]",
        "threads=1",
        "device=cpu",
        "val_every=2",
        "data.labeled_patients=1",
    ]
    train_api(load_config(None, [*common, f"out_dir={root / 'sup'}"]), progress=False)
    train_api(
        load_config(
            None,
            [
                *common,
                "method=glcon",
                "data.labeled_bs=1",
                "glcon.mined_views=2",
                "glcon.local_crops=2",
                "model.embed_dim=8",
                f"out_dir={root / 'glcon'}",
            ],
        ),
        progress=False,
    )
    return {"raw": raw, "run": root / "sup", "glcon": root / "glcon" / "last.pt"}


def _workspace(good: dict, cache: Path, tmp: Path) -> W:
    raw = tmp / "raw"
    shutil.copytree(good["raw"], raw)
    return W(
        tmp, raw, cache, good["run"] / "last.pt", good["run"] / "model.pt", good["glcon"], good["run"], tmp / "out"
    )


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input(row: Row, good, fault_cache, tmp_path, capsys, fault_report):
    w = _workspace(good, fault_cache, tmp_path)
    args = row.setup(w)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    expected = f"mona {args[0]}: error: {w.fmt(row.message)}"
    assert (code, last_error_line(err)) == (row.code, expected)
    assert "Traceback" not in err
    if args[0] in ("train", "evaluate", "predict", "synth", "demo"):
        assert not w.out.exists() and not Path(f"{w.out}.nii.gz").exists()  # nothing written on bad input
    fault_report(
        "bad_input",
        {
            "row": row.name,
            "exit": code,
            "message": expected.replace(str(tmp_path), "TMP").replace(str(fault_cache), "CACHE"),
        },
    )


def test_bad_input_rows_in_a_real_process(good, fault_cache, tmp_path):
    """The same through `python -m mona`: the process's exit status and stderr, with and without --debug."""
    w = _workspace(good, fault_cache, tmp_path)
    by_name = {r.name: r for r in ROWS}
    for name in ("prepare: empty image file", "train: unknown key", "prepare: --size 8"):  # data, config, option
        row = by_name[name]
        args = row.setup(w)
        r = mona(*args)
        assert (r.returncode, last_error_line(r.stderr)) == (row.code, f"mona {args[0]}: error: {w.fmt(row.message)}")
        assert "Traceback" not in r.stderr
    r = mona("--debug", *by_name["prepare: empty image file"].setup(w))
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr and "DataError" in r.stderr


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_nifti_at_any_offset_is_named_or_intact(tmp_path, cut):
    """A .nii.gz cut at any byte: a DataError naming the file and saying what is wrong, or (cut inside the
    gzip trailer only) the complete, identical volume; never another exception, never wrong data."""
    src = tmp_path / "full.nii.gz"
    arr = np.random.default_rng(3).normal(0, 1, (12, 10, 4)).astype(np.float32)
    if not src.exists():
        _nifti(src, arr)
    data = src.read_bytes()
    p = tmp_path / "cut.nii.gz"
    p.write_bytes(data[: int(cut * len(data))])
    try:
        _, got = load_nifti(str(p))
    except DataError as err:
        msg = str(err)
        assert msg.startswith(f"{p}: ") and any(k in msg for k in ("truncated", "empty file")), msg
        assert "\n" not in msg
        return
    assert np.array_equal(got, arr)
