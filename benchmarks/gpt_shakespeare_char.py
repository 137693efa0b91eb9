"""The quality benchmark of §7.1: nanoGPT's CPU recipe on tiny Shakespeare, by characters.

    python benchmarks/gpt_shakespeare_char.py [--corpus PATH] [--out DIR] [--threads N]
        [--shards S] [--backend numba]

n_layer 4, n_head 4, n_embd 128, block_size 64, batch 12, dropout 0, 2000 iterations,
learning rate 1e-3 with 100 warm-up steps and cosine decay to 1e-4, AdamW beta2 0.99,
weight decay 0.1, gradient clip 1.0 (TrainConfig's defaults). nanoGPT (PyTorch) reaches a
validation loss of about 1.886 with it; the target is <= 1.89. Prints the validation loss
the trainer estimates at the end (20 batches, as nanoGPT) and a tighter one over 400
batches, the wall time, and a sample. `--shards 2` sums each step's gradient over two halves
of the batch computed by two processes (minigen.parallel; BLAS on one thread in each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import minigen  # noqa: E402
from minigen import no_grad  # noqa: E402
from minigen.text import (  # noqa: E402
    CharTokenizer,
    TrainConfig,
    Trainer,
    generate,
    preset,
    shakespeare_corpus,
    train_val_split,
)
from minigen.text.train import get_batch  # noqa: E402

LOCAL = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def train_torch(trainer: Trainer, train_ids: np.ndarray, val_ids: np.ndarray) -> list[float]:
    """Train tests/gpt_reference.TorchGPT with the trainer's recipe from the trainer's initial
    weights (re-drawn from the same seed) on the same batches; its 400-batch val losses."""
    import torch

    from minigen import rng
    from minigen.text import GPT
    from minigen.text.train import get_batch
    from tests.gpt_reference import TorchGPT, adamw

    tc, config = trainer.tc, trainer.config
    rng.manual_seed(tc.seed)
    model = TorchGPT(config)
    model.load_numpy(GPT(config).state_dict())  # the same draws as the trainer's model
    opt = adamw(model, tc.learning_rate, (tc.beta1, tc.beta2), tc.weight_decay)
    for step in range(tc.max_iters):  # the generator now stands where the trainer's stood
        x, y = get_batch(train_ids, tc.batch_size, config.block_size, rng.generator())
        for group in opt.param_groups:
            group["lr"] = trainer.lr_at(step)
        loss = model.loss(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
    gen = np.random.default_rng(0)
    with torch.no_grad():
        return [
            model.loss(*(torch.from_numpy(a) for a in get_batch(val_ids, 12, 64, gen))).item()
            for _ in range(400)
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(LOCAL) if LOCAL.is_file() else None,
                        help="tinyshakespeare.txt (default: download into the cache)")  # fmt: skip
    parser.add_argument("--out", default=None, help="checkpoint folder (default: none)")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads")
    parser.add_argument("--max-iters", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=1, help="gradient shards, one process each")
    parser.add_argument("--backend", default="numpy", help="minigen backend (default: numpy)")
    parser.add_argument("--torch", action="store_true",
                        help="also train the equal PyTorch model (same weights, same batches)")  # fmt: skip
    args = parser.parse_args()
    minigen.backend.use(args.backend)
    if args.shards > 1:  # one BLAS thread per process
        args.threads = 1
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    text = shakespeare_corpus(args.corpus)
    tok = CharTokenizer.from_text(text)
    train_ids, val_ids = train_val_split(np.array(tok.encode(text)))
    config = preset("small", vocab_size=tok.vocab_size)
    tc = TrainConfig(max_iters=args.max_iters, shards=args.shards)
    trainer = Trainer(config, tc, tok, train_ids, val_ids, args.out, force=True,
                      workers=args.shards)  # fmt: skip
    print(f"{config}\n{tc}\n{config.num_params():,} parameters")
    t0 = time.perf_counter()
    history = trainer.run()
    wall = time.perf_counter() - t0
    trainer.model.eval()
    gen = np.random.default_rng(0)
    with no_grad():
        losses = [
            trainer.model.loss(*get_batch(val_ids, 12, config.block_size, gen)).item()
            for _ in range(400)
        ]
    if args.torch:
        torch_losses = train_torch(trainer, train_ids, val_ids)
    final = history["eval"][-1]
    print(f"\nwall time {wall:.0f} s for {tc.max_iters} iterations (evaluations included)")
    print(f"final train loss {final['train']:.4f}, val loss {final['val']:.4f} (20 batches)")
    print(f"val loss over 400 batches: {np.mean(losses):.4f} +- {np.std(losses) / 20:.4f}")
    print(f"target <= 1.89: {'met' if final['val'] <= 1.89 else 'NOT met'}")
    if args.torch:
        print(f"PyTorch, same recipe, weights and batches: val loss over the same 400 batches "
              f"{np.mean(torch_losses):.4f}")  # fmt: skip
    print("--- sample (temperature 0.8, top-k 40) ---")
    print(generate(trainer.model, tok, "\n", 300, 0.8, 40, gen=np.random.default_rng(1)))


if __name__ == "__main__":
    main()
