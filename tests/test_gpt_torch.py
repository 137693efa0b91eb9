"""The whole GPT against an equal PyTorch model (tests/gpt_reference.py), llm.c-style:
logits, the loss, every parameter's gradient, and the first training steps, in float64."""

from __future__ import annotations

import numpy as np
import pytest

import minigen
from minigen import optim
from minigen.text.gpt import GPT, GPTConfig
from minigen.text.train import TrainConfig, make_optimizer

torch = pytest.importorskip("torch")
from tests.gpt_reference import TorchGPT, adamw  # noqa: E402

pytestmark = pytest.mark.oracle


def pair(config: GPTConfig, seed: int = 0) -> tuple[GPT, TorchGPT]:
    """A minigen GPT in float64 and a PyTorch copy with the same weights."""
    with minigen.default_dtype(np.float64):
        minigen.manual_seed(seed)
        model = GPT(config)
    ref = TorchGPT(config).double()
    ref.load_numpy(model.state_dict())
    return model, ref


def batch(config: GPTConfig, B: int, T: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return g.integers(0, config.vocab_size, (B, T)), g.integers(0, config.vocab_size, (B, T))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T", [1, 5, 8])
def test_logits_loss_and_every_gradient_match_pytorch(bias, T):
    config = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8, bias=bias)
    model, ref = pair(config, seed=T)
    x, y = batch(config, 3, T, seed=T)
    logits = model(x).data
    loss = model.loss(x, y)
    loss.backward()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    ref_loss = ref.loss(tx, ty)
    ref_loss.backward()
    np.testing.assert_allclose(logits, ref(tx).detach().numpy(), rtol=1e-10, atol=1e-12)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    grads = {name: p.grad for name, p in ref.named_parameters()}
    for name, p in model.named_parameters():
        np.testing.assert_allclose(
            p.grad, grads[name].numpy(), rtol=1e-9, atol=1e-12, err_msg=f"gradient of {name}"
        )


def test_first_training_steps_match_pytorch():
    """AdamW (decay on matrices only), warm-up + cosine schedule and clipping, step for step."""
    config = GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)
    tc = TrainConfig(max_iters=8, learning_rate=3e-2, min_lr=3e-3, warmup_iters=2, grad_clip=0.5)
    model, ref = pair(config, seed=1)
    opt = make_optimizer(model, tc)
    ref_opt = adamw(ref, tc.learning_rate, (tc.beta1, tc.beta2), tc.weight_decay)
    ours, theirs = [], []
    x, y = batch(config, 4, 8, seed=100)  # one batch, to see it learn
    for step in range(tc.max_iters):
        lr = optim.warmup_cosine(step, tc.learning_rate, tc.warmup_iters, tc.max_iters, tc.min_lr)
        opt.set_lr(lr)
        for group in ref_opt.param_groups:
            group["lr"] = lr
        loss = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        ref_loss = ref.loss(torch.from_numpy(x), torch.from_numpy(y))
        ref_opt.zero_grad()
        ref_loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), tc.grad_clip)
        ref_opt.step()
        ours.append(loss.item())
        theirs.append(ref_loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    assert ours[-1] < ours[0] - 0.5  # and it learns the batch
