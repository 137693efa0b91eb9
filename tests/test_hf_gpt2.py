"""GPT-2's weights in and out of minigen (minigen.text.hf.gpt2).

Oracle: a small random GPT2LMHeadModel from transformers, saved with save_pretrained, must
give minigen the same logits in float32; minigen's export must load back in transformers
(and in minigen) unchanged. Then every way a GPT-2 directory can be wrong must give an error
that names the file and the key.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from minigen.checkpoint import CheckpointError
from minigen.cli import main
from minigen.tensor import no_grad
from minigen.text import ByteBPETokenizer, stdlib_corpus
from minigen.text.hf.gpt2 import gpt2_config, load_gpt2, read_safetensors, save_gpt2

VOCAB = 300  # the tokenizer's 299 tokens, and one id more in the model (a padded vocabulary)


@pytest.fixture(scope="module")
def bpe() -> ByteBPETokenizer:
    return ByteBPETokenizer.train(stdlib_corpus()[:20_000], VOCAB - 1)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, bpe) -> Path:
    """A random GPT2LMHeadModel (every weight, bias and norm perturbed) with its tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=24, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=bpe.eot_id, eos_token_id=bpe.eot_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    out = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    model.save_pretrained(out)
    bpe.save_gpt2_files(out)
    return out


def hf_logits(directory: Path, ids: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager")
    with torch.no_grad():
        return model.eval()(torch.from_numpy(ids)).logits.numpy()


def ours_logits(model, ids: np.ndarray) -> np.ndarray:
    with no_grad():
        return model(ids).data


def random_ids(n: int = 3, t: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (n, t))


# ----------------------------------------------------------------------------- the oracle
@pytest.mark.oracle
def test_logits_match_transformers_in_float32(hf_dir):
    model, tokenizer = load_gpt2(hf_dir)
    ids = random_ids()
    ours, theirs = ours_logits(model, ids), hf_logits(hf_dir, ids)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    assert model.config.block_size == 24 and model.config.vocab_size == VOCAB
    assert isinstance(tokenizer, ByteBPETokenizer) and tokenizer.vocab_size == VOCAB - 1


@pytest.mark.oracle
def test_export_round_trips_through_transformers(hf_dir, tmp_path, bpe):
    model, tokenizer = load_gpt2(hf_dir)
    save_gpt2(model, tmp_path, tokenizer)
    again, tok2 = load_gpt2(tmp_path)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v, err_msg=k)
    assert tok2 == bpe
    ids = random_ids(seed=1)
    np.testing.assert_allclose(hf_logits(tmp_path, ids), ours_logits(model, ids), atol=1e-4)
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    text = "def f(x):\n    return x  # it's 2024\n"
    assert hf_tok(text)["input_ids"] == tok2.encode(text)


@pytest.mark.oracle
def test_original_gpt2_layout_loads(hf_dir, tmp_path):
    """The hub's `gpt2` files: names without `transformer.`, the attention buffers, lm_head."""
    from safetensors.numpy import save_file

    tensors = {k.removeprefix("transformer."): v for k, v in read_safetensors(hf_dir / "model.safetensors").items()}  # fmt: skip
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 24, 24), np.float32))
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    tensors["lm_head.weight"] = tensors["wte.weight"].copy()
    shutil.copy(hf_dir / "config.json", tmp_path / "config.json")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, tokenizer = load_gpt2(tmp_path)
    assert tokenizer is None  # no vocab.json / merges.txt in that directory
    ids = random_ids(seed=2)
    np.testing.assert_allclose(ours_logits(model, ids), hf_logits(hf_dir, ids), atol=1e-4)

    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*lm_head\.weight"):
        load_gpt2(tmp_path)


def test_hub_names_go_through_huggingface_hub(hf_dir, monkeypatch):
    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, tuple(allow_patterns)))
        return str(hf_dir)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))  # fmt: skip
    model, _ = load_gpt2("openai-community/gpt2")
    assert calls == [("openai-community/gpt2", ("config.json", "model.safetensors", "vocab.json", "merges.txt"))]  # fmt: skip
    assert model.config.n_layer == 2

    def offline(repo_id, allow_patterns):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=offline))  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"'gpt2'.*ConnectionError: no network\)$"):
        load_gpt2("gpt2")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(FileNotFoundError, match="install huggingface_hub"):
        load_gpt2("gpt2")


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def broken(hf_dir, tmp_path) -> Path:
    """A copy of the good directory, for a test to break."""
    out = tmp_path / "broken"
    shutil.copytree(hf_dir, out)
    return out


def edit_config(directory: Path, **changes) -> None:
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del cfg[k]
    (directory / "config.json").write_text(json.dumps(cfg))


def rewrite_weights(directory: Path, edit) -> None:
    from safetensors.numpy import save_file

    tensors = read_safetensors(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def test_missing_and_truncated_weights_name_the_file(broken):
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[:-1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated: tensor '[\w.]+' ends at byte"):  # fmt: skip
        load_gpt2(broken)
    (broken / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated"):
        load_gpt2(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors not found"):
        load_gpt2(broken)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model_type": "llama"}, r"model_type 'llama' is not GPT-2's"),
        ({"activation_function": "relu"}, r"activation_function='relu' is not supported"),
        ({"layer_norm_epsilon": 1e-6}, r"layer_norm_epsilon=1e-06 is not supported"),
        ({"n_inner": 100}, r"n_inner=100 is not supported"),
        ({"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx=True"),
        ({"n_embd": None}, r"key 'n_embd' is missing"),
        ({"n_head": 5}, r"GPTConfig: n_embd=32 does not split into n_head=5"),
        ({"n_layer": "2"}, r"n_layer must be a positive integer, got '2'"),
    ],
)
def test_configs_that_are_not_gpt2_are_refused(broken, changes, match):
    edit_config(broken, **changes)
    with pytest.raises(CheckpointError, match=r"config\.json: " + match):
        load_gpt2(broken)


def test_missing_unexpected_and_misshaped_tensors_name_the_key(broken):
    rewrite_weights(broken, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'h\.1\.mlp\.c_fc\.bias' is missing"):  # fmt: skip
        load_gpt2(broken)
    rewrite_weights(broken, lambda t: t.update({"transformer.h.1.mlp.c_fc.bias": np.zeros(128, np.float32), "transformer.h.2.ln_1.weight": np.ones(32, np.float32)}))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'h\.2\.ln_1\.weight'"):
        load_gpt2(broken)
    rewrite_weights(broken, lambda t: t.pop("transformer.h.2.ln_1.weight"))
    rewrite_weights(broken, lambda t: t.update({"transformer.h.0.attn.c_attn.weight": np.zeros((96, 32), np.float32)}))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"'h\.0\.attn\.c_attn\.weight' has shape \(96, 32\), but config\.json needs \(32, 96\)"):  # fmt: skip
        load_gpt2(broken)


def test_vocab_and_merges_that_do_not_fit_name_the_file(broken, bpe):
    merges = (broken / "merges.txt").read_text(encoding="utf-8").splitlines()
    (broken / "merges.txt").write_text("\n".join([*merges, "Ġzzq Ġzzr"]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt: merge \d+ 'Ġzzq Ġzzr': its part 'Ġzzq' is not in .*vocab\.json"):  # fmt: skip
        load_gpt2(broken)
    (broken / "merges.txt").write_text("\n".join(merges), encoding="utf-8")
    edit_config(broken, vocab_size=200)
    rewrite_weights(broken, lambda t: t.update({"transformer.wte.weight": t["transformer.wte.weight"][:200]}))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"vocab\.json has token ids up to 298, but .*config\.json has vocab_size 200"):  # fmt: skip
        load_gpt2(broken)
    (broken / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"merges file not found: .*merges\.txt"):
        load_gpt2(broken)


def test_export_refuses_what_gpt2_cannot_hold(hf_dir, tmp_path):
    from minigen.text import GPT, CharTokenizer, GPTConfig

    model, tokenizer = load_gpt2(hf_dir)
    save_gpt2(model, tmp_path)
    with pytest.raises(FileExistsError, match="config.json"):
        save_gpt2(model, tmp_path)
    save_gpt2(model, tmp_path, force=True)
    with pytest.raises(ValueError, match="byte-level BPE, got CharTokenizer"):
        save_gpt2(model, tmp_path / "c", CharTokenizer("ab"))
    no_bias = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4, bias=False))
    with pytest.raises(ValueError, match="bias=False"):
        save_gpt2(no_bias, tmp_path / "b")


def test_gpt2_preset_is_what_gpt2_config_reads():
    from minigen.text import preset

    hub_gpt2 = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_ctx": 1024,
                "n_embd": 768, "n_layer": 12, "n_head": 12, "activation_function": "gelu_new",
                "layer_norm_epsilon": 1e-05}  # fmt: skip
    assert gpt2_config(hub_gpt2) == preset("gpt2")
    assert preset("gpt2").num_params() == 124_439_808  # GPT-2 small, the tied head counted once


def test_cli_reports_a_bad_directory_in_one_line(broken, capsys):
    edit_config(broken, model_type="bert")
    assert main(["fewshot", "--model", str(broken), "--prompts", "figure-7.1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("minigen: error: ")
    assert "config.json" in err and "model_type 'bert'" in err
