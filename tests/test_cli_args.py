"""Every number of the command line checked at the door, resuming with the same command, and
one line (never a traceback) for a bfloat16 checkpoint, an absurd T, and Ctrl-C."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minigen import checkpoint, cli_args
from minigen.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "a red circle above a blue square"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)


# ----------------------------------------------------------------------------- numbers

COMMANDS = {
    "train-gpt": ["train-gpt"],
    "generate": ["generate"],
    "fewshot": ["fewshot", "--model", "icl-gpt"],
    "train-icl": ["train-icl"],
    "eval-icl": ["eval-icl"],
    "pretrain": ["rlhf", "pretrain"],
    "all": ["rlhf", "all"],
    "ppo": ["rlhf", "ppo"],
    "train-diffusion": ["train-diffusion"],
    "sample-diffusion": ["sample-diffusion"],
    "text2im": ["text2im", CAPTION],
    "train-text2im": ["train-text2im"],
    "demo": ["demo"],
}

# (command, flag, bad values): each refused by argparse in a line naming the flag
REFUSED = [
    ("train-gpt", "--vocab-size", ["256", "0", "1e3"]),
    ("train-gpt", "--n-layer", ["0", "-1"]),
    ("train-gpt", "--n-head", ["0"]),
    ("train-gpt", "--n-embd", ["0", "2.5"]),
    ("train-gpt", "--block-size", ["0"]),
    ("train-gpt", "--dropout", ["1", "-0.1", "nan"]),
    ("train-gpt", "--max-iters", ["0", "-5"]),
    ("train-gpt", "--batch-size", ["0"]),
    ("train-gpt", "--learning-rate", ["0", "-1e-3", "nan", "inf"]),
    ("train-gpt", "--min-lr", ["-1", "nan"]),
    ("train-gpt", "--warmup-iters", ["-1"]),
    ("train-gpt", "--lr-decay-iters", ["0"]),
    ("train-gpt", "--weight-decay", ["-0.1", "inf"]),
    ("train-gpt", "--beta2", ["1", "-0.5", "nan"]),
    ("train-gpt", "--grad-clip", ["-1", "nan", "inf"]),
    ("train-gpt", "--eval-interval", ["-1"]),
    ("train-gpt", "--eval-iters", ["0"]),
    ("train-gpt", "--checkpoint-interval", ["-1"]),
    ("train-gpt", "--seed", ["-1", "1.5"]),
    ("train-gpt", "--shards", ["0"]),
    ("train-gpt", "--workers", ["0"]),
    ("train-gpt", "--sample", ["-1"]),
    ("generate", "--max-new-tokens", ["0"]),
    ("generate", "--temperature", ["nan", "-1", "inf", "-inf"]),
    ("generate", "--top-k", ["0"]),
    ("generate", "--top-p", ["0", "1.5", "nan"]),
    ("generate", "--num-samples", ["0"]),
    ("generate", "--seed", ["-1"]),
    ("fewshot", "--max-new-tokens", ["0"]),
    ("train-icl", "--max-iters", ["0"]),
    ("train-icl", "--seed", ["-3"]),
    ("eval-icl", "--episodes", ["0", "-1"]),
    ("pretrain", "--seed", ["-1"]),
    ("all", "--seed", ["-1"]),
    ("all", "--jobs", ["3", "0"]),
    ("ppo", "--beta", ["-0.1", "nan", "inf"]),
    ("ppo", "--iters", ["0"]),
    ("train-diffusion", "--steps", ["0"]),
    ("train-diffusion", "--batch-size", ["0"]),
    ("train-diffusion", "--lr", ["0", "nan"]),
    ("train-diffusion", "--ema-decay", ["1", "nan"]),
    ("train-diffusion", "--timesteps", ["0", "100001", "10000000000"]),
    ("train-diffusion", "--hidden", ["0"]),
    ("train-diffusion", "--depth", ["0"]),
    ("train-diffusion", "--channels", ["0"]),
    ("train-diffusion", "--seed", ["-1"]),
    ("sample-diffusion", "--steps", ["0"]),
    ("sample-diffusion", "--eta", ["-0.1", "1.5", "nan"]),
    ("sample-diffusion", "--n", ["0"]),
    ("sample-diffusion", "--image-size", ["0"]),
    ("sample-diffusion", "--seed", ["-1"]),
    ("sample-diffusion", "--rows", ["1"]),
    ("sample-diffusion", "--columns", ["0"]),
    ("text2im", "--scale", ["nan", "-1", "inf"]),
    ("text2im", "--steps", ["0"]),
    ("text2im", "--seed", ["-1"]),
    ("text2im", "--n", ["0"]),
    ("text2im", "--image-size", ["0"]),
    ("train-text2im", "--steps", ["0"]),
    ("train-text2im", "--batch-size", ["0"]),
    ("train-text2im", "--lr", ["0", "inf"]),
    ("train-text2im", "--channels", ["0"]),
    ("train-text2im", "--mults", ["1,0", "a", "1,,2", ""]),
    ("train-text2im", "--ema-decay", ["1"]),
    ("train-text2im", "--snr-gamma", ["0", "nan"]),
    ("train-text2im", "--p-uncond", ["1.5", "-0.1", "nan"]),
    ("train-text2im", "--cell-weight", ["-1", "nan"]),
    ("train-text2im", "--heads", ["0"]),
    ("train-text2im", "--attn-levels", ["-1", "x", "1,"]),
    ("train-text2im", "--shards", ["0"]),
    ("train-text2im", "--workers", ["0"]),
    ("train-text2im", "--n-train", ["0"]),
    ("train-text2im", "--seed", ["-1"]),
    ("demo", "--seed", ["-1"]),
]
CASES = [(c, flag, bad) for c, flag, values in REFUSED for bad in values]


@pytest.mark.parametrize(("command", "flag", "bad"), CASES, ids=lambda x: str(x))
def test_a_bad_number_is_refused_at_the_door_naming_its_flag(command, flag, bad, capsys):
    with pytest.raises(SystemExit) as e:
        main([*COMMANDS[command], f"{flag}={bad}"])  # --flag=-1: a value, not a flag
    assert e.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert f"error: argument {flag}: " in lines[-1], lines
    assert repr(bad) in lines[-1] or "invalid choice" in lines[-1], lines


def _numeric_actions():
    """(command, action) for every flag of every sub-command that reads a number."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        parsers = {name: parser}
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):  # rlhf STAGE
                parsers = {f"{name} {s}": p for s, p in a.choices.items()}
        for full, p in parsers.items():
            for a in p._actions:
                if a.type is not None or isinstance(a.default, int | float):
                    if not isinstance(a.default, bool):
                        yield full, a


def test_every_numeric_flag_reads_through_cli_args():
    actions = list(_numeric_actions())
    assert len(actions) > 60
    for command, a in actions:
        if a.choices is not None:  # rlhf all --jobs: int in (1, 2)
            assert a.type is int, (command, a.option_strings)
            continue
        assert getattr(a.type, "__module__", None) == cli_args.__name__, (
            f"{command} {a.option_strings}: type {a.type!r} is not a minigen.cli_args check"
        )


def test_no_command_replaces_a_number_by_its_default_with_or():
    import minigen.demo
    import minigen.diffusion.commands
    import minigen.rlhf.commands
    import minigen.synthesis.commands
    import minigen.text.commands
    import minigen.text.fewshot.commands

    modules = [minigen.demo, minigen.diffusion.commands, minigen.rlhf.commands,
               minigen.synthesis.commands, minigen.text.commands, minigen.text.fewshot.commands]  # fmt: skip
    sources = "".join(inspect.getsource(m) for m in modules)
    for command, a in _numeric_actions():
        assert f"args.{a.dest} or " not in sources, (command, a.dest)
    assert "steps = steps or" not in sources


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train-gpt", "--sample", "0", "--checkpoint-interval", "0", "--eval-interval", "0",
          "--warmup-iters", "0", "--grad-clip", "0", "--min-lr", "0", "--weight-decay", "0",
          "--dropout", "0", "--beta2", "0", "--seed", "0", "--vocab-size", "257"],
         {"sample": 0, "checkpoint_interval": 0, "eval_interval": 0, "grad_clip": 0.0,
          "dropout": 0.0, "seed": 0, "vocab_size": 257}),
        (["train-gpt", "--learning-rate", "1e-3", "--dropout", "0.999", "--beta2", "0.99"],
         {"learning_rate": 1e-3, "dropout": 0.999}),
        (["generate", "--temperature", "0", "--top-p", "1", "--top-k", "1", "--seed", "0"],
         {"temperature": 0.0, "top_p": 1.0, "top_k": 1}),
        (["generate", "--top-p", "1e-9", "--max-new-tokens", "1"], {"top_p": 1e-9}),
        (["eval-icl", "--episodes", "1"], {"episodes": 1}),
        (["rlhf", "ppo", "--beta", "0", "--iters", "1"], {"beta": 0.0, "iters": 1}),
        (["rlhf", "all", "--seed", "0", "--jobs", "1"], {"seed": 0, "jobs": 1}),
        (["train-diffusion", "--timesteps", "100000", "--ema-decay", "0"],
         {"timesteps": 100_000, "ema_decay": 0.0}),
        (["train-diffusion", "--timesteps", "1", "--hidden", "1", "--depth", "1"],
         {"timesteps": 1, "hidden": 1}),
        (["sample-diffusion", "--eta", "0", "--rows", "2"], {"eta": 0.0, "rows": 2}),
        (["sample-diffusion", "--eta", "1", "--columns", "1"], {"eta": 1.0, "columns": 1}),
        (["text2im", CAPTION, "--scale", "0", "--n", "1"], {"scale": 0.0, "n": 1}),
        (["train-text2im", "--p-uncond", "0", "--cell-weight", "0", "--attn-levels", ""],
         {"p_uncond": 0.0, "cell_weight": 0.0, "attn_levels": ""}),
        (["train-text2im", "--p-uncond", "1", "--attn-levels", "0", "--mults", "1,2"],
         {"p_uncond": 1.0, "attn_levels": "0", "mults": "1,2"}),
        (["demo", "--seed", "0"], {"seed": 0}),
    ],
)  # fmt: skip
def test_good_edge_values_still_parse(argv, expected):
    args = build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected


def test_the_helpers_say_what_they_want():
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be a finite number > 0, got 'nan'"):
        cli_args.positive_float("nan")
    with pytest.raises(argparse.ArgumentTypeError, match="non-negative integer"):
        cli_args.seed("-1")
    with pytest.raises(argparse.ArgumentTypeError, match=r"in 1 \.\. 100,000"):
        cli_args.int_range(1, 100_000)("100001")
    assert cli_args.finite_float("-2.5") == -2.5
    assert cli_args.int_list(0, empty_ok=True)(" ") == " "


# ----------------------------------------------------------------------------- resume

TEXT = "the cat sat on the mat. the dog sat on the log. " * 40
GPT = ["--corpus", "corpus.txt", "--out", "gpt", "--max-iters", "2", "--eval-iters", "1",
       "--eval-interval", "0", "--sample", "0", "--n-layer", "1", "--n-head", "2", "--n-embd",
       "16", "--block-size", "16", "--batch-size", "4", "--tokenizer", "char", "--preset",
       "small", "--learning-rate", "1e-3", "--seed", "7"]  # fmt: skip


def test_resume_takes_the_same_command_and_names_what_differs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(TEXT)
    assert main(["train-gpt", *GPT]) == 0
    assert json.loads((tmp_path / "gpt" / "config.json").read_text())["meta"]["preset"] == "small"
    # the same command, with --max-iters raised (the last one wins) and other workers
    assert main(["train-gpt", *GPT, "--resume", "--max-iters", "3", "--workers", "1"]) == 0
    assert json.loads((tmp_path / "gpt" / "trainer_state.json").read_text())["step"] == 3
    capsys.readouterr()
    changed = [*GPT, "--resume", "--max-iters", "4", "--batch-size", "8", "--seed", "8",
               "--learning-rate", "2e-3", "--tokenizer", "bpe", "--preset", "gpt2", "--no-bias"]  # fmt: skip
    assert main(["train-gpt", *changed]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigen: error:"), err
    for part in ("only --max-iters", "--batch-size 8 (the checkpoint has 4)",
                 "--seed 8 (the checkpoint has 7)", "--learning-rate 0.002 (the checkpoint has 0.001)",
                 "--tokenizer bpe (the checkpoint has char)", "--preset gpt2 (the checkpoint has small)",
                 "--no-bias (the checkpoint has biases)"):  # fmt: skip
        assert part in err[0], err[0]
    assert "--max-iters 4" not in err[0]
    assert json.loads((tmp_path / "gpt" / "trainer_state.json").read_text())["step"] == 3


# ----------------------------------------------------------------------------- bfloat16


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    return (np.asarray(values, np.float32).view(np.uint32) >> 16).astype("<u2")


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple, bytes]]) -> Path:
    """A safetensors file written by hand: header length, JSON header, data."""
    header, data = {"__metadata__": {"format": "minigen", "config": '{"a": 1}'}}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}  # fmt: skip
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_a_bfloat16_checkpoint_loads_as_float32_without_torch(tmp_path):
    w = np.array([[1.0, -2.5, 0.15625], [2.0**127, -0.0, 2.0**-100]], np.float32)  # bf16-exact
    b = np.arange(3, dtype=np.float32)
    path = _write_safetensors(tmp_path / "bf16.safetensors", {
        "w": ("BF16", w.shape, _bf16_bits(w).tobytes()),
        "b": ("F32", b.shape, b.tobytes()),
        "s": ("BF16", (), _bf16_bits(np.float32(7.0)).tobytes()),
    })  # fmt: skip
    arrays, config = checkpoint.load(path)
    assert config == {"a": 1}
    assert arrays["w"].dtype == np.float32 and np.array_equal(arrays["w"], w)
    assert np.array_equal(arrays["b"], b) and arrays["s"].shape == () and arrays["s"] == 7.0


def test_a_tensor_numpy_cannot_hold_is_refused_naming_it(tmp_path):
    path = _write_safetensors(tmp_path / "f8.safetensors", {"q": ("F8_E4M3", (4,), bytes(4))})
    with pytest.raises(checkpoint.CheckpointError, match=r"f8\.safetensors: tensor 'q' has dtype F8_E4M3"):  # fmt: skip
        checkpoint.load(path)


def test_a_bfloat16_checkpoint_written_by_torch_loads_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    w = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    path = tmp_path / "torch_bf16.safetensors"
    st.save_file({"w": w, "f": torch.ones(2)}, str(path), metadata={"config": "{}"})
    arrays, _ = checkpoint.load(path)
    assert arrays["w"].dtype == np.float32
    assert np.array_equal(arrays["w"], w.float().numpy())
    assert np.array_equal(arrays["f"], np.ones(2, np.float32))


# ----------------------------------------------------------------------------- absurd sizes


def test_a_checkpoint_with_an_absurd_T_is_refused_in_one_line(tmp_path, capsys):
    arrays, config = checkpoint.load(
        ROOT / "minigen" / "assets" / "diffusion_swissroll.safetensors"
    )
    config["schedule"]["num_train_timesteps"] = 10**10  # 74 GiB of betas
    bad = checkpoint.save(tmp_path / "bigT.safetensors", arrays, config)
    out = tmp_path / "s.png"
    assert main(["sample-diffusion", "--checkpoint", str(bad), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "T must be an integer in 1 .. 100,000" in err[0], err
    assert not out.exists()


def test_memory_errors_are_one_line(monkeypatch, capsys):
    import minigen.text.fewshot.commands as fc

    def hungry(args):
        raise MemoryError("Unable to allocate 74.5 GiB for an array")

    monkeypatch.setattr(fc, "eval_icl_cmd", hungry)  # what `eval-icl` runs
    assert main(["eval-icl"]) == 1
    assert capsys.readouterr().err == (
        "minigen: error: out of memory (Unable to allocate 74.5 GiB for an array)\n"
    )


# ----------------------------------------------------------------------------- Ctrl-C


def _interrupt(argv: list[str], marker: str, delay: float, cwd: Path) -> tuple[int, str]:
    """Run the CLI in a process group of its own, wait for `marker` on its output, then send
    SIGINT to the whole group (what a terminal's Ctrl-C does); its exit status and stderr."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    env.pop("MINIGEN_DEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "minigen.cli", *argv], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    seen, start = "", time.monotonic()
    try:
        while marker not in seen:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"{argv} ended before {marker!r}:\n{seen}")
            seen += line
            assert time.monotonic() - start < 60, seen
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, seen + rest


needs_posix = pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")


@needs_posix
@pytest.mark.parametrize("delay", [0.2, 0.8])  # the DPO lane starting, then training
def test_ctrl_c_during_rlhf_all_with_its_dpo_lane_is_one_line(tmp_path, delay):
    argv = ["rlhf", "all", "--fast", "--out", str(tmp_path / "run")]
    code, out = _interrupt(argv, "comparisons in", delay, tmp_path)
    assert code == 130, out
    assert "minigen: interrupted" in out and "Traceback" not in out, out
    assert out.count("minigen: interrupted") == 1


@needs_posix
def test_ctrl_c_during_sharded_training_is_one_line(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    argv = ["train-gpt", "--corpus", "corpus.txt", "--max-iters", "100000", "--shards", "2",
            "--workers", "2", "--sample", "0", "--batch-size", "4", "--n-layer", "1",
            "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--eval-interval", "0",
            "--eval-iters", "1", "--dropout", "0"]  # fmt: skip
    code, out = _interrupt(argv, "GPT of", 1.0, tmp_path)  # the workers started
    assert code == 130, out
    assert "minigen: interrupted" in out and "Traceback" not in out, out


def _run_command(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    """`minigen.cli.main` running a command whose body is `body` (Python, indented 4), as
    `python -m` runs it."""
    script = tmp_path / "command.py"
    script.write_text(
        "import argparse, ctypes, os, signal, sys, time\n"
        "import minigen.cli as cli\n"
        "def command(args):\n"
        f"{body}"
        "    print('ran on')\n"
        "class Parser:\n"
        "    def parse_args(self, argv):\n"
        "        return argparse.Namespace(func=command)\n"
        "cli.build_parser = Parser\n"
        "sys.exit(cli.main([]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "command"], capture_output=True, text=True, env=env, cwd=tmp_path
    )


def test_an_interrupt_where_python_ignores_exceptions_is_raised_again(tmp_path):
    """A KeyboardInterrupt inside a ctypes callback (Numba's compiler calls some) is printed
    and dropped by Python; the CLI raises it again."""
    out = _run_command(
        tmp_path,
        "    def hit():\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(0.01)\n"
        "    ctypes.CFUNCTYPE(None)(hit)()\n"
        "    start = time.monotonic()\n"
        "    while time.monotonic() - start < 5:\n"
        "        pass\n",
    )
    assert out.returncode == 130, out
    assert out.stderr == "minigen: interrupted\n" and "ran on" not in out.stdout


def test_an_interrupt_through_exec_of_a_string_still_exits_130(tmp_path):
    """CPython marks an interrupt that leaves exec(<string>) (SciPy's imports run some) to
    kill the process with SIGINT at exit, even once caught: the CLI clears the mark."""
    out = _run_command(tmp_path, "    exec('raise KeyboardInterrupt')\n")
    assert out.returncode == 130, out
    assert out.stderr == "minigen: interrupted\n"


# ----------------------------------------------------------------------------- Lane


def _square(x: int) -> int:
    return x * x


def _fail(message: str) -> None:
    raise ValueError(message)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_a_lane_returns_its_value_and_raises_its_error_here():
    from minigen.lane import Lane

    with Lane(_square, 7) as lane:
        assert lane.result() == 49
    with Lane(_fail, "no comparisons") as lane, pytest.raises(ValueError, match="no comparisons"):
        lane.result()


def test_closing_a_lane_stops_it_at_once():
    from minigen.lane import Lane

    start = time.monotonic()
    with Lane(_sleep, 60) as lane:
        pass
    assert time.monotonic() - start < 20 and not lane._proc.is_alive()
    assert lane._proc.exitcode is not None
