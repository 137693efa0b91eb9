"""The few-shot runner (minigen.text.fewshot.prompts) and `minigen fewshot`: Figure 7.1's prompts,
greedy answers up to the separator, scoring, bold continuations, errors."""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given

from minigen.cli import main
from minigen.tensor import Tensor
from minigen.text import CharTokenizer
from minigen.text.fewshot.prompts import (
    FIGURE_7_1,
    FewShotPrompt,
    Prediction,
    build_prompt,
    load_prompts,
    predict,
    prompt_names,
    score,
    show,
)
from tests.strategies import icl_demos

# Figure 7.1's first prompt, as the chapter prints it (joined into one line)
FIGURE_FIRST = (
    "I: I love apples, O: positive, I: music is my passion, O: positive, I: my job is boring, "
    "O: negative, I: frozen pizzas are awesome, O:"
)


class Scripted:
    """A stand-in GPT whose greedy continuation is `script`, whatever the prompt; it records
    the prompts it was given."""

    def __init__(self, tokenizer: CharTokenizer, script: str, block_size: int = 512) -> None:
        self.tok, self.script = tokenizer, tokenizer.encode(script)
        self.config = SimpleNamespace(block_size=block_size)
        self.training, self.prompts, self.step = False, [], 0

    def eval(self):
        self.training = False
        return self

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def new_cache(self, batch_size: int):
        return None

    def __call__(self, ids, cache=None, last_only=False):
        if self.step == 0:
            self.prompts.append(self.tok.decode(ids[0]))
        logits = np.zeros((ids.shape[0], 1, self.tok.vocab_size), np.float32)
        logits[:, 0, self.script[min(self.step, len(self.script) - 1)]] = 1.0
        self.step += 1
        return Tensor(logits)


@pytest.fixture(scope="module")
def figure() -> list[FewShotPrompt]:
    return load_prompts("figure-7.1")


def char_tok(*texts: str) -> CharTokenizer:
    return CharTokenizer.from_text("".join(texts))


def test_figure_7_1_ships_with_its_four_prompts(figure):
    assert "figure-7.1" in prompt_names()
    assert build_prompt(figure[0].demos, figure[0].query) == FIGURE_FIRST
    assert [p.label for p in figure] == ["positive", "negative", "physics", "mathematics"]
    assert [p.query for p in figure] == [
        "frozen pizzas are awesome", "frozen pizzas taste like cardboard",
        "gravity is proportional to the mass", "squares are rectangles",
    ]  # fmt: skip
    assert figure[0].demos == figure[1].demos and figure[2].demos == figure[3].demos


@given(icl_demos("abcxyz", "0123456789"))
def test_prompt_is_the_demonstrations_then_the_query(demos):
    prompt = build_prompt(demos, "q")
    assert prompt.endswith(", I: q, O:")  # the model writes the answer, " y,"
    assert re.findall(r"I: (\w), O: (\w)", prompt) == demos


def test_predict_writes_up_to_the_separator(figure):
    p = figure[0]
    tok = char_tok(FIGURE_FIRST, "positive, and more")
    model = Scripted(tok, " positive, and more")
    pred = predict(model, tok, p.demos, p.query, p.label)
    assert model.prompts == [FIGURE_FIRST]
    assert (pred.continuation, pred.answer, pred.correct) == (" positive,", "positive", True)
    assert tok.decode(pred.tokens) == " positive,"
    wrong = predict(Scripted(tok, " negative,"), tok, p.demos, p.query, p.label)
    assert (wrong.answer, wrong.correct) == ("negative", False)


def test_predict_stops_after_max_new_tokens_without_a_separator(figure):
    tok = char_tok(FIGURE_FIRST, "lovely x")
    pred = predict(Scripted(tok, " lovely lovely"), tok, figure[0].demos, "x", max_new_tokens=5)
    assert (pred.continuation, pred.answer, pred.correct) == (" love", "love", None)


def test_score_counts_the_labelled_prompts_only(figure):
    tok = char_tok(FIGURE_FIRST, *(p.query for p in figure), "positive,")
    prompts = [*figure[:2], FewShotPrompt(figure[0].demos, "music", None)]
    acc, preds = score(Scripted(tok, " positive,"), tok, prompts)
    assert acc == 0.5 and [p.correct for p in preds] == [True, False, None]


def test_continuation_is_bold_on_a_terminal_only():
    pred = Prediction("I: a, O:", " 1,", "1", "1")
    plain = io.StringIO()
    show(pred, plain)
    assert plain.getvalue() == "I: a, O: 1,  [correct]\n"
    bold = io.StringIO()
    show(pred, bold, bold=True)
    assert bold.getvalue() == "I: a, O:\033[1m 1,\033[0m  [correct]\n"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    show(Prediction("p", " x,", "x", "y"), term)
    assert "\033[1m x,\033[0m" in term.getvalue() and "[expected y]" in term.getvalue()


def test_prompt_files_errors_name_the_file_and_entry(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"figure-7\.2.*figure-7\.1"):
        load_prompts("figure-7.2")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prompts": [{"demos": [["a", "1"]], "query": "a"}, {"demos": [["a"]], "query": "b"}]}))  # fmt: skip
    with pytest.raises(ValueError, match=r"bad\.json: prompts\[1\]: 'demos'"):
        load_prompts(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        load_prompts(bad)
    bad.write_text(json.dumps({"prompts": []}))
    with pytest.raises(ValueError, match="at least one prompt"):
        load_prompts(bad)


# ----------------------------------------------------------------------------- the command
def test_fewshot_command_with_the_shipped_model(capsys):
    assert main(["fewshot", "--model", "icl-gpt", "--prompts", "letters-to-digits"]) == 0
    out = capsys.readouterr().out
    prompts = load_prompts("letters-to-digits")
    assert out.count("I: ") >= sum(len(p.demos) + 1 for p in prompts)
    assert "\033[" not in out  # not a terminal: no ANSI codes
    assert f"{len(prompts)}/{len(prompts)} correct" in out
    assert main(["fewshot", "--model", "icl-gpt", "--demo", "a", "7", "--demo", "b", "2", "--query", "a"]) == 0  # fmt: skip
    assert capsys.readouterr().out == "I: a, O: 7, I: b, O: 2, I: a, O: 7,\n"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--prompts", "figure-7.1"], "starts with none of this PieceTokenizer's"),
        (["--prompts", "nope.json"], "prompt file not found: nope.json"),
        (["--demo", "a", "1"], "--demo needs at least one --query"),
    ],
)
def test_fewshot_command_errors_are_one_line(args, match, capsys, monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    assert main(["fewshot", "--model", "icl-gpt", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigen: error:") and match in err[0]


def test_fewshot_command_names_a_missing_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    assert main(["fewshot", "--model", str(tmp_path / "nowhere")]) == 1
    assert "model directory not found" in capsys.readouterr().err
    assert FIGURE_7_1.stop == ","


# ----------------------------------------------------------------------------- a GPT-2 directory
@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny random GPT-2 written as Hugging Face's files (minigen's own export), with a
    byte-level BPE trained here: what `--model <dir>` reads for real GPT-2 weights."""
    from minigen import rng
    from minigen.text import GPT, ByteBPETokenizer, GPTConfig, stdlib_corpus
    from minigen.text.hf.gpt2 import save_gpt2

    bpe = ByteBPETokenizer.train(stdlib_corpus()[:20_000] + FIGURE_FIRST, 320)
    rng.manual_seed(0)
    cfg = GPTConfig(vocab_size=bpe.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=16)
    return save_gpt2(GPT(cfg), tmp_path_factory.mktemp("gpt2") / "tiny", bpe)


def naive_greedy(model, ids: list[int], n: int) -> list[int]:
    """argmax_v p(v | ids) appended n times, each step a full forward pass (no cache)."""
    from minigen.tensor import no_grad

    ids = list(ids)
    with no_grad():
        for _ in range(n):
            ids.append(int(model(np.array([ids[-model.config.block_size :]])).data[0, -1].argmax()))
    return ids[-n:]


def test_predict_is_the_greedy_continuation_of_a_gpt2(gpt2_dir, figure):
    from minigen.text.hf.gpt2 import load_gpt2

    model, tok = load_gpt2(gpt2_dir)
    for p in figure[::2]:
        pred = predict(model, tok, p.demos, p.query, p.label, max_new_tokens=6)
        ids = tok.encode(build_prompt(p.demos, p.query))
        want = naive_greedy(model, ids, len(pred.tokens))
        assert pred.tokens == want and pred.prompt.endswith(p.query + ", O:")
        assert pred.continuation == tok.decode(want)[: len(pred.continuation)]
        assert len(pred.tokens) == 6 or pred.continuation.endswith(",")


def test_fewshot_command_reads_a_gpt2_directory(gpt2_dir, figure, capsys):
    assert main(["fewshot", "--model", str(gpt2_dir), "--prompts", "figure-7.1", "--max-new-tokens", "3"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("# ")] == [f"# {p.name}" for p in figure]
    prompts = [line for line in out if line.startswith("I: ")]
    assert len(prompts) == 4 and prompts[0].startswith(FIGURE_FIRST)
    assert re.fullmatch(r"[0-4]/4 correct", out[-1])


def test_a_prompt_longer_than_the_context_is_refused(figure, capsys):
    tok = char_tok(FIGURE_FIRST)
    p = figure[0]
    n = len(tok.encode(build_prompt(p.demos, p.query)))
    assert predict(Scripted(tok, ",", block_size=n), tok, p.demos, p.query).continuation == ","
    with pytest.raises(ValueError, match=rf"prompt is {n} tokens, the model's context {n - 1}.*\(3 here\)"):  # fmt: skip
        predict(Scripted(tok, ",", block_size=n - 1), tok, p.demos, p.query)
    demos = [["a", "1"]] * 9  # 9 shots: 19 tokens, the shipped model's context is 19
    assert main(["fewshot", "--model", "icl-gpt", *sum((["--demo", *d] for d in demos), []), "--query", "a"]) == 0  # fmt: skip
    assert main(["fewshot", "--model", "icl-gpt", *sum((["--demo", *d] for d in [*demos, ["b", "2"]]), []), "--query", "a"]) == 1  # fmt: skip
    assert "prompt is 21 tokens, the model's context 19" in capsys.readouterr().err
