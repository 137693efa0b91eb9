"""Seeds as a flag of every `minigen rlhf` stage, `rlhf all --seeds`, and what `rlhf eval`
records beside its table (fast mode: seconds)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from minigen.cli import main
from minigen.rlhf import io
from minigen.rlhf.pipeline import read_pairs


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """`rlhf all --fast --seeds 0,1`: two whole runs and their summary."""
    out = tmp_path_factory.mktemp("rlhf") / "seeds"
    assert main(["rlhf", "all", "--fast", "--quiet", "--seeds", "0,1", "--out", str(out)]) == 0
    return out


def _weights(path, kind="policy"):
    loaded = (io.load_policy if kind == "policy" else io.load_reward)(path)
    return loaded, loaded.model.state_dict()


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_seeds_run_the_pipeline_once_per_seed_as_seed_does(seeds, tmp_path):
    for k in (0, 1):
        for stage in io.STAGES:
            assert io.stage_path(seeds / f"seed{k}", stage).is_file(), (k, stage)
        assert json.loads((seeds / f"seed{k}" / "results.json").read_text())["seed"] == k
        for stage in ("sft", "ppo", "dpo"):
            assert io.load_policy(io.stage_path(seeds / f"seed{k}", stage)).config.seed == k
    # the seed reaches the weights: another seed, other weights
    assert not _same(_weights(seeds / "seed0/sft.safetensors")[1],
                     _weights(seeds / "seed1/sft.safetensors")[1])  # fmt: skip
    # seed1/ is what `rlhf all --seed 1` writes
    one = tmp_path / "one"
    assert main(["rlhf", "all", "--fast", "--quiet", "--seed", "1", "--jobs", "1",
                 "--out", str(one)]) == 0  # fmt: skip
    for stage in io.STAGES:
        kind = "reward" if stage == "reward" else "policy"
        assert _same(_weights(io.stage_path(one, stage), kind)[1],
                     _weights(io.stage_path(seeds / "seed1", stage), kind)[1]), stage  # fmt: skip


def test_the_summary_is_the_mean_and_spread_of_the_seeds(seeds):
    summary = json.loads((seeds / "summary.json").read_text())
    runs = [json.loads((seeds / f"seed{k}" / "results.json").read_text()) for k in (0, 1)]
    assert summary["seeds"] == [0, 1]
    for model, cells in summary["models"].items():
        for col, s in cells.items():
            v = [r["models"][model][col] for r in runs]
            assert s["mean"] == pytest.approx(np.mean(v)) and s["sd"] == pytest.approx(
                np.std(v, ddof=1)
            )
            assert s["min"] == min(v) and s["max"] == max(v)
    assert set(summary["models"]) == {"pretrained", "sft", "ppo", "dpo", "ppo_beta0"}
    for key in ("held_out", "held_out forum", "held_out sampled"):
        v = [io.load_reward(seeds / f"seed{k}/reward.safetensors").history["accuracy"][key]
             for k in (0, 1)]  # fmt: skip
        assert summary["reward_accuracy"][key]["mean"] == pytest.approx(np.mean(v))
    md = (seeds / "summary.md").read_text()
    assert "seeds 0, 1" in md and "| held-out sampled |" in md
    assert f"| {summary['models']['ppo']['rater']['mean']:.3f} ± " in md


def test_eval_writes_the_seed_the_machine_and_the_reward_models_accuracy(seeds):
    run = seeds / "seed0"
    data = json.loads((run / "results.json").read_text())
    acc = io.load_reward(io.stage_path(run, "reward")).history["accuracy"]
    assert data["reward_accuracy"] == {
        k: acc[k] for k in ("held_out", "held_out forum", "held_out sampled")
    }
    m = data["machine"]
    assert m["numpy"] == np.__version__ and m["cpu_threads"] == len(os.sched_getaffinity(0))
    md = (run / "results.md").read_text()
    assert "seed 0" in md and f"NumPy {np.__version__}" in md
    assert f"held-out pairwise accuracy {acc['held_out']:.1%}" in md
    assert "| model | rater score |" in md


def test_a_stage_takes_its_own_seed_says_so_and_records_it(seeds, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(seeds / "seed0", run)
    sft0 = _weights(run / "sft.safetensors")[1]
    # the input's seed, given explicitly: the same weights, nothing said
    assert main(["rlhf", "sft", "--quiet", "--force", "--seed", "0", "--out", str(run)]) == 0
    assert "note:" not in capsys.readouterr().out
    assert _same(_weights(run / "sft.safetensors")[1], sft0)
    # another seed: other weights, said, recorded in the config and beside the inputs' seeds
    assert main(["rlhf", "sft", "--quiet", "--force", "--seed", "3", "--out", str(run)]) == 0
    assert "note: sft runs with seed 3, on pretrained of seed 0" in capsys.readouterr().out
    sft3, w3 = _weights(run / "sft.safetensors")
    assert sft3.config.seed == 3 and sft3.meta["input_seeds"] == {"pretrained": 0}
    assert not _same(w3, sft0)
    # the reward stage's seed draws the comparisons (and their file records it)
    pairs0, s0 = read_pairs(run / "pairs.json")
    assert main(["rlhf", "reward", "--quiet", "--force", "--seed", "5", "--out", str(run)]) == 0
    pairs5, s5 = read_pairs(run / "pairs.json")
    assert (s0, s5) == (0, 5) and pairs5["train"] != pairs0["train"]
    rm = io.load_reward(run / "reward.safetensors")
    assert rm.config.seed == 5 and rm.meta["input_seeds"] == {"sft": 3, "pairs": 5}
    # ppo and eval: the seed reaches the sampling
    capsys.readouterr()
    assert main(["rlhf", "ppo", "--quiet", "--force", "--out", str(run)]) == 0
    assert "note: ppo runs with seed 3, on reward of seed 5" in capsys.readouterr().out
    assert (
        main(["rlhf", "eval", "--quiet", "--seed", "7", "--models", "sft", "--out", str(run)]) == 0
    )
    data = json.loads((run / "results.json").read_text())
    old = json.loads((seeds / "seed0" / "results.json").read_text())
    assert data["seed"] == 7 and data["models"]["sft"]["samples"] != old["models"]["sft"]["samples"]


def _error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigen: error:")
    return err[0]


def test_bad_seeds_are_refused_before_any_work(seeds, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    assert "--seeds" in _error(
        capsys, ["rlhf", "all", "--fast", "--seeds", "1,1", "--out", str(tmp_path / "x")]
    )
    assert not (tmp_path / "x").exists()
    # a finished seed's folder is not overwritten, and nothing of the others is written
    shutil.copytree(seeds / "seed1", tmp_path / "y" / "seed1")
    err = _error(capsys, ["rlhf", "all", "--fast", "--seeds", "0,1", "--out", str(tmp_path / "y")])
    assert "--force" in err and "seed1" in err and not (tmp_path / "y" / "seed0").exists()
    for argv in (["all", "--seed", "0", "--seeds", "0,1"], ["all", "--seeds", "0,-1"],
                 ["sft", "--seed", "-1"], ["eval", "--seed", "x"]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(["rlhf", *argv, "--out", str(tmp_path / "z")])
        assert e.value.code == 2
        assert "--seed" in capsys.readouterr().err
