"""--backend on every training command: auto picks numba where it runs, the choice is said once
at the start on stdout (stderr keeps one line for an error), an explicit one wins, and the backend before the command is back after it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from minigen import backend
from minigen.cli import TRAINING_COMMANDS, build_parser, main

HAS_NUMBA = backend.why_unavailable("numba") is None


def _without_env(**env: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k != "MINIGEN_BACKEND"}
    return environ | env


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_every_training_command_takes_backend(command):
    parser = build_parser()
    # a command's own required arguments do not matter here: --help lists the flag
    sub = next(a for a in parser._actions if isinstance(a.choices, dict))
    help_text = sub.choices[command].format_help()
    assert "--backend {auto,numpy,numba,cupy}" in help_text


def test_resolve_auto_follows_the_environment_then_the_measured_rule(monkeypatch):
    monkeypatch.setenv("MINIGEN_BACKEND", "numpy")
    assert backend.resolve("auto") == backend.current()
    monkeypatch.delenv("MINIGEN_BACKEND")
    assert backend.resolve("auto") == ("numba" if HAS_NUMBA else "numpy")
    assert backend.resolve("numpy") == "numpy"
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        backend.resolve("gpu")


def test_a_bad_backend_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train-diffusion", "--backend", "gpu"])
    assert e.value.code == 2
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_train_command_says_its_backend_once_and_restores_the_previous(tmp_path, capsys):
    assert backend.current() == "numpy"
    out = tmp_path / "moons.safetensors"
    args = ["train-diffusion", "--data", "moons", "--steps", "3", "--out", str(out)]
    assert main([*args, "--backend", "numba"]) == 0
    said = capsys.readouterr()
    assert said.out.count("minigen: backend numba") == 1, said  # on stdout: stderr is for errors
    assert "minigen: backend" not in said.err
    assert backend.current() == "numpy"  # the command's backend ended with it
    assert out.exists()
    # --quiet: not a word of it
    assert main([*args, "--backend", "numba", "--quiet", "--force"]) == 0
    assert "minigen: backend" not in capsys.readouterr().out


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_auto_without_the_environment_runs_numba(tmp_path):
    # a fresh process with MINIGEN_BACKEND unset: the default a user gets
    out = tmp_path / "moons.safetensors"
    cmd = [sys.executable, "-m", "minigen.cli", "train-diffusion", "--data", "moons",
           "--steps", "3", "--out", str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, env=_without_env(), timeout=600)
    assert run.returncode == 0, run.stderr
    assert "minigen: backend numba" in run.stdout and "(auto)" in run.stdout, run.stdout
    # and the environment's choice, when set, is what auto keeps
    cmd.append("--force")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env=_without_env(MINIGEN_BACKEND="numpy"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "minigen: backend numpy" in run.stdout, run.stdout
