"""Modules, optimizers (against PyTorch), schedules, checkpoints, and an MLP that learns."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minigen
import minigen.functional as F
from minigen import Tensor, checkpoint, default_dtype, nn, optim
from minigen.demo import MLP, accuracy, train_classifier
from minigen.toy2d import two_moons


class Net(nn.Module):
    def __init__(self) -> None:
        self.emb = nn.Embedding(7, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.emb.weight  # tied (shapes differ in spirit; fine for the test)

    def forward(self, ids):
        x = self.emb(ids)
        for b in self.blocks:
            x = F.gelu(b(x))
        return self.norm(x)


def test_parameters_are_found_in_order_and_tied_ones_once():
    minigen.manual_seed(0)
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == [
        "emb.weight", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias",
        "norm.weight", "norm.bias",
    ]  # fmt: skip
    assert net.num_parameters() == 7 * 4 + 2 * (16 + 4) + 8
    net.eval()
    assert not any(m.training for m in net.modules())
    assert "ModuleList" in repr(net) and "Linear(4, 4, bias=True)" in repr(net)


def test_state_dict_round_trip_and_mismatch_errors():
    minigen.manual_seed(0)
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        np.testing.assert_array_equal(pa.data, pb.data)
    sd = a.state_dict()
    sd["norm.weight"] = np.zeros(5)
    before = b.state_dict()
    with pytest.raises(ValueError, match=r"'norm.weight' has shape \(5,\).*\(4,\)"):
        b.load_state_dict(sd)
    np.testing.assert_array_equal(b.state_dict()["emb.weight"], before["emb.weight"])  # untouched
    sd = a.state_dict()
    del sd["norm.bias"]
    sd["extra"] = np.zeros(1)
    with pytest.raises(
        ValueError, match=r"missing keys \['norm.bias'\].*unexpected keys \['extra'\]"
    ):
        b.load_state_dict(sd)


def _torch_mlp(torch, model):
    sd = model.state_dict()
    tm = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    with torch.no_grad():
        for i in (0, 2):
            tm[i].weight.copy_(torch.tensor(sd[f"{i}.weight"].T))
            tm[i].bias.copy_(torch.tensor(sd[f"{i}.bias"]))
    return tm


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["sgd", "sgd_momentum", "adamw"])
def test_optimizers_match_pytorch_step_for_step(name):
    torch = pytest.importorskip("torch")
    with default_dtype(np.float64):
        minigen.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        tm = _torch_mlp(torch, model)
        if name == "adamw":
            ours = optim.AdamW(model.parameters(), lr=3e-2, betas=(0.8, 0.99), weight_decay=0.1)
            theirs = torch.optim.AdamW(
                tm.parameters(), lr=3e-2, betas=(0.8, 0.99), weight_decay=0.1
            )
        else:
            mom = 0.9 if name == "sgd_momentum" else 0.0
            ours = optim.SGD(model.parameters(), lr=0.1, momentum=mom, weight_decay=0.01)
            theirs = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=mom, weight_decay=0.01)
        rng = np.random.default_rng(0)
        for _ in range(6):
            X, y = rng.standard_normal((8, 3)), rng.integers(0, 2, 8)
            ours.zero_grad()
            F.cross_entropy(model(Tensor(X)), y).backward()
            ours.step()
            theirs.zero_grad()
            torch.nn.functional.cross_entropy(tm(torch.tensor(X)), torch.tensor(y)).backward()
            theirs.step()
        for i in (0, 2):
            np.testing.assert_allclose(
                model.state_dict()[f"{i}.weight"], tm[i].weight.detach().numpy().T, rtol=1e-10
            )


@pytest.mark.oracle
def test_clip_grad_norm_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    ps = [Tensor(np.zeros_like(g), dtype=np.float64, requires_grad=True) for g in grads]
    tps = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, tp, g in zip(ps, tps, grads, strict=True):
        p.grad, tp.grad = g.copy(), torch.tensor(g)
    norm = optim.clip_grad_norm_(ps, 1.0)
    tnorm = torch.nn.utils.clip_grad_norm_(tps, 1.0)
    assert norm == pytest.approx(float(tnorm))
    for p, tp in zip(ps, tps, strict=True):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)


def test_flat_buffers_follow_replaced_parameters_and_gradients():
    minigen.manual_seed(0)
    lin = nn.Linear(2, 2)
    opt = optim.SGD(lin.parameters(), lr=1.0)
    lin.load_state_dict({"weight": np.ones((2, 2)), "bias": np.zeros(2)})  # in place
    lin.zero_grad()  # sets .grad to None: the optimizer must treat it as zero
    opt.step()
    np.testing.assert_array_equal(lin.weight.data, np.ones((2, 2)))
    lin.weight.grad = np.full((2, 2), 0.5, dtype=np.float32)  # a new array, not the buffer view
    opt.step()
    np.testing.assert_allclose(lin.weight.data, 0.5)
    with pytest.raises(ValueError, match="empty"):
        optim.AdamW([])


def test_optimizer_state_round_trip_resumes_identically():
    def run(steps, state=None):
        minigen.manual_seed(0)
        model = nn.Linear(3, 2)
        opt = optim.AdamW(model.parameters(), lr=0.1)
        if state is not None:
            model.load_state_dict(state[0])
            opt.load_state_dict(*state[1])
        for i in range(steps):
            x = Tensor(np.full((1, 3), float(i + (0 if state is None else 3))))
            opt.zero_grad()
            (model(x) ** 2).sum().backward()
            opt.step()
        return model, opt

    full, _ = run(6)
    half, opt = run(3)
    resumed, _ = run(3, (half.state_dict(), opt.state_dict()))
    np.testing.assert_allclose(resumed.weight.data, full.weight.data, rtol=1e-6)


def test_warmup_cosine_schedule_shape():
    lrs = [optim.warmup_cosine(s, 1.0, 10, 110, 0.1) for s in range(130)]
    assert lrs[0] < lrs[5] < lrs[9] < 1.0  # linear warm-up
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)  # half-way through the cosine: (1 + 0.1) / 2
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[110] == lrs[129] == 0.1
    assert math.isclose(lrs[109], 0.1, abs_tol=1e-3)


def test_checkpoint_round_trip_atomic_and_errors(tmp_path):
    minigen.manual_seed(0)
    net = Net()
    path = checkpoint.save_module(net, tmp_path / "net.safetensors", {"n_layer": 2})
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    assert [p.name for p in tmp_path.iterdir()] == ["net.safetensors"]  # no temporary left
    minigen.manual_seed(1)
    other = Net()
    assert checkpoint.load_module(other, path) == {"n_layer": 2}
    np.testing.assert_array_equal(other.emb.weight.data, net.emb.weight.data)

    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(path.read_bytes()[:50])
    with pytest.raises(checkpoint.CheckpointError, match="trunc.safetensors"):
        checkpoint.load(trunc)
    small = nn.Linear(4, 3)
    with pytest.raises(checkpoint.CheckpointError, match=r"net.safetensors: load_state_dict"):
        checkpoint.load_module(small, path)


def test_checkpoint_keeps_every_shape_and_dtype(tmp_path):
    arrays = {
        "scalar": np.array(2.5, dtype=np.float32),
        "ints": np.arange(6, dtype=np.int64).reshape(2, 3),
        "f64": np.ones((1, 4)),
    }
    loaded, config = checkpoint.load(checkpoint.save(tmp_path / "a.safetensors", arrays))
    assert config == {}
    for k, v in arrays.items():
        assert loaded[k].shape == v.shape and loaded[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded[k], v)


def test_atomic_write_gives_new_files_the_umask_mode_and_keeps_an_existing_mode(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        new = checkpoint.atomic_write(tmp_path / "new.txt", "x")
        assert new.stat().st_mode & 0o777 == 0o644
        new.chmod(0o600)
        checkpoint.atomic_write(new, "y")
        assert new.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "a.txt"
    checkpoint.atomic_write(target, "old")

    with pytest.raises(TypeError):
        checkpoint.atomic_write(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_mlp_trained_with_adamw_reaches_95_percent_on_two_moons():
    X, y = two_moons(1000, noise=0.15, seed=0)
    Xte, yte = two_moons(1000, noise=0.15, seed=1)
    model, losses = train_classifier(X, y, hidden=32, steps=300, seed=0, progress=False)
    assert losses[-1] < losses[0]
    assert accuracy(model, Xte, yte) >= 0.95
    assert isinstance(model, MLP)


def test_checkpoint_save_half_stores_floats_as_float16_and_reads_back_within_rounding(tmp_path):
    from minigen import checkpoint

    w = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    ids = np.arange(4, dtype=np.int64)
    path = checkpoint.save(tmp_path / "h.safetensors", {"w": w, "ids": ids}, {"k": 1}, half=True)
    arrays, config = checkpoint.load(path)
    assert arrays["w"].dtype == np.float16 and arrays["ids"].dtype == np.int64
    assert config == {"k": 1} and np.array_equal(arrays["ids"], ids)
    # float16 keeps 11 significant bits: a relative rounding of at most 2^-11
    assert np.all(np.abs(arrays["w"].astype(np.float32) - w) <= np.abs(w) * 2.0**-11 + 1e-7)
    full = checkpoint.save(tmp_path / "f.safetensors", {"w": w, "ids": ids}, {"k": 1})
    assert path.stat().st_size == full.stat().st_size - w.size * 2  # 2 bytes less per weight
