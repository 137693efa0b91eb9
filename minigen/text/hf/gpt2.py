"""GPT-2's weights from Hugging Face into minigen's GPT, and back (§7.1, Figure 7.1).

A Hugging Face GPT-2 directory holds `config.json` (the shape), `model.safetensors` (the
weights), and GPT-2's tokenizer as `vocab.json` + `merges.txt`. GPT2LMHeadModel computes
the very function of `minigen.text.gpt.GPT`:

    h^0_t = wte[x_t] + wpe[t]
    a = h + c_proj(Att(c_attn(LN_1(h))));  h' = a + c_proj(GELU_tanh(c_fc(LN_2(a))))
    logits = LN_f(h^L) wte^T                     the head tied to the token embedding

so loading is copying tensors by name, once GPT-2's conventions are checked:

- Conv1D layers store their weight (in, out) and compute y = x W + b: minigen's Linear
  does the same, so no transpose;
- GELU is the tanh approximation ("gelu_new"), LayerNorm's epsilon is 1e-5 (minigen's
  defaults); other activations or epsilons are refused, not silently approximated;
- the head is tied: `lm_head.weight`, when a file carries it, must equal `wte.weight`;
- names carry a `transformer.` prefix when saved from GPT2LMHeadModel, none from GPT2Model
  (the original `gpt2` files); the buffers `h.{i}.attn.bias` (the causal mask as a matrix)
  and `h.{i}.attn.masked_bias` of older checkpoints are dropped (minigen builds its mask).

`save_gpt2` writes a directory transformers' `GPT2LMHeadModel.from_pretrained` reads. Only
NumPy and safetensors are used; `huggingface_hub`, when installed and online, fetches a
model by its hub name (`load_gpt2("gpt2")`).
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from minigen.checkpoint import CheckpointError, atomic_write
from minigen.text.bpe import ByteBPETokenizer
from minigen.text.gpt import GPT, GPTConfig, param_shapes

__all__ = [
    "GPT2_FILES",
    "resolve_gpt2_dir",
    "gpt2_config",
    "read_safetensors",
    "gpt2_state_dict",
    "load_gpt2",
    "save_gpt2",
]

GPT2_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


# ----------------------------------------------------------------------------- where
def resolve_gpt2_dir(name_or_path: str | Path) -> Path:
    """A local directory as it is; otherwise a hub name ("gpt2", "openai-community/gpt2")
    downloaded through huggingface_hub (its files are cached by the hub's client)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; give the directory holding config.json")
    name = str(name_or_path)
    if not _HUB_ID.match(name) or name.startswith("."):
        raise FileNotFoundError(f"model directory not found: {path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"model directory not found: {path} (to download {name!r} from the Hugging Face "
            "hub, install huggingface_hub; or give a directory holding config.json and "
            "model.safetensors)"
        ) from None
    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=list(GPT2_FILES)))
    except Exception as e:  # offline, unknown repository, ...: one line, the hub's reason
        raise FileNotFoundError(
            f"model directory not found: {path}, and downloading {name!r} from the Hugging "
            f"Face hub failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


# ----------------------------------------------------------------------------- config
def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a GPT-2 directory needs config.json")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def gpt2_config(cfg: dict[str, Any], source: str = "config.json") -> GPTConfig:
    """The GPTConfig of a Hugging Face GPT-2 config, refusing what minigen's GPT does not
    compute (another model type, activation, epsilon, MLP width, attention scaling)."""
    if cfg.get("model_type") != "gpt2":
        raise CheckpointError(
            f"{source}: model_type {cfg.get('model_type')!r} is not GPT-2's ('gpt2')"
        )

    def need(*keys: str) -> int:
        for k in keys:
            if k in cfg:
                v = cfg[k]
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise CheckpointError(f"{source}: {k} must be a positive integer, got {v!r}")
                return v
        raise CheckpointError(f"{source}: key {keys[0]!r} is missing")

    d = need("n_embd")
    checks = {  # key: (value found, value minigen computes, default when the key is absent)
        "activation_function": (cfg.get("activation_function", "gelu_new"), _TANH_GELU),
        "n_inner": (cfg.get("n_inner"), (None, 4 * d)),
        "scale_attn_weights": (cfg.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (
            cfg.get("scale_attn_by_inverse_layer_idx", False), (False,)
        ),
        "add_cross_attention": (cfg.get("add_cross_attention", False), (False,)),
        "tie_word_embeddings": (cfg.get("tie_word_embeddings", True), (True,)),
    }  # fmt: skip
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise CheckpointError(
                f"{source}: {key}={value!r} is not supported (minigen's GPT computes "
                f"{' or '.join(map(repr, allowed))})"
            )
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or not math.isclose(eps, 1e-5, rel_tol=1e-6):
        raise CheckpointError(
            f"{source}: layer_norm_epsilon={eps!r} is not supported (minigen's GPT uses 1e-5)"
        )
    try:
        return GPTConfig(
            vocab_size=need("vocab_size"),
            block_size=need("n_positions", "n_ctx"),
            n_layer=need("n_layer"),
            n_head=need("n_head"),
            n_embd=d,
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _hf_config(c: GPTConfig, eot_id: int | None) -> dict[str, Any]:
    """config.json as transformers writes it for GPT2LMHeadModel."""
    eos = eot_id if eot_id is not None else c.vocab_size - 1
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "dtype": "float32",
    }


# ----------------------------------------------------------------------------- weights
def _diagnose(path: Path, reason: str) -> str:
    """Why safetensors refused `path`, in terms of its header: which tensor is cut off."""
    data = path.read_bytes()
    if len(data) < 8:
        return f"{path} is truncated: {len(data)} bytes, not even the 8-byte header length"
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        return f"{path} is truncated: its header needs {8 + n} bytes, the file has {len(data)}"
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"{path}: its header is not valid JSON ({reason})"
    size = len(data) - 8 - n
    for key, info in header.items():
        if key != "__metadata__" and isinstance(info, dict):
            end = (info.get("data_offsets") or [0, 0])[1]
            if end > size:
                return (
                    f"{path} is truncated: tensor {key!r} ends at byte {end} of the data, "
                    f"which has {size} bytes"
                )
    return f"{path} is not a readable safetensors file ({reason})"


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, as NumPy arrays; errors name the file (and the
    tensor a truncated file cuts off)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a GPT-2 directory needs model.safetensors")
    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = list(f.keys())
            out = {}
            for k in keys:
                try:
                    out[k] = f.get_tensor(k)
                except (SafetensorError, TypeError, ValueError) as e:
                    raise CheckpointError(f"{path}: tensor {k!r} cannot be read ({e})") from None
            return out
    except (SafetensorError, OSError) as e:
        raise CheckpointError(_diagnose(path, str(e))) from None


def gpt2_state_dict(
    tensors: dict[str, np.ndarray], config: GPTConfig, source: str = "model.safetensors"
) -> dict[str, np.ndarray]:
    """GPT-2's tensors renamed as minigen's parameters and checked against `config`: the
    `transformer.` prefix dropped, the attention-mask buffers left out, a tied head checked."""
    renamed: dict[str, np.ndarray] = {}
    head = None
    for key, value in tensors.items():
        name = key.removeprefix("transformer.")
        if name == "lm_head.weight":
            head = (key, value)
        elif not _BUFFER.fullmatch(name):
            if name in renamed:
                raise CheckpointError(f"{source}: {name!r} appears twice (with and without prefix)")
            renamed[name] = value
    want = param_shapes(config)
    missing = [k for k in want if k not in renamed]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: tensor {missing[0]!r} is missing{more}")
    unexpected = [k for k in renamed if k not in want]
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor {unexpected[0]!r} (not a GPT-2 parameter of this config)"
        )
    # gpt_io.check_weights checks minigen's own checkpoints alike; here the errors name what a
    # Hugging Face user knows (the tensor, config.json): deliberately written apart
    for k, shape in want.items():
        if tuple(renamed[k].shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {k!r} has shape {tuple(renamed[k].shape)}, but config.json "
                f"needs {shape}"
            )
        if renamed[k].dtype.kind != "f":
            raise CheckpointError(f"{source}: tensor {k!r} has dtype {renamed[k].dtype}, not float")
    if head is not None:
        key, value = head
        if value.shape != want["wte.weight"] or not np.array_equal(value, renamed["wte.weight"]):
            raise CheckpointError(
                f"{source}: {key!r} differs from wte.weight; minigen's GPT ties its head to the "
                "token embedding"
            )
    return renamed


def load_gpt2(
    name_or_path: str | Path, with_tokenizer: bool = True
) -> tuple[GPT, ByteBPETokenizer | None]:
    """(model in eval mode, tokenizer or None) from a Hugging Face GPT-2 directory or hub name.

    The tokenizer is read from vocab.json + merges.txt when both are there (None when
    neither is, or `with_tokenizer=False`); it must fit the model's vocabulary.
    """
    directory = resolve_gpt2_dir(name_or_path)
    cfg_path = directory / "config.json"
    config = gpt2_config(_read_config(cfg_path), str(cfg_path))
    weights_path = directory / "model.safetensors"
    weights = gpt2_state_dict(read_safetensors(weights_path), config, str(weights_path))
    tokenizer = None
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if with_tokenizer and (vocab.exists() or merges.exists()):
        tokenizer = ByteBPETokenizer.from_files(vocab, merges)
        if tokenizer.vocab_size > config.vocab_size:
            raise CheckpointError(
                f"{vocab} has token ids up to {tokenizer.vocab_size - 1}, but {cfg_path} has "
                f"vocab_size {config.vocab_size}: they are not the same model's"
            )
    model = GPT(config)
    model.load_state_dict(weights)
    model.eval()
    return model, tokenizer


def save_gpt2(
    model: GPT, directory: str | Path, tokenizer: Any = None, force: bool = False
) -> Path:
    """Write `model` (and a byte-level BPE `tokenizer`) as a Hugging Face GPT-2 directory:
    config.json, model.safetensors (names prefixed `transformer.`, as save_pretrained
    writes them; the tied head is not stored), vocab.json and merges.txt."""
    from safetensors.numpy import save as st_save

    c = model.config
    if not c.bias:
        raise ValueError("save_gpt2: GPT-2 has biases; this model was built with bias=False")
    if tokenizer is not None and not isinstance(tokenizer, ByteBPETokenizer):
        raise ValueError(
            f"save_gpt2: GPT-2's tokenizer is a byte-level BPE, got {type(tokenizer).__name__}"
        )
    if tokenizer is not None and tokenizer.vocab_size > c.vocab_size:
        raise ValueError(
            f"save_gpt2: the tokenizer has {tokenizer.vocab_size} tokens, the model {c.vocab_size}"
        )
    out = Path(directory)
    found = [n for n in GPT2_FILES if (out / n).exists()]
    if found and not force:
        raise FileExistsError(f"{out} already holds {', '.join(found)}; pass force=True (--force)")
    arrays = {
        f"transformer.{k}": np.ascontiguousarray(v, dtype=np.float32)
        for k, v in model.state_dict().items()
    }
    eot = tokenizer.eot_id if tokenizer is not None else None
    atomic_write(out / "model.safetensors", st_save(arrays, metadata={"format": "pt"}))
    atomic_write(out / "config.json", json.dumps(_hf_config(c, eot), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_gpt2_files(out)
    return out
