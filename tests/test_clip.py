"""CLIP: the contrastive loss (by hand, symmetric, gradients), the encoders, the guidance
gradient against finite differences, learning on an easy subset, checkpoints, bad input."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigen.functional as F
from minigen import Tensor, default_dtype
from minigen.checkpoint import CheckpointError, load, save
from minigen.gradcheck import gradcheck
from minigen.synthesis import captions as C
from minigen.synthesis.clip import (
    CLIP,
    CLIPConfig,
    _l2_normalize,
    caption_key,
    contrastive_loss,
    positives,
    timestep_embedding,
)
from minigen.synthesis.clip_train import (
    describes,
    load_clip,
    minimal_edits,
    plot_similarity,
    retrieval_accuracy,
    save_clip,
    similarity,
    train_clip,
)
from minigen.synthesis.guidance import clip_grad
from minigen.synthesis.scenes import generate
from minigen.tensor import no_grad
from tests.strategies import contrastive_batches, scene_objects

# a tiny model, and a short noise schedule (T = 100, abar_T ~ 0.37) so a few steps learn
TINY = CLIPConfig(
    embed_dim=16, width=16, heads=2, layers=1, channels=(8, 16), strides=(2, 2), groups=4,
    head_width=32, time_dim=8, num_train_timesteps=100,
)  # fmt: skip


def _loss(z_img, z_txt, s, P=None):
    return contrastive_loss(Tensor(z_img), Tensor(z_txt), Tensor(s), P).item()


# ----------------------------------------------------------------------------- the loss


def test_loss_equals_hand_computed_values():
    z_img = np.array([[1.0, 0.0], [0.0, 1.0]])
    z_txt = np.array([[1.0, 0.0], [0.6, 0.8]])
    # e^s = 2: logits = [[2, 1.2], [0, 1.6]]; a 2-way softmax's CE is log(1 + e^-(margin))
    images = (math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-1.6))) / 2  # rows
    texts = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-0.4))) / 2  # columns
    assert _loss(z_img, z_txt, math.log(2.0)) == pytest.approx((images + texts) / 2, rel=1e-6)

    # both captions the same: each target is (1/2, 1/2), CE = -(log p_0 + log p_1) / 2
    def half_half(a, b):  # logits (a, b)
        lse = math.log(math.exp(a) + math.exp(b))
        return -((a - lse) + (b - lse)) / 2

    want = (half_half(2, 1.2) + half_half(0, 1.6) + half_half(2, 0) + half_half(1.2, 1.6)) / 4
    got = _loss(z_img, z_txt, math.log(2.0), np.ones((2, 2), bool))
    assert got == pytest.approx(want, rel=1e-6)


def test_scale_starts_at_one_over_007_and_is_capped_at_100():
    model = CLIP(TINY)
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    # Gram matrix [[1, .99], [.99, 1]]: every CE is log(1 + e^{-0.01 scale})
    z = np.array([[1.0, 0.0], [0.99, math.sqrt(1 - 0.99**2)]])
    for s in (math.log(100.0), math.log(1000.0)):
        assert _loss(z, z, s) == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    assert _loss(z, z, math.log(50.0)) == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-6)


@given(batch=contrastive_batches())
def test_loss_is_symmetric_in_images_and_texts(batch):
    z_img, z_txt, s, P = batch
    with default_dtype(np.float64):
        zi, zt = _l2_normalize(Tensor(z_img)), _l2_normalize(Tensor(z_txt))
        a = contrastive_loss(zi, zt, Tensor(s), P)
        b = contrastive_loss(zt, zi, Tensor(s), P.T)
    assert a.item() == pytest.approx(b.item(), rel=1e-12, abs=1e-12)


@given(batch=contrastive_batches())
def test_loss_gradient_matches_central_differences(batch):
    z_img, z_txt, s, P = batch

    def f(zi, zt, ls):
        return contrastive_loss(_l2_normalize(zi), _l2_normalize(zt), ls, P)

    gradcheck(f, z_img, z_txt, s, atol=1e-5, rtol=1e-4)


@given(batch=contrastive_batches())
def test_without_duplicates_the_loss_is_clips_cross_entropy(batch):
    z_img, z_txt, s, _ = batch
    B = len(z_img)
    z_img, z_txt = (z / np.linalg.norm(z, axis=1, keepdims=True) for z in (z_img, z_txt))
    with default_dtype(np.float64):
        logits = Tensor(np.exp(s) * z_img @ z_txt.T)
        targets = np.arange(B)
        want = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) * 0.5
        assert _loss(z_img, z_txt, s) == pytest.approx(want.item(), rel=1e-9, abs=1e-12)


@pytest.mark.oracle
@given(batch=contrastive_batches())
def test_loss_and_gradients_match_torch_soft_targets(batch):
    torch = pytest.importorskip("torch")
    z_img, z_txt, s, P = batch
    ti, tt = (torch.tensor(z, requires_grad=True) for z in (z_img, z_txt))
    q = torch.tensor(P / P.sum(1, keepdims=True))
    ni, nt = (torch.nn.functional.normalize(z, dim=1) for z in (ti, tt))
    logits = float(np.exp(s)) * ni @ nt.T
    ce = torch.nn.functional.cross_entropy
    want = (ce(logits, q) + ce(logits.T, q.T)) / 2  # q symmetric: P is an equivalence
    want.backward()
    with default_dtype(np.float64):
        mi, mt = Tensor(z_img, requires_grad=True), Tensor(z_txt, requires_grad=True)
        got = contrastive_loss(_l2_normalize(mi), _l2_normalize(mt), Tensor(s), P)
        got.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(mi.grad, ti.grad.numpy(), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(mt.grad, tt.grad.numpy(), rtol=1e-7, atol=1e-8)


def test_positives_group_captions_by_meaning():
    caps = [
        "a red circle above a blue square",
        "a blue square below a red circle",
        "a red circle left of a blue square",
        "a green cross and a red circle",
        "a red circle and a green cross",
        "a red circle",
    ]
    P = positives(caps)
    assert (P == P.T).all() and P.diagonal().all()
    assert P[0, 1] and P[3, 4]
    assert P.sum() == len(caps) + 4  # the two pairs above, both ways, nothing else
    assert caption_key("a red circle") != caption_key(
        "a red circle and a red circle above a red square"
    )


# ----------------------------------------------------------------------------- the encoders


def test_embeddings_are_unit_vectors_and_depend_on_t():
    model = CLIP(TINY)
    x = generate(3, 0, value_range=TINY.value_range).images
    with no_grad():
        z0, z1 = model.encode_image(x, 0).numpy(), model.encode_image(x, [5, 50, 99]).numpy()
        zt = model.encode_text(["a red circle", "a blue cross left of a red square"]).numpy()
    for z in (z0, z1, zt):
        np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    assert z0.shape == (3, 16) and zt.shape == (2, 16)
    assert not np.allclose(z0, z1)


def test_text_embedding_ignores_what_follows_eos():
    model = CLIP(TINY)
    ids = C.encode_batch(["a red circle", "a green square above a blue cross"])
    junk = ids.copy()
    for row in junk:  # replace every token after the first <eos> by random words
        e = int(np.argmax(row == C.EOS))
        row[e + 1 :] = np.random.default_rng(0).integers(3, len(C.VOCAB), len(row) - e - 1)
    with no_grad():
        np.testing.assert_allclose(
            model.encode_text(ids).numpy(), model.encode_text(junk).numpy(), rtol=1e-5, atol=1e-6
        )
        one = model.encode_text(ids[:1]).numpy()  # a shorter batch is truncated differently
    np.testing.assert_allclose(one, model.encode_text(ids).numpy()[:1], rtol=1e-5, atol=1e-6)


def test_timestep_embedding():
    e = timestep_embedding([0, 1, 500], 8)
    assert e.shape == (3, 8)
    np.testing.assert_array_equal(e[0], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_allclose((e[1:] ** 2).sum(1), 4.0)  # sin^2 + cos^2 per frequency
    assert not np.allclose(e[1], e[2])


# ----------------------------------------------------------------------------- guidance


def test_clip_grad_matches_finite_differences_per_sample():
    with default_dtype(np.float64):
        model = CLIP(TINY).astype(np.float64)
    gen = np.random.default_rng(0)
    x = gen.standard_normal((2, 3, 16, 16))
    t = np.array([3, 70])
    caps = ["a red circle above a blue square", "a green cross"]
    g = clip_grad(model, x, t, C.encode_batch(caps))
    assert g.shape == x.shape and g.dtype == np.float64
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient computed

    def score(xx, b):  # z_img(x_b, t_b) . z_txt(c_b)
        with no_grad(), default_dtype(np.float64):
            zi = model.encode_image(xx, t).numpy()
            zt = model.encode_text(caps).numpy()
        return float(zi[b] @ zt[b])

    eps = 1e-5
    for b in range(2):
        for _ in range(3):  # directional derivatives along random directions of sample b only
            v = np.zeros_like(x)
            v[b] = gen.standard_normal(x.shape[1:])
            fd = (score(x + eps * v, b) - score(x - eps * v, b)) / (2 * eps)
            assert float((g * v).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-8)
        for idx in [(0, 0, 0), (2, 7, 9), (1, 15, 15)]:  # and single pixels
            e = np.zeros_like(x)
            e[(b, *idx)] = eps
            fd = (score(x + e, b) - score(x - e, b)) / (2 * eps)
            assert g[(b, *idx)] == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_clip_grad_broadcasts_one_caption_and_keeps_float32():
    model = CLIP(TINY)
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    one = clip_grad(model, x, 10, "a red circle")
    many = clip_grad(model, x, 10, ["a red circle"] * 3)
    assert one.dtype == np.float32 and one.shape == x.shape
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- training


def _single_objects(n, seed, cfg=TINY):
    return C.caption_scenes(
        generate(n, seed, min_objects=1, max_objects=1, value_range=cfg.value_range), seed
    )


def test_training_learns_and_is_deterministic():
    data = _single_objects(512, 0)
    kw = {"data": data, "steps": 120, "batch_size": 32, "lr": 3e-3, "warmup": 10}
    a = train_clip(TINY, progress=False, **kw)
    b = train_clip(TINY, progress=False, **kw)
    assert a.losses == b.losses
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for (ka, va), (kb, vb) in zip(sa.items(), sb.items(), strict=True):
        assert ka == kb and np.array_equal(va, vb)
    assert np.mean(a.losses[-20:]) < np.mean(a.losses[:20]) - 0.5
    # zero-shot: new single-object scenes, own caption against 3 that do not describe them
    acc = retrieval_accuracy(a.model, _single_objects(128, 1), 0, k=4, batch=32)
    assert acc["k_way"] > 0.25 + 0.25 and acc["top1"] > acc["top1_chance"] + 0.1


def test_training_records_the_loops_names_and_stops_when_it_diverges(tmp_path):
    from pathlib import Path

    from minigen.training import TrainingDiverged

    data = _single_objects(16, 0)
    run = train_clip(TINY, data=data, steps=3, batch_size=8, warmup=1, grad_clip=0.5,
                     progress=False)  # fmt: skip
    assert len(run.losses) == len(run.accuracies) == 3
    assert run.settings["warmup"] == 1 and run.settings["grad_clip"] == 0.5
    assert "warmup_steps" not in run.settings and "max_grad_norm" not in run.settings
    path = save_clip(run.model, tmp_path / "clip.safetensors", run.settings)
    assert load(path)[1]["training"]["warmup"] == 1
    # the shipped CLIP keeps its old record (warmup_steps, max_grad_norm): still loads
    shipped = Path(C.__file__).resolve().parents[1] / "assets" / "text2im_clip.safetensors"
    assert "warmup_steps" in load(shipped)[1]["training"]
    assert load_clip(shipped).config.embed_dim > 0
    data.images[...] = np.nan
    with pytest.raises(TrainingDiverged, match="at step 1: the loss is nan"):
        train_clip(TINY, data=data, steps=3, batch_size=8, progress=False)


def test_describes_reads_the_scene():
    sc = generate(32, 3)
    data = C.caption_scenes(sc, 3)
    for i in range(len(data)):
        assert describes(data.captions[i], sc.objects(i))
    objs = [C.SceneObject("red", "circle", 0, 0), C.SceneObject("blue", "square", 2, 1)]
    assert describes("a red circle above a blue square", objs)
    assert not describes("a red circle below a blue square", objs)
    assert not describes("a red circle", objs)  # names only one of the two things


@given(objects=scene_objects(), seed=st.integers(0, 100))
def test_every_true_caption_describes_its_scene(objects, seed):
    assert describes(C.describe(objects, seed), objects)


def test_minimal_edits_are_one_change_away():
    c = "a red circle above a blue square"
    edits = minimal_edits(c)
    # 2 colours x 5 others, 2 shapes x 3 others, the reversed relation, the swapped colours
    assert len(edits) == 18 == len(set(edits))
    assert "a red circle below a blue square" in edits
    assert "a blue circle above a red square" in edits
    assert all(caption_key(e) != caption_key(c) for e in edits)
    assert all(len(e.split()) == len(c.split()) for e in edits)


@given(objects=scene_objects(distinct_things=True), seed=st.integers(0, 100))
def test_minimal_edits_are_captions_that_no_longer_describe_the_scene(objects, seed):
    caption = C.describe(objects, seed)
    for e in minimal_edits(caption):
        C.parse_caption(e)  # raises if the grammar breaks
        # each thing occurs once: a changed word, a reversed relation or swapped colours is false
        assert not describes(e, objects)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    model = CLIP(TINY)
    path = save_clip(model, tmp_path / "clip.safetensors", {"steps": 0})
    back = load_clip(path)
    assert back.config == TINY
    x = generate(2, 0, value_range=TINY.value_range).images
    caps = ["a red circle", "a blue cross"]
    np.testing.assert_array_equal(
        similarity(model, x, [1, 2], caps), similarity(back, x, [1, 2], caps)
    )


def test_bad_checkpoints_name_the_file(tmp_path):
    other = tmp_path / "other.safetensors"
    save(other, {"w": np.zeros(2)}, {"model": "unet"})
    with pytest.raises(CheckpointError, match="other.safetensors is not a CLIP checkpoint"):
        load_clip(other)
    odd = tmp_path / "odd.safetensors"
    save(odd, {}, {"model": "clip", "config": {**TINY.to_dict(), "depth": 3}})
    with pytest.raises(CheckpointError, match=r"odd.safetensors.*unknown field.*depth"):
        load_clip(odd)
    small = tmp_path / "small.safetensors"
    save_clip(CLIP(TINY), small)
    arrays, meta = load(small)
    arrays["image.fc2.bias"] = np.zeros(3, np.float32)
    save(small, arrays, meta)
    with pytest.raises(CheckpointError, match=r"image.fc2.bias.*\(3,\)"):
        load_clip(small)


# ----------------------------------------------------------------------------- bad input


def test_bad_captions_raise_clear_errors():
    model = CLIP(TINY)
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        model.encode_text("a purple circle")
    with pytest.raises(ValueError, match="empty caption"):
        model.encode_text("")
    with pytest.raises(ValueError, match="empty caption"):
        model.encode_text(np.array([[C.BOS, C.EOS, C.PAD]]))
    with pytest.raises(ValueError, match="token id 99 .* never seen"):
        model.encode_text(np.array([[C.BOS, 99, C.EOS]]))
    with pytest.raises(ValueError, match="no <eos>"):
        model.encode_text(np.array([[C.BOS, 5, 6]]))
    with pytest.raises(ValueError, match="max_len=20"):
        model.encode_text(np.full((1, 25), 5))


def test_bad_images_raise_clear_errors():
    model = CLIP(TINY)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\), got \(2, 3, 32, 32\)"):
        model.encode_image(np.zeros((2, 3, 32, 32), np.float32), 0)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\), got \(2, 1, 16, 16\)"):
        clip_grad(model, np.zeros((2, 1, 16, 16)), 0, "a red circle")
    with pytest.raises(ValueError, match=r"timesteps must lie in 0 \.\. 99"):
        model.encode_image(np.zeros((1, 3, 16, 16), np.float32), 100)
    with pytest.raises(ValueError, match=r"timesteps of shape \(3,\)"):
        model.encode_image(np.zeros((2, 3, 16, 16), np.float32), [1, 2, 3])
    with pytest.raises(ValueError, match="2 captions for images of shape"):
        clip_grad(model, np.zeros((3, 3, 16, 16)), 0, ["a red circle", "a blue cross"])


def test_plot_similarity():
    data = _single_objects(4, 0)
    fig = plot_similarity(np.eye(4), data.images, data.captions)
    assert len(fig.axes) == 1 and len(fig.axes[0].images) == 5  # the matrix and 4 images
    with pytest.raises(ValueError, match=r"\(4, 4\) matrix needs 4 images and 4 captions"):
        plot_similarity(np.eye(4), data.images[:3], data.captions)
