"""The caption's cell map: where each caption token's object is, as the (bidirectional) caption
encoder predicts it, and the map of the grid the conditional U-Net reads (caption_unet.CaptionUNet
with cells, cells.token_cells, xunet.cell_painter)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigen
from minigen import default_dtype
from minigen.diffusion import NoiseSchedule
from minigen.synthesis import captions as C
from minigen.synthesis import scenes as S
from minigen.synthesis.caption_unet import CELL_DIM, CaptionUNet
from minigen.synthesis.cells import NOWHERE, is_mention, place_jointly, token_cells
from minigen.synthesis.clip import CLIPConfig, TextEncoder
from minigen.synthesis.mirrors import mirror_pairs, mirror_safe, mirror_token_cells, mirror_tokens
from minigen.synthesis.text2im import draw_batch, scene_data, train_text2im
from minigen.synthesis.text2im_config import Text2ImConfig
from minigen.synthesis.text2im_io import CondModel, load_cond, save_cond
from minigen.synthesis.xunet import Caption, cell_painter
from minigen.tensor import no_grad
from tests.strategies import scene_objects

TEXT = CLIPConfig(embed_dim=8, width=8, heads=2, layers=1, causal=False)
UNET = {"kind": "xattn_unet", "image_size": 16, "in_channels": 3, "base_channels": 8,
        "channel_mults": [1, 2, 2], "heads": 2, "attn_levels": [1, 2]}  # fmt: skip
G2 = S.GRID * S.GRID


@pytest.fixture(scope="module")
def net():
    with default_dtype(np.float64):
        minigen.manual_seed(0)
        return CaptionUNet(UNET, TEXT.to_dict(), cells=True).eval()


def _captioned(objects, seed):
    caption = C.describe(objects, np.random.default_rng(seed))
    return caption, C.encode_batch([caption]), S.from_objects([objects])


@given(objects=scene_objects(distinct_things=True), seed=st.integers(0, 2**16))
def test_each_mentions_words_point_at_its_objects_cell_and_the_rest_nowhere(objects, seed):
    caption, tokens, sc = _captioned(objects, seed)
    got = token_cells(tokens, sc)[0]  # (L,)
    words = ["<bos>", *caption.split(), "<eos>"]
    want = [NOWHERE] * len(words) + [-100] * (tokens.shape[1] - len(words))
    for i in range(1, len(words) - 2):
        if words[i] == "a":  # a <colour> <shape>
            (o,) = [o for o in objects if (o.colour, o.shape) == (words[i + 1], words[i + 2])]
            want[i + 1] = want[i + 2] = o.row * S.GRID + o.col
    np.testing.assert_array_equal(got, want)
    # the mirrored caption of the mirrored scene: columns reversed, the words in place
    mirrored = [S.SceneObject(o.colour, o.shape, o.row, S.GRID - 1 - o.col) for o in objects]
    back = token_cells(mirror_tokens(tokens), S.from_objects([mirrored]))
    np.testing.assert_array_equal(mirror_token_cells(got[None]), back)


def test_a_mention_of_a_thing_the_scene_holds_twice_has_no_target():
    objects = [S.SceneObject("red", "circle", 0, 0), S.SceneObject("red", "circle", 2, 2)]
    tokens = C.encode_batch(["a red circle"])
    np.testing.assert_array_equal(token_cells(tokens, S.from_objects([objects]))[0, :5],
                                  [NOWHERE, NOWHERE, -100, -100, NOWHERE])  # fmt: skip


@given(objects=scene_objects(), size=st.sampled_from([15, 16, 17, 20, 24]))
def test_the_painter_puts_each_objects_pixels_in_its_cell_and_no_pixel_in_two(objects, size):
    U = cell_painter(size)  # (GRID^2, size^2)
    assert U.shape == (G2, size * size) and set(np.unique(U)) <= {0.0, 1.0}
    assert U.sum(0).max() == 1.0  # no pixel in two cells
    lay = S.layout(size)
    assert U.sum() == (S.GRID * lay.cell) ** 2  # every pixel of the grid in one
    drawn = S.to_unit(S.from_objects([objects], size=size).images[0], (0.0, 1.0)).max(0)
    ys, xs = np.nonzero(drawn)
    for o in objects:
        own = ((ys - lay.origin) // lay.cell == o.row) & ((xs - lay.origin) // lay.cell == o.col)
        mine = U[o.row * S.GRID + o.col].reshape(size, size)
        assert own.any() and (mine[ys[own], xs[own]] == 1).all()


def test_a_bidirectional_encoder_reads_later_words_and_ignores_padding():
    """The subject's colour word ("red", token 2) reads the relation word after it; a causal
    encoder's cannot. Words after <eos> reach no state of a real token either way."""
    caps = C.encode_batch(
        ["a red square left of a blue circle", "a red square right of a blue circle"]
    )
    junk = caps.copy()
    junk[:, 10:] = np.random.default_rng(0).integers(3, len(C.VOCAB), (2, junk.shape[1] - 10))
    for causal in (True, False):
        with default_dtype(np.float64):
            minigen.manual_seed(1)
            enc = TextEncoder(CLIPConfig(width=8, heads=2, layers=2, causal=causal))
        with no_grad():
            h, eos = enc.states(caps)
            h2, _ = enc.states(junk)
        assert np.allclose(h.data[0, 2], h.data[1, 2]) == causal
        for i in range(2):
            np.testing.assert_allclose(h2.data[i, : eos[i] + 1], h.data[i, : eos[i] + 1],
                                       rtol=1e-12, atol=1e-14)  # fmt: skip


RED_LEFT = [[S.SceneObject("red", "circle", 1, 0), S.SceneObject("blue", "square", 2, 2)],
            [S.SceneObject("green", "cross", 0, 1)]]  # fmt: skip
CAPS = ["a red circle left of a blue square", "a green cross"]


def test_the_map_holds_each_words_vector_in_its_objects_cell_and_nothing_if_dropped(net):
    tokens = C.encode_batch(CAPS)
    cells = token_cells(tokens, S.from_objects(RED_LEFT))  # (2, L)
    with no_grad():
        e = net.embed(tokens, np.array([False, True]), cells)
        h, eos = net.text.states(tokens)
        v = net.cell_what(tokens[:, : h.shape[1]]).data  # (2, L', M): v(w_j), one per word
        null = net.embed(None, 3)
    assert e.cell_logits.shape == (2, h.shape[1], G2 + 1) and e.cells.shape == (2, G2, CELL_DIM)
    # map[c] = sum_j [cell_j = c] v_j: "red" and "circle" in cell 3, "blue" and "square" in 8
    want = np.zeros((G2, CELL_DIM))
    want[3], want[8] = v[0, 2] + v[0, 3], v[0, 7] + v[0, 8]
    np.testing.assert_allclose(e.cells.data[0], want, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(e.cells.data[1], 0.0)  # dropped: nothing anywhere
    np.testing.assert_array_equal(null.cells.data, 0.0)
    with no_grad():
        both = Caption.concat([net.embed(tokens, np.ones(2, dtype=bool), cells), e])
    assert both.cells.shape == (4, G2, CELL_DIM)
    with pytest.raises(ValueError, match="some captions have a cell map"):
        Caption.concat([Caption(e.pooled, e.states, e.mask), e])
    with pytest.raises(ValueError, match="needs the cell of each token's object"):
        net.embed(tokens)
    with pytest.raises(ValueError, match="cells"):
        net.embed(tokens, None, cells[:, :5])
    with pytest.raises(ValueError, match="bidirectional"):
        CaptionUNet(UNET, CLIPConfig(embed_dim=8, width=8, heads=2, layers=1).to_dict(), cells=True)


def test_the_cell_loss_is_the_cross_entropy_over_the_tokens_with_a_target(net):
    tokens = C.encode_batch(CAPS)
    target = token_cells(tokens, S.from_objects(RED_LEFT))  # (2, L)
    assert target[0, 2] == 3 and target[1, 3] == 1 and target[0, 1] == NOWHERE
    with no_grad():
        e = net.embed(tokens, None, target)
        got = float(net.cell_loss(e, target).item())
    z = e.cell_logits.data
    t = target[:, : z.shape[1]]
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    keep = t >= 0
    want = -np.take_along_axis(logp, np.where(keep, t, 0)[..., None], -1)[..., 0][keep].mean()
    assert got == pytest.approx(want, rel=1e-12)
    words, P = net.where(CAPS[0])  # P_j of each word, over the cells
    assert words == CAPS[0].split() and P.shape == (len(words), S.GRID, S.GRID)
    np.testing.assert_allclose(P.reshape(len(words), -1), np.exp(logp[0, 1:9, :G2]), rtol=1e-10)


def test_place_draws_the_objects_cells_jointly_from_their_distributions(net):
    """Each "<colour> <shape>" gets one cell for both words; the cells of a caption's objects
    come from the product of their colour words' P_j restricted to distinct cells where the
    relation holds; the other tokens NOWHERE, <pad> no target."""
    tokens = C.encode_batch(CAPS * 400)  # (800, L)
    with no_grad():
        z = net.cell_where(net.text.states(tokens[:2])[0]).data[:, :, :G2]  # (2, L', G^2)
    cells = net.place(tokens, np.random.default_rng(0))
    np.testing.assert_array_equal(cells, net.place(tokens, np.random.default_rng(0)))
    mention = is_mention(tokens)
    np.testing.assert_array_equal(np.flatnonzero(mention[0]), [2, 7])
    assert (cells[:, 2] == cells[:, 3]).all() and (cells[:, 7] == cells[:, 8]).all()
    assert (cells[::2, 2] % S.GRID < cells[::2, 7] % S.GRID).all()  # red left of blue, always
    other = ~(mention | np.roll(mention, 1, axis=1)) & (tokens != C.PAD)
    assert (cells[other] == NOWHERE).all() and (cells[tokens == C.PAD] == -100).all()
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)  # P_j
    col = np.arange(G2) % S.GRID
    # "a red circle left of a blue square": p(c_1, c_2) ∝ P_2(c_1) P_7(c_2) [col_1 < col_2]
    pair = p[0, 2][:, None] * p[0, 7][None, :] * (col[:, None] < col[None, :])  # (G^2, G^2)
    pair /= pair.sum()
    for want, got in ((pair.sum(1), cells[0::2, 2]), (pair.sum(0), cells[0::2, 7]),
                      (p[1, 2], cells[1::2, 2])):  # fmt: skip
        freq = np.bincount(got, minlength=G2) / 400
        assert np.abs(freq - want).max() < 4 * np.sqrt(want.max() / 400)


@st.composite
def captions(draw: st.DrawFn) -> str:
    """A caption of the grammar that fits MAX_LEN: clauses "a c s" or "a c s <rel> a c s"."""
    thing = st.builds(lambda c, s: f"a {c} {s}", st.sampled_from(S.COLOURS),
                      st.sampled_from(S.SHAPES))  # fmt: skip
    clauses = []
    for _ in range(draw(st.integers(1, 4))):
        rel = draw(st.sampled_from([None, *C.RELATIONS]))
        clause = draw(thing) + (f" {rel} {draw(thing)}" if rel else "")
        if len(" and ".join([*clauses, clause]).split()) + 2 > C.MAX_LEN:
            break
        clauses.append(clause)
    return " and ".join(clauses or [draw(thing)])


@given(caption=captions(), logits=st.data(), seed=st.integers(0, 2**16))
def test_every_relation_holds_between_the_placed_cells_whatever_the_distributions(
    caption, logits, seed
):
    """Whatever P_j say (here: any logits, even all on one column), every draw puts the objects
    in distinct cells where each relation of the caption holds."""
    tokens = C.encode_batch([caption] * 4)  # (4, L)
    eos = (tokens != C.PAD).sum(1) - 1
    z = np.array(logits.draw(st.lists(st.floats(-60, 60), min_size=G2, max_size=G2)))  # (G^2,)
    z = np.broadcast_to(z, (*tokens.shape, G2))  # every token the same P_j
    cells = place_jointly(z, tokens, eos, np.random.default_rng(seed))  # (4, L)
    props = C.parse_caption(caption)
    words = caption.split()
    for row in cells:
        placed = [row[i + 2] for i, w in enumerate(words) if w == "a"]  # token i + 2: colour
        assert len(set(placed)) == len(placed)  # one object per cell
        things = [C.Thing(words[i + 1], words[i + 2]) for i, w in enumerate(words) if w == "a"]
        k = 0
        for clause in caption.split(" and "):
            n = clause.split().count("a")
            if n == 2:
                rel = C.Relation(things[k], " ".join(clause.split()[3:-3]), things[k + 1])
                assert rel in props
                (ra, ca), (rb, cb) = divmod(placed[k], S.GRID), divmod(placed[k + 1], S.GRID)
                holds = {"left of": ca < cb, "right of": ca > cb, "above": ra < rb,
                         "below": ra > rb}[rel.relation]  # fmt: skip
                assert holds, (caption, placed)
            k += n


def test_the_map_reaches_eps_and_the_cell_loss_trains_the_encoder_alone(net):
    tokens = C.encode_batch([CAPS[0]] * 2)
    cells = token_cells(tokens, S.from_objects([RED_LEFT[0]] * 2))
    moved = mirror_token_cells(cells)
    gen = np.random.default_rng(0)
    x, t = gen.standard_normal((2, 3, 16, 16)), np.array([500, 500])
    with no_grad():
        base = net(x, t, net.embed(tokens, None, cells)).data
        other = net(x, t, net.embed(tokens, None, moved)).data
    assert not np.allclose(base, other)
    for p in net.parameters():
        p.grad = None
    net.cell_loss(net.embed(tokens, None, cells), cells).backward()
    assert np.abs(net.text.tok.weight.grad).sum() > 0 and net.cell_where.weight.grad is not None
    assert all(p.grad is None for p in net.unet.parameters()) and net.cell_what.weight.grad is None


def test_mirror_pairs_carry_the_mirrored_cells():
    data = scene_data(400)
    cells = token_cells(data.tokens, data.scenes)
    pool = mirror_safe(data, 0)
    sched = NoiseSchedule.make("linear", 1000)
    b = mirror_pairs(draw_batch(data, pool, 8, np.random.default_rng(0), sched, 0.1, cells))
    np.testing.assert_array_equal(b["cells"][8:], mirror_token_cells(b["cells"][:8]))
    plain = mirror_pairs(draw_batch(data, pool, 8, np.random.default_rng(0), sched, 0.1))
    assert "cells" not in plain and all(np.array_equal(plain[k], b[k]) for k in plain)
    rows = [int(np.flatnonzero((data.images == x).all((1, 2, 3)))[0]) for x in b["x0"][:8]]
    np.testing.assert_array_equal(b["cells"][:8], cells[rows])


def test_a_cell_map_model_trains_saves_and_loads(tmp_path):
    cfg = Text2ImConfig(kind="cond", steps=3, batch_size=4, base_channels=8, text_width=16,
                        embed_dim=16, n_train=40, cell_weight=0.5)  # fmt: skip
    result = train_text2im(cfg, progress=False)
    assert all(np.isfinite(result.losses))
    model = result.model
    assert model.config["cells"] and model.unet.config["cell_channels"] == CELL_DIM
    assert not model.text_config.causal
    path = save_cond(CondModel.from_training(result), tmp_path / "c.safetensors")
    back = load_cond(path).denoiser
    tokens = C.encode_batch(["a red circle left of a blue square"])
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    cells = token_cells(tokens, S.from_objects([RED_LEFT[0]]))
    with no_grad():
        np.testing.assert_array_equal(
            back(x, [10], back.embed(tokens, None, cells)).data,
            model(x, [10], model.embed(tokens, None, cells)).data,
        )
    from minigen.synthesis.sampling import Text2Im

    t2i = Text2Im(cond=CondModel(back, result.schedule))
    a = t2i.sample(CAPS[0], 3, method="cfg", steps=4, seed=1)
    np.testing.assert_array_equal(a, t2i.sample(CAPS[0], 3, method="cfg", steps=4, seed=1))
    assert a.shape == (3, 3, 16, 16) and np.isfinite(a).all()
    for bad in (dict(cell_weight=-1.0), dict(kind="scenes", cell_weight=1.0)):
        with pytest.raises(ValueError, match="cell_weight"):
            Text2ImConfig(**{"kind": "cond", **bad})
