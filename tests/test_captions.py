"""Captions: the grammar, the tokenizer and the train / held-out split."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigen.synthesis import captions as C
from minigen.synthesis.mirrors import mirror_tokens
from minigen.synthesis.scenes import COLOURS, SHAPES, from_objects, generate
from tests.strategies import scene_objects


def _true_on_grid(rel: C.Relation, objects) -> bool:
    """The relation read off the grid cells of the objects (not through the checker)."""
    for a in objects:
        for b in objects:
            if a is b or (a.colour, a.shape) != (rel.a.colour, rel.a.shape):
                continue
            if (b.colour, b.shape) != (rel.b.colour, rel.b.shape):
                continue
            if {
                "left of": a.col < b.col,
                "right of": a.col > b.col,
                "above": a.row < b.row,
                "below": a.row > b.row,
            }[rel.relation]:
                return True
    return False


def test_vocabulary_is_closed_and_special_ids_come_first():
    assert C.VOCAB[C.PAD] == "<pad>" and C.VOCAB[C.BOS] == "<bos>" and C.VOCAB[C.EOS] == "<eos>"
    assert len(set(C.VOCAB)) == len(C.VOCAB)
    grammar_words = {"a", "and", *COLOURS, *SHAPES, *" ".join(C.RELATIONS).split()}
    assert set(C.VOCAB[3:]) == grammar_words


@given(objects=scene_objects(), seed=st.integers(0, 2**16), p=st.sampled_from([0.0, 0.5, 1.0]))
def test_describe_is_true_and_names_every_object(objects, seed, p):
    caption = C.describe(objects, seed, p_relation=p)
    props = C.parse_caption(caption)
    named = {(q.thing.colour, q.thing.shape) for q in props if isinstance(q, C.Exists)}
    assert named == {(o.colour, o.shape) for o in objects}
    relations = [q for q in props if isinstance(q, C.Relation)]
    assert all(_true_on_grid(r, objects) for r in relations)
    if p == 0.0:
        assert not relations
    if p == 1.0:
        assert len(relations) == len(objects) // 2


@given(objects=scene_objects(), seed=st.integers(0, 2**16))
def test_encode_decode_round_trip(objects, seed):
    caption = C.describe(objects, seed)
    ids = C.encode(caption)
    n = len(caption.split())
    assert ids.shape == (C.MAX_LEN,) and ids.dtype == np.int64
    assert ids[0] == C.BOS and ids[n + 1] == C.EOS and (ids[n + 2 :] == C.PAD).all()
    assert not np.isin(ids[1 : n + 1], [C.PAD, C.BOS, C.EOS]).any()
    assert C.decode(ids) == caption
    assert C.encode(caption.upper().replace(" ", "  ")).tolist() == ids.tolist()


def test_encode_batch_stacks_rows():
    caps = ["a red circle", "a blue cross above a green square"]
    out = C.encode_batch(caps, max_len=12)
    assert out.shape == (2, 12)
    assert [C.decode(r) for r in out] == caps


def test_unknown_word_is_named_with_the_closest_words():
    with pytest.raises(ValueError, match="'circel'") as err:
        C.encode("a red circel")
    assert "closest: circle" in str(err.value) and "vocabulary" in str(err.value)
    with pytest.raises(ValueError, match="'<pad>'"):
        C.encode("a red <pad> circle")  # special tokens are not words


@pytest.mark.parametrize("caption", ["", "   \n"])
def test_empty_caption_raises(caption):
    with pytest.raises(ValueError, match="empty caption"):
        C.encode(caption)
    with pytest.raises(ValueError, match="empty caption"):
        C.parse_caption(caption)


def test_too_long_caption_raises_with_its_length():
    caption = " and ".join(["a red circle"] * 6)  # 23 words
    with pytest.raises(ValueError, match="23 words"):
        C.encode(caption)
    assert C.decode(C.encode(caption, max_len=25)) == caption


def test_decode_stops_at_eos_and_rejects_foreign_ids():
    ids = C.encode("a red circle").tolist()
    assert C.decode(ids + [C.VOCAB.index("blue")]) == "a red circle"
    with pytest.raises(ValueError, match="99"):
        C.decode([C.BOS, 99])


@pytest.mark.parametrize(
    ("caption", "where"),
    [
        ("red circle", "'a' at word 1"),
        ("a circle", "colour .* at word 2"),
        ("a red", "shape .* at word 3, got the end"),
        ("a red circle above", "'a' at word 5"),
        ("a red circle left a blue square", "'of' at word 5"),
        ("a red circle a blue square", "relation or 'and' at word 4"),
        ("a red circle and", "'a' at word 5"),
    ],
)
def test_grammar_errors_name_the_position(caption, where):
    with pytest.raises(ValueError, match=where):
        C.parse_caption(caption)


def test_parse_caption_lists_exists_then_relation_without_repeats():
    props = C.parse_caption("a red circle left of a blue square and a red circle")
    red, blue = C.Thing("red", "circle"), C.Thing("blue", "square")
    assert props == [C.Exists(red), C.Exists(blue), C.Relation(red, "left of", blue)]
    assert str(props[2]) == "a red circle left of a blue square"


def test_converse_is_an_involution():
    for r in C.RELATIONS:
        assert C.CONVERSE[C.CONVERSE[r]] == r and C.CONVERSE[r] != r


def test_caption_scenes_pairs_each_image_with_its_caption():
    sc = generate(20, 0)
    data = C.caption_scenes(sc, 1)
    assert len(data) == 20 and data.tokens.shape == (20, C.MAX_LEN)
    for i in range(20):
        assert C.decode(data.tokens[i]) == data.captions[i]
        assert data.properties[i] == C.parse_caption(data.captions[i])
    one = C.caption_scenes(from_objects([sc.objects(3)]), 0)
    assert one.images.shape == (1, 3, 16, 16)


@pytest.fixture(scope="module")
def split():
    return C.make_split(300, 100, seed=7)


def test_split_sizes_and_determinism(split):
    assert len(split.train) == 300 and len(split.test) == 100
    again = C.make_split(300, 100, seed=7)
    assert again.train.captions == split.train.captions
    np.testing.assert_array_equal(again.test.images, split.test.images)


def test_split_keeps_held_out_combinations_out_of_training(split):
    things, rels = split.held_out_things, split.held_out_relations
    assert len(things) == 4 and len(rels) == 4
    assert len({t.colour for t in things}) == 4 and len({t.shape for t in things}) == 4
    for a, r, b in rels:  # closed under the converse
        assert (b, C.CONVERSE[r], a) in rels
    assert not any(C.is_held_out(p, things, rels) for p in split.train.properties)
    assert all(C.is_held_out(p, things, rels) for p in split.test.properties)
    sc = split.train.scenes
    seen = {(o.colour, o.shape) for n in range(len(sc)) for o in sc.objects(n)}
    assert not seen & {(t.colour, t.shape) for t in things}


def test_every_word_is_still_seen_in_training(split):
    words = {w for c in split.train.captions for w in c.split()}
    assert set(C.VOCAB[3:]) <= words


def test_split_rejects_impossible_requests():
    with pytest.raises(ValueError, match="n_things"):
        C.make_split(1, 1, n_things=len(COLOURS) + 1)
    with pytest.raises(ValueError, match="nothing is held out"):
        C.make_split(1, 1, n_things=0, n_relations=0)


@given(objects=scene_objects(), seed=st.integers(0, 1000))
def test_the_mirrored_caption_describes_the_mirrored_scene(objects, seed):
    from minigen.synthesis.checker import check, parse_batch
    from minigen.synthesis.scenes import mirror

    cap = C.describe(objects, seed)
    tokens = C.encode_batch([cap])
    mirrored = mirror_tokens(tokens)
    np.testing.assert_array_equal(mirror_tokens(mirrored), tokens)
    swap = {"left": "right", "right": "left"}
    assert C.decode(mirrored[0]) == " ".join(swap.get(w, w) for w in cap.split())
    found = parse_batch(mirror(from_objects([objects]).images))
    assert check(found[0], C.decode(mirrored[0]), 16).fraction == 1.0
