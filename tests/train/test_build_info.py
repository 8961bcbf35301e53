"""build_info(): the arch list the kernels were built for, the archs it names and whether PTX is embedded."""

from __future__ import annotations

import argparse
import json

import pytest

import mona_ext
from mona_ext._loader import parse_arch_list


@pytest.mark.parametrize(
    ("arch_list", "expected"),
    [
        ("", ([], False)),
        ("   ", ([], False)),
        ("8.6", (["8.6"], False)),
        ("7.5;8.6+PTX", (["7.5", "8.6"], True)),
        ("7.5;8.0;8.6;8.9;9.0+PTX", (["7.5", "8.0", "8.6", "8.9", "9.0"], True)),
        ("7.5;8.0;8.6;8.9;9.0", (["7.5", "8.0", "8.6", "8.9", "9.0"], False)),
        ("7.5 8.6", (["7.5", "8.6"], False)),  # torch accepts spaces
        ("7.5, 8.6+PTX", (["7.5", "8.6"], True)),
        (" 8.6 ; 9.0+PTX ;", (["8.6", "9.0"], True)),  # stray separators and spaces
        ("8.6+PTX;9.0", (["8.6", "9.0"], True)),  # PTX on any entry, not only the last
        ("8.6;8.6+PTX", (["8.6"], True)),  # no duplicates
        ("9.0a;10.0", (["9.0a", "10.0"], False)),  # arch-specific variants are kept verbatim
        ("Ampere", (["8.0", "8.6"], True)),  # torch's named archs: Ampere = 8.0;8.6+PTX
        ("Ampere+Tegra;Hopper", (["8.7", "9.0"], True)),
        ("native", (["native"], True)),
    ],
)
def test_parse_arch_list(arch_list, expected):
    assert parse_arch_list(arch_list) == expected


def test_default_arch_list_embeds_ptx():
    """setup.py's default: machine code for Turing..Hopper and PTX for GPUs newer than 9.0."""
    import ast
    from pathlib import Path

    setup_py = Path(__file__).resolve().parents[2] / "setup.py"
    if not setup_py.exists():
        pytest.skip("not a source checkout")
    tree = ast.parse(setup_py.read_text())
    default = next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEFAULT_ARCH_LIST" for t in node.targets)
    )
    archs, ptx = parse_arch_list(default)
    assert ptx and default.endswith("+PTX")
    assert archs == ["7.5", "8.0", "8.6", "8.9", "9.0"]


def test_build_info_reports_archs_consistently():
    info = mona_ext.build_info()
    for key in ("with_cuda", "cuda_arch_list", "cuda_archs", "ptx"):
        assert key in info
    assert isinstance(info["cuda_arch_list"], str)
    assert isinstance(info["cuda_archs"], list) and all(isinstance(a, str) for a in info["cuda_archs"])
    assert isinstance(info["ptx"], bool)
    assert (info["cuda_archs"], info["ptx"]) == parse_arch_list(info["cuda_arch_list"])
    if info["with_cuda"]:
        assert info["cuda_archs"], "a CUDA build must name the archs it was compiled for"
    else:
        assert info["cuda_arch_list"] == "" and info["cuda_archs"] == [] and info["ptx"] is False
    json.dumps(info)  # `mona info --json` prints it


def _info_output(monkeypatch, capsys, fake: dict | None, as_json: bool = False) -> str:
    from mona import cli

    if fake is not None:
        monkeypatch.setattr(mona_ext, "build_info", lambda: fake)
    assert cli._cmd_info(argparse.Namespace(json=as_json)) == 0
    return capsys.readouterr().out


def test_mona_info_shows_archs_and_ptx(monkeypatch, capsys):
    fake = dict(
        mona_ext.build_info(),
        with_cuda=True,
        cuda_version="13.0.88",
        cuda_arch_list="8.6;9.0+PTX",
        cuda_archs=["8.6", "9.0"],
        ptx=True,
    )
    out = _info_output(monkeypatch, capsys, fake)
    line = next(line for line in out.splitlines() if line.startswith("extension"))
    assert "archs 8.6 9.0" in line and "PTX yes" in line and "TORCH_CUDA_ARCH_LIST=8.6;9.0+PTX" in line
    fake.update(cuda_arch_list="8.6", cuda_archs=["8.6"], ptx=False)
    out = _info_output(monkeypatch, capsys, fake)
    assert "archs 8.6, PTX no" in out
    out = _info_output(monkeypatch, capsys, fake, as_json=True)
    ext = json.loads(out)["extension"]
    assert ext["cuda_archs"] == ["8.6"] and ext["ptx"] is False


def test_mona_info_real_build(capsys, monkeypatch):
    out = _info_output(monkeypatch, capsys, None)
    info = mona_ext.build_info()
    line = next(line for line in out.splitlines() if line.startswith("extension"))
    if info["with_cuda"]:
        assert f"PTX {'yes' if info['ptx'] else 'no'}" in line
    else:
        assert line.endswith("CUDA kernels: no")
