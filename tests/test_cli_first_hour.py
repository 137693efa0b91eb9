"""The first hour of a new user: a GPT ships, so `minigen generate --prompt "ROMEO:"` works at
once; every shipped GPT answers to its short name in every command that reads one; what the
commands print is what the README says; help texts print values; unknown words are answered
with the known ones a typo away."""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from minigen import no_grad
from minigen.cli import build_parser, main
from minigen.text import load_gpt
from minigen.text.gpt_io import SHIPPED, resolve_gpt

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "minigen" / "assets" / "shakespeare-char"

# tiny Shakespeare's first lines (public domain): a trained character model reads them at
# under 2 nats per character; uniform over its 65 characters is ln 65 = 4.17
PASSAGE = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.
"""


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "minigen.cli", *args], capture_output=True, text=True, cwd=cwd
    )


# ----------------------------------------------------------------------------- the shipped GPT
def test_generate_works_at_once_in_an_empty_folder(tmp_path):
    """No checkpoint anywhere near: the default is the shipped character-level Shakespeare."""
    out = run_cli("generate", "--prompt", "ROMEO:", "--max-new-tokens", "80", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ROMEO:") and len(out.stdout.strip()) > 60
    _, tokenizer, _ = load_gpt("shakespeare-char")
    assert set(out.stdout) <= set(tokenizer.chars)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_shipped_gpt_is_small_half_precision_and_trained():
    files = sorted(p.name for p in SHAKESPEARE.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sum(p.stat().st_size for p in SHAKESPEARE.iterdir()) <= 2_000_000
    with safe_open(str(SHAKESPEARE / "model.safetensors"), framework="numpy") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {np.dtype(np.float16)}  # noqa: SIM118
    model, tokenizer, ck = load_gpt("shakespeare-char")
    assert ck.meta["corpus"] == "shakespeare" and ck.meta["stored_dtype"] == "float16"
    ids = np.asarray(tokenizer.encode(PASSAGE))
    with no_grad():
        loss = model.loss(ids[None, :-1][:, :64], ids[None, 1:][:, :64]).item()
    assert loss < 2.2, f"{loss:.3f} nats per character: not the trained weights"


def test_setup_py_ships_the_gpt_in_the_package_data():
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    data = next(
        ast.literal_eval(k.value) for k in ast.walk(tree)
        if isinstance(k, ast.keyword) and k.arg == "package_data"
    )  # fmt: skip
    for p in SHAKESPEARE.iterdir():
        rel = p.relative_to(ROOT / "minigen").as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in data["minigen"]), f"{rel} is not packaged"


# ----------------------------------------------------------------------------- short names
@pytest.mark.parametrize("name", list(SHIPPED))
def test_every_shipped_gpt_answers_to_its_name_in_generate_and_fewshot(name, capsys):
    prompt = "I: a, O: 3, I: a, O:" if name == "icl-gpt" else "ROMEO:"
    assert main(["generate", "--ckpt", name, "--prompt", prompt, "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith(prompt)
    assert main(["fewshot", "--model", name, "--demo", "a", "3", "--query", "a"]) == 0
    assert "I: a, O: 3, I: a, O:" in capsys.readouterr().out


def test_eval_icl_takes_the_shipped_name_and_refuses_a_model_that_is_no_icl_one(capsys):
    assert main(["eval-icl", "--ckpt", "icl-gpt", "--episodes", "20"]) == 0
    assert main(["eval-icl", "--ckpt", "shakespeare-char", "--episodes", "20"]) == 1
    assert "not a train-icl checkpoint" in capsys.readouterr().err


def test_a_folder_of_the_same_name_comes_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_gpt("icl-gpt") == SHIPPED_DIR("icl-gpt")
    (tmp_path / "icl-gpt").mkdir()
    assert resolve_gpt("icl-gpt") == Path("icl-gpt")
    assert resolve_gpt("elsewhere") == Path("elsewhere")


def SHIPPED_DIR(name: str) -> Path:
    return ROOT / "minigen" / "assets" / SHIPPED[name]


def test_an_unknown_checkpoint_names_the_shipped_ones(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--ckpt", "shakespear"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shakespeare-char, icl-gpt" in err


def test_a_prompt_in_the_wrong_format_is_answered_with_the_right_piece(capsys):
    assert main(["generate", "--ckpt", "icl-gpt", "--prompt", "I: a O: 3"]) == 1
    err = capsys.readouterr().err
    assert "did you mean 'I: a, O:'?" in err and "' 9, '" in err


# ----------------------------------------------------------------------------- README vs commands
def _readme_icl_rows() -> dict[str, list[float]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Few-shot prediction") :]
    rows = re.findall(r"^\| (\d-way[^|]*)\|((?: [\d.]+ \|){9})", section, re.M)
    return {label.strip(): [float(v) for v in vals.split("|")[:-1]] for label, vals in rows}


def test_eval_icl_prints_the_readme_table_by_default(capsys):
    """The README's accuracies are eval-icl's default run: 1,000 mappings, the ranked rows and
    the ideal reader's."""
    from minigen.text.fewshot.icl import ICLTask, shot_accuracy

    assert build_parser().parse_args(["eval-icl"]).episodes == 1000
    assert "1,000 held-out mappings" in (ROOT / "README.md").read_text(encoding="utf-8")
    model, _, _ = load_gpt("icl-gpt")
    got = {n: shot_accuracy(model, ICLTask(), n, 1000) for n in (2, 4)}
    rows = _readme_icl_rows()
    assert rows, "the README's in-context learning table was not found"
    for label, values in rows.items():
        acc = got[int(label[0])]
        row = acc.ideal if "reader" in label else acc.ranked
        assert values == [float(f"{v:.2f}") for v in row], label  # as eval-icl prints them


def test_eval_icl_names_its_rows_and_what_they_mean(capsys):
    assert main(["eval-icl", "--episodes", "20"]) == 0
    out = capsys.readouterr().out
    assert "20 held-out mappings" in out and "ideal reader: knows each label seen" in out
    for n in (2, 3, 4):
        for row in ("ranked", "greedy", "ideal reader"):
            assert re.search(rf"^{n}-way {row} +0\.\d\d", out, re.M), (n, row)
