"""Scenes of coloured shapes: exact rendering, determinism, the layout constraints, plotting."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigen.synthesis import scenes as S
from tests.strategies import scene_objects

BLACK = np.zeros(3, np.float32)


def _pixels(images):
    """(N, 3, H, W) -> (N, H, W, 3)."""
    return np.moveaxis(images, 1, -1)


@given(seed=st.integers(0, 2**32 - 1))
def test_generate_is_deterministic_for_a_seed(seed):
    a, b = S.generate(8, seed), S.generate(8, np.random.default_rng(seed))
    for x, y in zip(a._arrays(), b._arrays(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_different_seeds_give_different_scenes():
    assert not np.array_equal(S.generate(16, 0).images, S.generate(16, 1).images)


@given(seed=st.integers(0, 2**32 - 1), lo=st.integers(1, 3), extra=st.integers(0, 2))
def test_generated_scenes_respect_the_layout(seed, lo, extra):
    sc = S.generate(32, seed, min_objects=lo, max_objects=lo + extra)
    assert sc.images.shape == (32, 3, 16, 16) and sc.images.dtype == np.float32
    count = (sc.colours >= 0).sum(1)
    assert count.min() >= lo and count.max() <= lo + extra
    for n in range(len(sc)):
        objs = sc.objects(n)
        assert len({(o.row, o.col) for o in objs}) == len(objs)  # distinct cells
        for a in objs:
            for b in objs:
                if a is not b and a.colour == b.colour:
                    assert abs(a.row - b.row) + abs(a.col - b.col) > 1  # never touching


def test_images_hold_only_palette_colours_and_black():
    px = _pixels(S.generate(64, 3).images).reshape(-1, 3)
    allowed = np.concatenate([BLACK[None], S.PALETTE])
    assert (np.abs(px[:, None, :] - allowed[None]).sum(-1) == 0).any(1).all()


@given(objects=scene_objects())
def test_rendering_paints_each_template_in_its_cell(objects):
    img = S.from_objects([objects]).images[0]  # (3, H, W)
    lay = S.layout(16)
    expected = np.zeros((16, 16, 3), np.float32)
    s = lay.shape_size
    for o in objects:
        top, left = lay.top_left(o.row, o.col)
        mask = S.templates(s)[S.SHAPES.index(o.shape)]
        expected[top : top + s, left : left + s][mask] = S.PALETTE[S.COLOURS.index(o.colour)]
    np.testing.assert_array_equal(np.moveaxis(img, 0, -1), expected)


@given(seed=st.integers(0, 1000))
def test_value_range_is_an_affine_map(seed):
    unit = S.generate(4, seed).images
    signed = S.generate(4, seed, value_range=(-1.0, 1.0)).images
    np.testing.assert_allclose(signed, 2 * unit - 1)
    np.testing.assert_allclose(S.to_unit(signed, (-1.0, 1.0)), unit)


@pytest.mark.parametrize("s", [5, 7, 9])
def test_templates_are_distinct_mirror_symmetric_and_fill_their_box(s):
    tm = S.templates(s)
    assert tm.shape == (len(S.SHAPES), s, s)
    for i, t in enumerate(tm):
        np.testing.assert_array_equal(t, t[:, ::-1])  # left-right symmetric
        assert t[0].any() and t[-1].any() and t[:, 0].any() and t[:, -1].any()
        for u in tm[i + 1 :]:
            assert (t != u).sum() >= 4
    square, circle, triangle, cross = tm
    assert square.all() and circle.sum() < square.sum()
    assert not np.array_equal(triangle, triangle[::-1])  # apex up: not up-down symmetric
    np.testing.assert_array_equal(cross, cross.T)


def test_things_restricts_the_colour_shape_pairs():
    sc = S.generate(64, 0, things=[("red", "circle"), ("blue", "cross")])
    seen = {(o.colour, o.shape) for n in range(len(sc)) for o in sc.objects(n)}
    assert seen == {("red", "circle"), ("blue", "cross")}


def test_bad_arguments_name_what_was_wrong():
    with pytest.raises(ValueError, match="purple"):
        S.generate(4, things=[("purple", "circle")])
    with pytest.raises(ValueError, match="max_objects"):
        S.generate(4, min_objects=2, max_objects=1)
    with pytest.raises(ValueError, match="size"):
        S.generate(4, size=12)
    with pytest.raises(ValueError, match="share a cell"):
        S.from_objects(
            [[S.SceneObject("red", "circle", 0, 0), S.SceneObject("blue", "square", 0, 0)]]
        )
    with pytest.raises(ValueError, match="outside"):
        S.from_objects([[S.SceneObject("red", "circle", 3, 0)]])


@pytest.mark.parametrize("size", [19, 24, 32])
def test_larger_images_keep_shapes_inside_their_cells(size):
    lay = S.layout(size)
    assert lay.shape_size % 2 == 1 and lay.shape_size <= lay.cell
    assert lay.origin + S.GRID * lay.cell <= size
    sc = S.generate(16, 0, size=size)
    assert sc.images.shape == (16, 3, size, size)
    # every coloured pixel belongs to the cell of an object of that colour
    for n in range(len(sc)):
        painted = np.zeros((size, size), bool)
        for o in sc.objects(n):
            top, left = lay.top_left(o.row, o.col)
            painted[top : top + lay.shape_size, left : left + lay.shape_size] = True
        assert not _pixels(sc.images)[n][~painted].any()


def test_indexing_and_concat_keep_scenes_whole():
    sc = S.generate(10, 0)
    part = sc[np.array([1, 3])]
    assert len(part) == 2 and part.objects(1) == sc.objects(3)
    both = S.concat([sc[:4], sc[4:]])
    for x, y in zip(both._arrays(), sc._arrays(), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="concatenate"):
        S.concat([sc, S.generate(2, 0, size=20)])


def test_plot_grid_shows_every_image_with_its_caption():
    sc = S.generate(5, 0, value_range=(-1.0, 1.0))
    caps = [f"caption {i}" for i in range(5)]
    fig = S.plot_grid(sc.images, caps, ncols=3, value_range=(-1.0, 1.0))
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5
    assert [ax.get_title() for ax in shown] == caps
    np.testing.assert_allclose(
        shown[0].images[0].get_array(), (sc.images[0].transpose(1, 2, 0) + 1) / 2
    )
    with pytest.raises(ValueError, match="captions"):
        S.plot_grid(sc.images, caps[:2])
    import matplotlib.pyplot as plt

    plt.close("all")


@given(objects=scene_objects(), size=st.sampled_from([16, 17, 20]))
def test_the_mirror_of_a_scene_is_the_scene_of_the_mirrored_objects(objects, size):
    """Cell column k goes to column GRID - 1 - k and every template is left-right symmetric, so
    mirroring the pixels gives exactly the scene rendered from the mirrored objects."""
    mirrored = [S.SceneObject(o.colour, o.shape, o.row, S.GRID - 1 - o.col) for o in objects]
    want = S.from_objects([mirrored], size=size).images
    got = S.mirror(S.from_objects([objects], size=size).images)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(S.mirror(got), S.from_objects([objects], size=size).images)
