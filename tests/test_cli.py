"""The command line: help texts, the demo, and errors that exit non-zero."""

from __future__ import annotations

import subprocess
import sys

import pytest

from minigen.cli import build_parser, main


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "minigen.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def test_help_lists_and_explains_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert name in out.stdout
        assert parser.description, f"{name} has no description for --help"


def test_no_command_and_unknown_command_exit_non_zero():
    assert run_cli().returncode != 0
    out = run_cli("frobnicate")
    assert out.returncode != 0 and "invalid choice" in out.stderr


def test_demo_fast_writes_its_figure(tmp_path):
    out = run_cli("demo", "--fast", "--out", str(tmp_path / "demo"))
    assert out.returncode == 0, out.stderr
    png = tmp_path / "demo" / "mlp_spirals.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test accuracy" in out.stdout


def test_errors_are_one_line_and_exit_one(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    assert main(["demo", "--fast", "--out", str(blocker / "sub")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigen: error:")


def test_version():
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
