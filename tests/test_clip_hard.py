"""CLIP's hard negatives: minimal edits that do not describe the scene, the loss that asks each
image to prefer its own caption to them (by hand, gradients), and training with them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigen import Tensor, default_dtype
from minigen.gradcheck import gradcheck
from minigen.synthesis import captions as C
from minigen.synthesis.clip_hard import (
    describes,
    hard_negative_loss,
    hard_negatives,
    seen_combinations,
)
from minigen.synthesis.clip_train import train_clip
from minigen.synthesis.scenes import generate
from tests.strategies import scene_objects
from tests.test_clip import TINY


@given(objects=scene_objects(distinct_things=True), seed=st.integers(0, 2**16),
       k=st.integers(1, 6))  # fmt: skip
def test_hard_negatives_are_k_edits_that_do_not_describe_the_scene(objects, seed, k):
    caption = C.describe(objects, np.random.default_rng(seed))
    caps, valid = hard_negatives([caption], [objects], k, np.random.default_rng(seed))
    assert len(caps) == k and valid.shape == (1,)
    if valid[0]:
        assert len(set(caps)) == k and not any(describes(c, objects) for c in caps)
        assert all(C.parse_caption(c) for c in caps)  # captions of the grammar
    else:
        assert caps == [caption] * k


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_the_hard_loss_is_the_cross_entropy_of_the_own_caption_among_its_edits():
    gen = np.random.default_rng(0)
    B, k, E, s = 3, 2, 5, 1.7
    zi, zt, zh = _unit(gen.standard_normal((B, E))), _unit(gen.standard_normal((B, E))), \
        _unit(gen.standard_normal((B * k, E)))  # fmt: skip
    valid = np.array([True, False, True])
    with default_dtype(np.float64):
        got = hard_negative_loss(Tensor(zi), Tensor(zt), Tensor(zh), Tensor(np.full(1, s)), valid)
    want = []
    for i in np.flatnonzero(valid):
        logits = np.exp(s) * np.array([zi[i] @ zt[i], *(zh[i * k : i * k + k] @ zi[i])])
        want.append(-(logits[0] - np.log(np.exp(logits).sum())))
    assert got.item() == pytest.approx(np.mean(want), rel=1e-12)
    none = hard_negative_loss(Tensor(zi), Tensor(zt), Tensor(zh), Tensor(np.full(1, s)),
                              np.zeros(B, bool))  # fmt: skip
    assert none.item() == 0.0
    with default_dtype(np.float64):
        gradcheck(lambda a, b, c, d: hard_negative_loss(a, b, c, d, valid), zi, zt, zh,
                  np.full(1, s))  # fmt: skip


def test_training_with_hard_negatives_is_deterministic_and_records_it():
    sc = generate(256, 0, size=16, max_objects=2, value_range=(-1.0, 1.0))
    data = C.caption_scenes(sc, 0)
    kw = {"data": data, "steps": 4, "batch_size": 16, "warmup": 1, "progress": False}
    a = train_clip(TINY, hard_negatives=3, **kw)
    b = train_clip(TINY, hard_negatives=3, **kw)
    plain = train_clip(TINY, **kw)
    assert a.losses == b.losses and a.settings["hard_negatives"] == 3
    assert "hard_negatives" not in plain.settings
    assert a.losses[0] > plain.losses[0]  # the same first batch, plus the hard term


def test_with_the_seen_combinations_no_edit_names_a_held_out_one():
    split = C.make_split(300, 0, 0)
    seen = seen_combinations(split.train.properties)
    held = set(split.held_out_things) | set(split.held_out_relations)
    assert held and not held & seen
    objs = [split.train.scenes.objects(i) for i in range(len(split.train))]
    caps, valid = hard_negatives(split.train.captions, objs, 2, np.random.default_rng(0), seen)
    assert valid.mean() > 0.5
    for c in caps:
        assert not C.is_held_out(C.parse_caption(c), split.held_out_things,
                                 split.held_out_relations)  # fmt: skip
    # without the filter some edits do name one (so the assertions above can fail)
    free, _ = hard_negatives(split.train.captions, objs, 2, np.random.default_rng(0))
    assert any(
        C.is_held_out(C.parse_caption(c), split.held_out_things, split.held_out_relations)
        for c in free
    )
