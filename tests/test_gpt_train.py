"""Training: batches, resuming, checkpoints and the two commands, with their bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigen.checkpoint import CheckpointError
from minigen.cli import main
from minigen.text import CharTokenizer, train_val_split
from minigen.text.gpt import GPTConfig
from minigen.text.gpt_io import load_checkpoint, load_gpt
from minigen.text.train import TrainConfig, Trainer, get_batch

TEXT = "the cat sat on the mat. the dog sat on the log. " * 40
TOK = CharTokenizer.from_text(TEXT)
CONFIG = GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)
TRAIN = TrainConfig(
    max_iters=8, batch_size=4, learning_rate=1e-2, min_lr=1e-3, warmup_iters=2,
    eval_interval=3, eval_iters=2, checkpoint_interval=4, seed=7,
)  # fmt: skip


def splits(text: str = TEXT) -> tuple[np.ndarray, np.ndarray]:
    return train_val_split(np.array(TOK.encode(text)))


def trainer(out=None, **changes) -> Trainer:
    tc = TrainConfig(**{**TRAIN.__dict__, **changes})
    return Trainer(CONFIG, tc, TOK, *splits(), out_dir=out)


@given(n=st.integers(3, 50), B=st.integers(1, 4), T=st.integers(1, 8), seed=st.integers(0, 9))
def test_targets_are_the_inputs_shifted_by_one(n, B, T, seed):
    data = np.arange(100, 100 + n + T)
    x, y = get_batch(data, B, T, np.random.default_rng(seed))
    assert x.shape == y.shape == (B, T)
    np.testing.assert_array_equal(y, x + 1)  # consecutive ids: y_t = x_{t+1}
    assert y.max() <= data[-1]


def test_one_seed_fixes_the_losses():
    a, b, c = trainer().run(False), trainer().run(False), trainer(seed=8).run(False)
    assert a == b
    assert a["loss"] != c["loss"]


def test_the_loss_goes_down():
    h = trainer(max_iters=40, eval_interval=0).run(False)
    assert np.mean(h["loss"][-5:]) < np.mean(h["loss"][:5]) - 0.5


def test_resumed_run_computes_the_losses_of_an_uninterrupted_one(tmp_path):
    full = trainer().run(False)
    t = trainer(out=tmp_path / "ck")
    t.run(False, until=4)  # interrupted right after the checkpoint of step 4
    resumed = Trainer.resume(tmp_path / "ck", *splits())
    assert resumed.step == 4
    history = resumed.run(False)
    assert history == full  # every batch loss and every estimate, bit for bit


def test_sharded_training_does_not_depend_on_the_workers_and_resumes(tmp_path):
    """Two shards per step (minigen.parallel): the same losses from one process or two, the
    first loss that of the whole batch, and a resumed sharded run equal to an unbroken one."""
    whole = trainer().run(False)
    one = trainer(shards=2).run(False)
    two = Trainer(CONFIG, TrainConfig(**{**TRAIN.__dict__, "shards": 2}), TOK, *splits(),
                  workers=2).run(False)  # fmt: skip
    assert one == two
    np.testing.assert_allclose(one["loss"][0], whole["loss"][0], rtol=1e-5)
    t = trainer(out=tmp_path / "ck", shards=2)
    t.run(False, until=4)
    resumed = Trainer.resume(tmp_path / "ck", *splits(), workers=2)
    assert resumed.tc.shards == 2 and resumed.run(False) == one


def test_bad_shard_settings_are_refused():
    with pytest.raises(ValueError, match="5 shards of a batch of 4"):
        trainer(shards=5)
    with pytest.raises(ValueError, match="workers must lie in 1 .. shards"):
        Trainer(CONFIG, TRAIN, TOK, *splits(), workers=2)
    with pytest.raises(ValueError, match="needs dropout 0"):
        Trainer(CONFIG.replace(dropout=0.1), TrainConfig(**{**TRAIN.__dict__, "shards": 2}), TOK,
                *splits())  # fmt: skip


def test_checkpoint_directory_holds_everything(tmp_path):
    out = tmp_path / "ck"
    t = trainer(out=out)
    t.run(False)
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "loss.png"} <= names
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, tok, ck = load_gpt(out)
    assert tok == TOK and ck.config == CONFIG and not model.training
    for name, p in t.model.named_parameters():
        np.testing.assert_array_equal(dict(model.named_parameters())[name].data, p.data)


def test_an_existing_checkpoint_is_not_overwritten(tmp_path):
    out = tmp_path / "ck"
    trainer(out=out).run(False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        trainer(out=out)
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}
    forced = Trainer(CONFIG, TRAIN, TOK, *splits(), out_dir=out, force=True)
    forced.run(False, until=4)
    assert (out / "trainer_state.json").read_bytes() != before["trainer_state.json"]


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nowhere")
    out = tmp_path / "ck"
    trainer(out=out).run(False)
    cfg = json.loads((out / "config.json").read_text())
    cfg["model"]["n_embd"] = 32
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"wte.weight has shape \(\d+, 16\), but the config"):
        load_checkpoint(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(out)


def test_a_corpus_shorter_than_a_block_is_refused():
    tiny = np.array(TOK.encode("the cat sat on the mat"))
    with pytest.raises(ValueError, match="the validation split has 3 tokens; block_size=16"):
        Trainer(CONFIG, TRAIN, TOK, *train_val_split(tiny))


def test_the_vocabulary_must_be_the_tokenizers():
    with pytest.raises(ValueError, match="vocab_size 99 is not the tokenizer's"):
        Trainer(CONFIG.replace(vocab_size=99), TRAIN, TOK, *splits())


# ----------------------------------------------------------------------------- the commands


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "minigen.cli", *args], capture_output=True, text=True, cwd=cwd,
        env=env,
    )  # fmt: skip


SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
         "--batch-size", "4", "--eval-interval", "5", "--eval-iters", "2"]  # fmt: skip


def test_train_then_generate_from_the_command_line(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    out = run_cli("train-gpt", "--corpus", "corpus.txt", "--max-iters", "10", "--sample", "20",
                  *SMALL, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "checkpoint and loss curve in minigen-gpt" in out.stdout
    assert "val loss" in out.stderr + out.stdout
    gen = run_cli("generate", "--prompt", "the ", "--max-new-tokens", "30", "--stop", "\n",
                  "--temperature", "0", cwd=tmp_path)  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("the ")
    resumed = run_cli("train-gpt", "--corpus", "corpus.txt", "--resume", "--max-iters", "12",
                      "--sample", "0", cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "minigen-gpt" / "trainer_state.json").read_text())["step"] == 12


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigen: error:"), err
    return err[0]


@pytest.fixture
def trained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    (tmp_path / "corpus.txt").write_text(TEXT)
    assert main(["train-gpt", "--corpus", "corpus.txt", "--max-iters", "2", "--sample", "0",
                 *SMALL]) == 0  # fmt: skip
    return tmp_path / "minigen-gpt"


def test_bad_inputs_give_one_line_and_change_nothing(trained, tmp_path, capsys):
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("abc")
    cases = [
        (["train-gpt", "--corpus", "corpus.txt", "--sample", "0"], "already holds a checkpoint"),
        (["train-gpt", "--corpus", "empty.txt", "--out", "o2"], "is empty"),
        (["train-gpt", "--corpus", "short.txt", "--out", "o3"], "needs at least 65"),
        (["train-gpt", "--corpus", "nothing.txt", "--out", "o4"], "neither a name"),
        (["train-gpt", "--corpus", "corpus.txt", "--resume", "--n-embd", "32"], "n_embd=16"),
        (["train-gpt", "--corpus", "short.txt", "--resume"], "not the one the checkpoint"),
        (
            ["train-gpt", "--corpus", "corpus.txt", "--out", "o5", "--shards", "13"],
            "13 shards of a batch of 12",
        ),
        (
            [
                "train-gpt",
                "--corpus",
                "corpus.txt",
                "--out",
                "o6",
                "--shards",
                "2",
                "--workers",
                "3",
            ],
            "workers must lie in 1 .. shards (2)",
        ),
        (["train-gpt", "--corpus", "corpus.txt", "--resume", "--shards", "2"], "only --max-iters"),
        (["generate", "--ckpt", "minigen-gpt", "--prompt", "Zebra"], "character 'Z' at position 0"),
        (["generate", "--ckpt", "missing"], "checkpoint directory not found: missing"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        assert message in one_line_error(capsys), argv
    assert before == {p.name: p.read_bytes() for p in trained.iterdir()}
    assert not any((tmp_path / d).exists() for d in ("o2", "o3", "o4", "o5", "o6"))


def test_the_demo_trains_a_gpt_and_samples_from_it(tmp_path):
    from minigen.demo import gpt_step

    out = gpt_step(tmp_path, fast=True, seed=0, steps=20)
    assert out["gpt_sample"].startswith("def ") and len(out["gpt_sample"]) > 100
    assert Path(out["gpt_figure"]).read_bytes()[:4] == b"\x89PNG"
    assert np.isfinite(out["gpt_val_loss"])
    # the demo keeps what it trains, where it says, and `generate` samples it
    assert Path(out["gpt_checkpoint"]) == tmp_path / "gpt"
    model, tok, ck = load_gpt(tmp_path / "gpt")
    assert ck.meta["corpus"] == "stdlib" and model.config.vocab_size == tok.vocab_size
    assert main(["generate", "--ckpt", str(tmp_path / "gpt"), "--prompt", "def ",
                 "--max-new-tokens", "5"]) == 0  # fmt: skip


def test_freed_temporaries_are_reused_without_page_faults():
    """minigen asks glibc to keep freed memory (backend.keep_freed_memory), so a loop that
    allocates and frees large arrays stops faulting pages in once warm."""
    resource = pytest.importorskip("resource")
    from minigen import backend

    if not backend.keep_freed_memory():
        pytest.skip("no glibc malloc here")

    def churn() -> None:
        for _ in range(20):
            a = np.ones((768, 512), np.float32)  # 1.5 MB, freed at once
            b = a * 2
            del a, b

    churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 100  # 20 x 2 x 384 pages if every array were mapped afresh


@pytest.mark.parametrize(
    "bad",
    [{"learning_rate": float("nan")}, {"learning_rate": -1.0}, {"learning_rate": float("inf")},
     {"grad_clip": -1.0}, {"min_lr": float("nan")}, {"weight_decay": -0.1}, {"beta2": 1.0}],
)  # fmt: skip
def test_train_config_refuses_numbers_that_would_train_nonsense(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=f"TrainConfig: {name} must"):
        TrainConfig(**bad)
