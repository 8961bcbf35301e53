"""The ``mona`` command line. ``mona --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Callable, Sequence

from . import __version__

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
    print(f"{'extension':<{width}}built against torch {ext['torch_version']}, "
          f"CUDA kernels: {'yes (nvcc ' + ext['cuda_version'] + ', archs ' + ext['cuda_arch_list'] + ')' if ext['with_cuda'] else 'no'}")
    for name, keys in ext["ops"].items():
        print(f"  torch.ops.mona.{name:<24} kernels: {', '.join(keys) or 'none'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mona", description="MONA semi-supervised medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"mona {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="versions, build configuration and registered ops")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
