"""The checker: it reads generated scenes back exactly, survives mild noise and blur, finds
nothing in noise, and its score drops when the caption is wrong."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigen.synthesis import captions as C
from minigen.synthesis import checker as K
from minigen.synthesis.scenes import COLOURS, PALETTE, SceneObject, from_objects, generate
from tests.strategies import scene_objects


def _key(objects):
    return sorted((o.colour, o.shape, o.row, o.col) for o in objects)


def _gaussian_blur(images, sigma):
    """Separable Gaussian blur over H and W (3-tap radius), zero padding."""
    t = np.arange(-3, 4)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    out = images
    for axis in (-1, -2):
        out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), axis, out)
    return out.astype(np.float32)


@given(seed=st.integers(0, 2**32 - 1), signed=st.booleans())
def test_generated_scenes_are_read_back_exactly(seed, signed):
    vr = (-1.0, 1.0) if signed else (0.0, 1.0)
    sc = generate(16, seed, value_range=vr)
    found = K.parse_batch(sc.images, value_range=vr)
    for n in range(len(sc)):
        assert _key(found[n]) == _key(sc.objects(n))
        # 1 unless an object of the same colour sits in a diagonal cell
        assert all(d.iou > 0.7 for d in found[n])


@given(objects=scene_objects(), seed=st.integers(0, 2**16))
def test_true_captions_score_one(objects, seed):
    img = from_objects([objects]).images[0]
    res = K.score(img, C.describe(objects, seed))
    assert all(res.holds) and res.fraction == 1.0


@given(seed=st.integers(0, 2**32 - 1))
def test_batched_scores_of_true_captions_are_one(seed):
    data = C.caption_scenes(generate(32, seed), seed)
    np.testing.assert_array_equal(K.score_batch(data.images, data.captions), 1.0)


@given(seed=st.integers(0, 2**16), sigma=st.sampled_from([0.05, 0.1]))
def test_mild_gaussian_noise_keeps_the_score(seed, sigma):
    data = C.caption_scenes(generate(32, seed), seed)
    rng = np.random.default_rng(seed)
    noisy = data.images + sigma * rng.standard_normal(data.images.shape).astype(np.float32)
    assert K.score_batch(noisy, data.captions).mean() >= 0.99


def test_mild_blur_keeps_the_score():
    data = C.caption_scenes(generate(64, 5), 5)
    blurred = _gaussian_blur(data.images, 0.5)
    np.testing.assert_array_equal(K.score_batch(blurred, data.captions), 1.0)


def test_noise_and_blank_images_score_near_zero():
    data = C.caption_scenes(generate(200, 11), 11)
    rng = np.random.default_rng(0)
    uniform = rng.random(data.images.shape, dtype=np.float32)
    gauss = rng.standard_normal(data.images.shape, dtype=np.float32)  # a diffusion x_T
    assert K.score_batch(uniform, data.captions).mean() < 0.02
    assert K.score_batch(gauss, data.captions, value_range=(-1.0, 1.0)).mean() < 0.02
    blank = np.zeros_like(data.images)
    assert K.parse_batch(blank) == [[] for _ in range(200)]
    np.testing.assert_array_equal(K.score_batch(blank, data.captions), 0.0)


def test_a_big_blob_is_not_a_shape():
    full = np.zeros((3, 16, 16), np.float32)
    full[0] = 1.0  # a red image
    assert K.parse(full) == []


def test_captions_of_other_images_score_low():
    data = C.caption_scenes(generate(300, 2), 2)
    shuffled = [data.captions[i] for i in np.random.default_rng(0).permutation(300)]
    assert K.score_batch(data.images, shuffled).mean() < 0.3


@given(objects=scene_objects(distinct_things=True), pick=st.integers(0, 2), new=st.integers(1, 5))
def test_changing_a_colour_lowers_the_score(objects, pick, new):
    target = objects[pick % len(objects)]
    colour = COLOURS[(COLOURS.index(target.colour) + new) % len(COLOURS)]
    present = {(o.colour, o.shape) for o in objects}
    caption = C.describe(objects, 0)
    props = C.parse_caption(caption)
    swapped = [_recolour(p, target, colour) for p in props]
    img = from_objects([objects]).images[0]
    before, after = K.score(img, props), K.score(img, swapped)
    assert before.fraction == 1.0
    if (colour, target.shape) not in present:
        assert after.fraction < before.fraction
        assert not after.holds[swapped.index(C.Exists(C.Thing(colour, target.shape)))]


def _recolour(p, target, colour):
    def fix(t):
        return (
            C.Thing(colour, t.shape) if (t.colour, t.shape) == (target.colour, target.shape) else t
        )

    if isinstance(p, C.Exists):
        return C.Exists(fix(p.thing))
    return C.Relation(fix(p.a), p.relation, fix(p.b))


@given(objects=scene_objects(distinct_things=True), seed=st.integers(0, 2**16))
def test_the_converse_relation_word_lowers_the_score(objects, seed):
    caption = C.describe(objects, seed, p_relation=1.0)
    for rel in C.RELATIONS:
        caption = caption.replace(f" {rel} ", f" <{rel}> ")
    for rel in C.RELATIONS:  # every relation word replaced by its converse
        caption = caption.replace(f" <{rel}> ", f" {C.CONVERSE[rel]} ")
    img = from_objects([objects]).images[0]
    res = K.score(img, caption)
    rels = [h for p, h in zip(res.properties, res.holds, strict=True) if isinstance(p, C.Relation)]
    assert len(rels) == len(objects) // 2
    assert not any(rels)
    if rels:
        assert res.fraction < 1.0


def test_a_relation_needs_two_distinct_objects_and_a_gap():
    red, blue = "red", "blue"
    one = from_objects([[SceneObject(red, "circle", 1, 1)]]).images[0]
    assert K.score(one, "a red circle left of a red circle").holds == [True, False]
    two = from_objects([[SceneObject(red, "circle", 0, 0), SceneObject(red, "circle", 0, 2)]])
    assert K.score(two.images[0], "a red circle left of a red circle").fraction == 1.0
    column = from_objects([[SceneObject(red, "cross", 0, 1), SceneObject(blue, "square", 2, 1)]])
    res = K.score(
        column.images[0], "a red cross above a blue square and a red cross left of a blue square"
    )
    assert res.holds == [True, True, True, False]


def test_score_accepts_a_caption_or_its_properties():
    sc = generate(4, 9)
    for n in range(4):
        caption = C.describe(sc.objects(n), n)
        assert K.score(sc.images[n], caption) == K.score(sc.images[n], C.parse_caption(caption))


def test_pixels_take_the_nearest_palette_colour_even_when_dim():
    px = np.concatenate([PALETTE, 0.6 * PALETTE, np.zeros((1, 3))]).astype(np.float32)  # (2C+1, 3)
    labels = K.classify_pixels(px.T[:, None, :])  # as a (3, 1, 2C+1) image
    c = np.arange(len(COLOURS))
    np.testing.assert_array_equal(labels[0], np.concatenate([c, c, [-1]]))


def test_bad_inputs_name_what_was_wrong():
    img = generate(2, 0).images
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        K.parse(img)
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        K.score_batch(img, ["a red circle"])
    with pytest.raises(ValueError, match="purpel"):
        K.score(img[0], "a purpel circle")


@pytest.mark.parametrize(
    "objects",
    [
        # touching shapes of one colour (the generator avoids them, a model may not)
        [("red", "square", 1, 0), ("red", "square", 1, 1), ("red", "cross", 1, 2)],
        [("blue", "cross", 0, 1), ("blue", "square", 1, 0), ("blue", "square", 1, 2)],
        [("green", "triangle", 0, 0), ("green", "circle", 0, 1), ("green", "cross", 1, 1)],
    ],
)
def test_shapes_of_one_colour_side_by_side_are_all_found(objects):
    objs = [SceneObject(*o) for o in objects]
    assert _key(K.parse(from_objects([objs]).images[0])) == _key(objs)


@pytest.mark.parametrize("size", [19, 24, 32])
def test_larger_scenes_are_read_back_exactly(size):
    sc = generate(16, size, size=size)
    found = K.parse_batch(sc.images)
    assert [_key(f) for f in found] == [_key(sc.objects(n)) for n in range(16)]
    data = C.caption_scenes(sc, 0)
    np.testing.assert_array_equal(K.score_batch(sc.images, data.captions), 1.0)
