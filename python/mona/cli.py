"""The ``mona`` command line. ``mona --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Callable, Sequence

from . import __version__
from .atomicio import atomic_write_bytes
from .errors import EXIT_DATA, EXIT_USAGE, DataError, UsageError

Handler = Callable[[argparse.Namespace], int]


def _cmd_info(args: argparse.Namespace) -> int:
    """Print versions, what the extension was built with, and the registered ops."""
    import torch

    info: dict = {
        "mona": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import mona_ext

        info["extension"] = mona_ext.build_info()
    except ImportError as err:  # report, but say clearly that the ops are unusable
        info["extension"] = {"error": str(err)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0 if "error" not in info["extension"] else 1
    ext = info.pop("extension")
    width = max(len(k) for k in info) + 2
    for key, value in info.items():
        print(f"{key:<{width}}{value}")
    if "error" in ext:
        print(f"{'extension':<{width}}NOT LOADED: {ext['error']}")
        return 1
    cuda = "no"
    if ext["with_cuda"]:
        cuda = (
            f"yes (nvcc {ext['cuda_version']}, archs {' '.join(ext['cuda_archs']) or '?'}, "
            f"PTX {'yes' if ext['ptx'] else 'no'}; TORCH_CUDA_ARCH_LIST={ext['cuda_arch_list']})"
        )
    print(f"{'extension':<{width}}built against torch {ext['torch_version']}, CUDA kernels: {cuda}")
    for name, keys in ext["ops"].items():
        print(f"  torch.ops.mona.{name:<24} kernels: {', '.join(keys) or 'none'}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import SynthConfig, write_phantoms

    cfg = SynthConfig(
        n_train=args.train,
        n_val=args.val,
        n_test=args.test,
        seed=args.seed,
        size_min=args.size_min,
        size_max=args.size_max,
        slices_min=args.slices_min,
        slices_max=args.slices_max,
        tail=args.tail,
    )
    ids = write_phantoms(args.out_dir, cfg, progress=not args.no_progress)
    print(f"wrote {len(ids)} phantom patients (ACDC layout) to {args.out_dir}")
    if args.tail:
        print(f"  with the long-tail class 4 (PM): prepare them with `mona prepare phantom {args.out_dir} CACHE_DIR`")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import prepare

    class_names = None
    if args.class_names is not None:
        class_names = [n.strip() for n in args.class_names.split(",")]
        if args.dataset != "folder":
            raise UsageError(f"--class-names applies to the folder layout only, not {args.dataset}")
    r = prepare(
        args.dataset,
        args.raw_dir,
        args.out_dir,
        size=args.size,
        seed=args.seed,
        num_classes=args.num_classes,
        modality=args.modality,
        progress=not args.no_progress,
        splits_dir=args.splits,
        class_names=class_names,
    )
    n_slices = sum(c["n_slices"] for c in r.manifest["cases"])
    sp = r.manifest["splits"]
    print(
        f"{args.out_dir}: {len(r.manifest['cases'])} volumes, {n_slices} slices at {args.size}x{args.size} "
        f"({len(r.processed)} processed, {len(r.skipped)} already up to date); patients "
        f"train/val/test = {len(sp['train'])}/{len(sp['val'])}/{len(sp['test'])}"
    )
    if args.dataset in ("folder", "phantom"):
        print(f"  classes: {', '.join(r.manifest['class_names'])}")
    for note in r.notes:
        print(f"  {note}")
    lists = r.manifest.get("labeled_lists") or {}
    if lists:
        print(f"  labeled lists for data.labeled_ratio: {', '.join(sorted(lists, key=float))} (the MONA authors')")
    return 0


def _resolve_config(name: str) -> str:
    from importlib import resources
    from pathlib import Path

    if Path(name).is_dir():
        raise UsageError(f"--config {name!r}: is a directory, not a YAML file")
    if Path(name).exists():
        return name
    packaged = resources.files("mona").joinpath(f"configs/{name}.yaml")
    if "/" not in name and not name.endswith((".yaml", ".yml")) and packaged.is_file():
        print(f"using the packaged config {name!r} ({packaged})")
        return str(packaged)
    names = sorted(
        p.name[:-5] for p in resources.files("mona").joinpath("configs").iterdir() if p.name.endswith(".yaml")
    )
    raise UsageError(f"--config {name!r}: no such file, and not a packaged config name ({', '.join(names)})")


def _cmd_train(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from .train import distributed, load_config, run_stages

    if distributed.env_from_environment().rank > 0:  # under torchrun: one copy of every info line, rank 0's
        logging.getLogger("mona").setLevel(logging.WARNING)
    overrides, resume = list(args.overrides), args.resume
    if resume not in (None, "auto") and "=" in resume and not Path(resume).exists():
        # `--resume key=value`: argparse took an override as the optional CHECKPOINT value
        overrides, resume = overrides + [resume], "auto"
    override = tuple(k.strip() for k in (args.resume_override or "").split(",") if k.strip())
    if override and resume is None:
        raise UsageError("--resume-override applies with --resume only")
    cfg = load_config(_resolve_config(args.config), overrides)
    try:  # under torchrun: one process of several (mona.train.distributed); only rank 0 reports
        results = run_stages(cfg, resume=resume, progress=not args.no_progress, resume_override=override)
        if not distributed.current().is_main:
            return 0
    finally:
        distributed.shutdown()
    if not results:
        print(
            f"nothing to do: every stage of {cfg.out_dir} has finished (train again without --resume, or "
            f"raise `iterations`)"
        )
    for r in results:
        if r.has_validation:
            best = f"best val mean Dice {r.best_dice:.4f} (iteration {r.best_iteration})"
        else:
            best = "no validation patients in the cache: best.pt / model.pt are the final weights"
        print(
            f"{r.out_dir}: finished at iteration {r.iteration} in {r.seconds:.0f} s; {best}; outputs: best.pt, "
            f"last.pt, model.pt, metrics.jsonl"
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data.dataset import SliceCache
    from .eval.report import evaluate_cache, write_report
    from .train.checkpoint import load_model
    from .train.loop import select_device

    if args.overlay_volumes is not None and args.overlay_volumes < 0:
        raise UsageError(f"--overlay-volumes must be >= 0, got {args.overlay_volumes}")
    if args.overlay_slices < 1:
        raise UsageError(f"--overlay-slices must be >= 1, got {args.overlay_slices}")
    dev = select_device(args.device)
    model, meta = load_model(args.checkpoint, dev)
    cache = SliceCache(args.data)
    if list(meta["class_names"]) != list(cache.class_names):
        raise DataError(
            f"{args.checkpoint}: a model of {len(meta['class_names'])} classes ({', '.join(meta['class_names'])}), "
            f"but the cache {args.data} has {len(cache.class_names)} ({', '.join(cache.class_names)})"
        )
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"eval_{args.split}"
    # nothing is written to `out` before the cache and the split have been checked (evaluate_cache raises first)
    report = evaluate_cache(
        model,
        meta,
        args.data,
        split=args.split,
        device=dev,
        voxels=args.voxels,
        overlay_dir=out / "overlays" if args.overlays else None,
        max_overlays=args.overlay_volumes,
        overlay_slices=args.overlay_slices,
        progress=not args.no_progress,
    )
    csv_path, json_path = write_report(report, out, extra={"checkpoint": str(args.checkpoint), "split": args.split})
    print(report.table())
    print(
        f"\nmean foreground Dice: {report.mean_dice:.4f}   (distances in mm; n_dist: volumes in the ASD/HD95 "
        f"means; per-volume rows in {csv_path}, summary in {json_path})"
    )
    if report.overlays:
        print(f"overlays: {len(report.overlays)} PNGs in {out / 'overlays'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from .data.readers import CaseRecord, Volume, load_nifti
    from .eval.inference import predict_volume
    from .eval.report import write_overlay
    from .train.checkpoint import load_model
    from .train.loop import select_device

    dev = select_device(args.device)
    img, data = load_nifti(args.input)
    model, meta = load_model(args.checkpoint, dev)
    squeeze = data.ndim == 2
    vol = data[..., None] if squeeze else data
    if vol.ndim != 3 or vol.size == 0:
        raise DataError(f"{args.input}: expected a non-empty 2-D or 3-D image, got shape {tuple(data.shape)}")
    vol = vol.astype(np.float32)
    if not np.isfinite(vol).all():
        raise DataError(f"{args.input}: image contains NaN or infinite values")
    pred = predict_volume(model, vol, normalisation=meta["normalisation"], size=meta["size"], device=dev)
    values = meta.get("label_values")
    out_labels = np.asarray(values)[pred] if values else pred
    out_arr = (out_labels[..., 0] if squeeze else out_labels).astype(np.uint16 if values else np.uint8)
    header = img.header.copy()
    header.set_data_dtype(out_arr.dtype)
    header["scl_slope"], header["scl_inter"] = 1, 0
    out_img = nib.Nifti1Image(out_arr, img.affine, header)
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        out_path, out_img.to_bytes() if not out_path.name.endswith(".gz") else _gzip(out_img.to_bytes()), tag="predict"
    )
    counts = {meta["class_names"][c]: int((pred == c).sum()) for c in range(1, meta["num_classes"])}
    print(f"wrote {out_path} (shape {tuple(out_arr.shape)}, affine of {args.input}); voxels per class: {counts}")
    if args.overlay:
        png = (
            Path(args.overlay)
            if isinstance(args.overlay, str)
            else out_path.with_name(out_path.name.split(".")[0] + "_overlay.png")
        )
        zooms = img.header.get_zooms()
        spacing = tuple(float(z) for z in (list(zooms) + [1.0] * 3)[:3])
        v = Volume(CaseRecord(Path(args.input).name, "", args.input, None), vol, None, spacing, img.affine)
        write_overlay(v, pred, png, meta["class_names"])
        print(f"wrote overlay {png}")
    return 0


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        args.out,
        iterations=args.iterations,
        pretrain_iterations=args.pretrain_iterations,
        seed=args.seed,
        size=args.size,
        device=args.device,
        progress=not args.no_progress,
        overrides=args.overrides,
        labeled_patients=args.labeled_patients,
        overlays=args.overlay_volumes,
        overlay_slices=args.overlay_slices,
        tail=args.tail,
        methods=args.methods,
        jobs=args.jobs,
    )
    return 0


OVERLAY_SLICES = 3  # = mona.eval.report.OVERLAY_SLICES (not imported here: --help stays fast)
_DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default auto)"


def _add_overlay_args(p: argparse.ArgumentParser, volumes: str) -> None:
    """--overlay-volumes / --overlay-slices, shared by `evaluate` and `demo`."""
    p.add_argument("--overlay-volumes", type=int, default=None, metavar="N", help=f"overlays for the first N {volumes}")
    p.add_argument(
        "--overlay-slices",
        type=int,
        default=OVERLAY_SLICES,
        metavar="K",
        help=f"overlays: the K slices with the most ground-truth foreground per volume, one PNG each "
        f"(default {OVERLAY_SLICES})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mona",
        description="MONA semi-supervised medical image segmentation. Exit codes: 0 done, "
        "1 a data file / checkpoint / disk problem, 2 a usage error.",
    )
    parser.add_argument("--version", action="version", version=f"mona {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the Python traceback of an error"
    )
    p = sub.add_parser("info", parents=[common], help="versions, build configuration and registered ops")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(parser=p, handler=_cmd_info)

    p = sub.add_parser("synth", parents=[common], help="write synthetic cardiac-MR phantoms in the ACDC layout")
    p.add_argument(
        "out_dir",
        metavar="OUT_DIR",
        help="directory for the raw phantoms (patientXXX/ folders; created after the options are checked)",
    )
    p.add_argument("--train", type=int, default=8, help="train patients (default 8)")
    p.add_argument("--val", type=int, default=2, help="validation patients (default 2)")
    p.add_argument("--test", type=int, default=4, help="test patients (default 4)")
    p.add_argument(
        "--seed", type=int, default=0, help="phantom seed; the same seed writes the same phantoms (default 0)"
    )
    p.add_argument("--size-min", type=int, default=112, help="smallest in-plane size in pixels (default 112, >= 32)")
    p.add_argument("--size-max", type=int, default=144, help="largest in-plane size in pixels (default 144)")
    p.add_argument("--slices-min", type=int, default=5, help="fewest slices per volume (default 5)")
    p.add_argument("--slices-max", type=int, default=9, help="most slices per volume (default 9)")
    p.add_argument(
        "--tail",
        action="store_true",
        help="add a long-tail class 4 (PM): 1-3 small dark papillary-muscle-like blobs carved out of the LV "
        "next to the myocardium in the basal/mid slices, 1-2 %% of a slice's foreground pixels, their contrast "
        "to the blood pool drawn per patient (clear to faint); everything else as without --tail. "
        "Prepare with `mona prepare phantom` (5 classes); `mona prepare acdc` rejects label 4",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(parser=p, handler=_cmd_synth)

    p = sub.add_parser(
        "prepare", parents=[common], help="raw volumes -> normalised, resized, memory-mapped slice cache"
    )
    p.add_argument(
        "dataset",
        metavar="DATASET",
        choices=["acdc", "lits", "mmwhs", "folder", "phantom"],
        help="acdc | lits | mmwhs | folder (RAW/images + RAW/labels) | phantom (`mona synth --tail` output: "
        "ACDC layout and splits, classes background, RV, Myo, LV, PM)",
    )
    p.add_argument("raw_dir", metavar="RAW_DIR", help="the dataset's raw files, in the layout DATASET names")
    p.add_argument(
        "out_dir",
        metavar="OUT_DIR",
        help="the cache directory to write (created once the raw files and splits are checked; "
        "re-running completes or verifies it)",
    )
    p.add_argument("--size", type=int, default=256, help="slice size (default 256)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random patient split (folder, MMWHS-MR; LiTS/MMWHS-CT use the authors' lists)",
    )
    p.add_argument(
        "--splits",
        default=None,
        metavar="DIR",
        help="your own split lists: DIR/train.list, DIR/test.list, optional val.list and labeled.list "
        "(one patient id per line; labeled.list may also name CASE_slice_K)",
    )
    p.add_argument("--num-classes", type=int, default=None, help="folder layout: number of classes incl. background")
    p.add_argument(
        "--class-names",
        default=None,
        metavar="NAMES",
        help="folder layout: comma-separated class names incl. background, e.g. bg,liver,tumour "
        "(implies --num-classes)",
    )
    p.add_argument(
        "--modality", choices=["MR", "CT"], default="MR", help="folder layout: MR (min-max) or CT (HU window)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(parser=p, handler=_cmd_prepare)

    p = sub.add_parser(
        "train",
        parents=[common],
        help="train (supervised, supervised_strong, mean_teacher, glcon, mona, unimatch) from a YAML config with key=value overrides",
    )
    p.add_argument("--config", required=True, help="YAML file, or a packaged config name (acdc_supervised, demo)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. data.cache=runs/cache out_dir=runs/sup optim.lr=0.02 data.labeled_patients=3",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="continue exactly: from this last.pt, or (no value) wherever out_dir's stages stopped; "
        "the config must equal the checkpoint's except iterations, intervals, out_dir, device, "
        "threads (a KEY=VALUE right after it is an override, not a checkpoint)",
    )
    p.add_argument(
        "--resume-override",
        default=None,
        metavar="KEY[,KEY]",
        help="with --resume: config keys that may differ from the checkpoint's (e.g. optim.lr); "
        "without it a changed config is refused with the list of changes",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(parser=p, handler=_cmd_train)

    p = sub.add_parser(
        "evaluate", parents=[common], help="per-class Dice/ASD/HD95 of a checkpoint on a split of a prepared cache"
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="best.pt / last.pt / model.pt")
    p.add_argument("data", metavar="DATA", help="a prepared cache directory (mona prepare)")
    p.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="the cache split to evaluate (default test)"
    )
    p.add_argument("--out", default=None, help="report directory (default: next to the checkpoint, eval_SPLIT)")
    p.add_argument("--voxels", action="store_true", help="also report ASD/HD95 in voxels (no spacing)")
    p.add_argument(
        "--overlays",
        action="store_true",
        help="also write PNG overlays (image, ground truth, prediction, class legend) to OUT/overlays",
    )
    _add_overlay_args(p, "volumes of the split (default: every volume)")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(parser=p, handler=_cmd_evaluate)

    p = sub.add_parser(
        "predict", parents=[common], help="segment a NIfTI volume; writes a label volume with the input's affine"
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="best.pt / last.pt / model.pt of a training run")
    p.add_argument("input", metavar="IN.nii.gz", help="a 2-D or 3-D NIfTI image")
    p.add_argument(
        "output",
        metavar="OUT.nii.gz",
        help="the label volume to write (the input's affine; class indices, or the original label "
        "values of an MMWHS model)",
    )
    p.add_argument(
        "--overlay",
        nargs="?",
        const=True,
        default=None,
        metavar="PNG",
        help="also write a PNG overlay of the slice with the most predicted foreground, with a class "
        "legend (default: OUT_overlay.png)",
    )
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.set_defaults(parser=p, handler=_cmd_predict)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="phantoms, 1 labeled patient: supervised (weak / strong augmentation) vs GLCon + MONA, evaluated",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="training iterations of each method, the fine-tuning stage of GLCon + MONA and BCP "
        "(default 400: configs/demo.yaml, demo_mona.yaml)",
    )
    p.add_argument(
        "--pretrain-iterations",
        type=int,
        default=None,
        help="GLCon (BCP: copy-paste) pre-training iterations before the fine-tuning stage (default: 100 per 400)",
    )
    p.add_argument(
        "--methods",
        default="supervised,supervised_strong,mona",
        help="comma-separated methods to train and compare, any of supervised, supervised_strong, mean_teacher, "
        "mona, unimatch, bcp (default supervised,supervised_strong,mona)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="methods trained at once, each in its own process with one torch thread (default: on a CPU one "
        "per usable core, at most one per method; 1 on a GPU; 1: one after another in this process)",
    )
    p.add_argument("--labeled-patients", type=int, default=1, help="labeled train patients (default 1 of 8)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed")
    p.add_argument("--size", type=int, default=96, help="slice size of the prepared cache (default 96)")
    p.add_argument(
        "--tail",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="phantoms with the long-tail class PM (papillary muscles, 1-2 %% of the foreground; default on)",
    )
    _add_overlay_args(p, "test volumes (default: every test volume, 8)")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of every training config")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(parser=p, handler=_cmd_demo)
    return parser


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def _message(err: BaseException) -> str:
    """One line naming the file or key and the problem."""
    if isinstance(err, OSError) and not isinstance(err, (UsageError, DataError)):
        what = err.strerror or str(err)
        return f"{err.filename}: {what}" if err.filename else what
    return _one_line(str(err))


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``mona COMMAND: error: ...`` and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; exit codes: 0 success, 1 data / file / runtime error, 2 usage error (see mona.errors)."""
    import logging
    import os

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        # KEY=VALUE overrides after an option (`--no-progress out_dir=x`): argparse leaves them over
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if not ("=" in e and not e.startswith("-"))]
    if extra:  # reported by the command's parser: "mona train: error: unrecognized arguments: ..."
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="mona: %(message)s")
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    debug = getattr(args, "debug", False) or os.environ.get("MONA_DEBUG") == "1"
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"mona {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        if isinstance(err, UsageError):
            code = EXIT_USAGE
            text = _message(err)
        elif isinstance(err, (DataError, ValueError, OSError, RuntimeError)):
            code = EXIT_DATA
            text = _message(err)
        else:  # a bug: say so, without hiding it
            code = EXIT_DATA
            text = (
                f"unexpected {type(err).__name__}: {_one_line(str(err))} (a bug in mona: please report it; "
                f"--debug shows the traceback)"
            )
        print(f"mona {args.command}: error: {text}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
