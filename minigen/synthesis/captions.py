"""Captions of the scenes: a small closed grammar, its checkable properties, a word tokenizer.

The grammar (every caption the generator writes, and every caption the checker reads):

    caption  := clause ("and" clause)*
    clause   := thing [relation thing]
    thing    := "a" colour shape
    relation := "left of" | "right of" | "above" | "below"

A caption means a list of properties, each true or false of an image:

    Exists(t)           some object has t's colour and shape;
    Relation(a, rel, b) two distinct objects, one an a, one a b, stand in rel
                        (a left of b: x_a < x_b - cell / 2; a above b: y_a < y_b - cell / 2).

Every object mentioned gets an Exists property, and every relation clause a Relation, so
"a red circle above a blue square" is three properties. The picoclvr score of an image is the
fraction of its caption's properties that hold. Words map to ids with <pad> = 0, <bos> = 1,
<eos> = 2; a caption is encoded as [<bos>, w_1, ..., w_n, <eos>, <pad>, ...] of length MAX_LEN.

`make_split` holds out some (colour, shape) pairs and (colour, relation, colour) triples: the
training set never shows them, every test caption uses one, so a text-to-image model's score
on the test captions measures how it composes words it has only seen in other combinations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from minigen.checks import closest
from minigen.synthesis.scenes import (
    COLOURS,
    SHAPES,
    SceneObject,
    Scenes,
    concat,
    generate,
)

__all__ = [
    "RELATIONS",
    "CONVERSE",
    "VOCAB",
    "PAD",
    "BOS",
    "EOS",
    "MAX_LEN",
    "Thing",
    "Exists",
    "Relation",
    "Property",
    "describe",
    "parse_caption",
    "words",
    "encode",
    "encode_batch",
    "decode",
    "CaptionedScenes",
    "Split",
    "caption_scenes",
    "is_held_out",
    "make_split",
]

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# a rel b  <=>  b CONVERSE[rel] a
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

SPECIALS = ("<pad>", "<bos>", "<eos>")
VOCAB: tuple[str, ...] = (
    *SPECIALS,
    "a",
    "and",
    *COLOURS,
    *SHAPES,
    *dict.fromkeys(w for r in RELATIONS for w in r.split()),  # left, of, right, above, below
)
PAD, BOS, EOS = 0, 1, 2
MAX_LEN = 20  # tokens with <bos> and <eos>: fits two relation clauses (19); 3 objects need 14
_ID = {w: i for i, w in enumerate(VOCAB)}


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str

    def __str__(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True)
class Exists:
    thing: Thing

    def __str__(self) -> str:
        return f"there is {self.thing}"


@dataclass(frozen=True)
class Relation:
    a: Thing
    relation: str  # one of RELATIONS
    b: Thing

    def __str__(self) -> str:
        return f"{self.a} {self.relation} {self.b}"


Property = Exists | Relation


# ----------------------------------------------------------------------------- writing


def _relations_that_hold(a: SceneObject, b: SceneObject) -> list[str]:
    """The relation words true of a with respect to b (at least one when the cells differ)."""
    out = []
    if a.col != b.col:
        out.append("left of" if a.col < b.col else "right of")
    if a.row != b.row:
        out.append("above" if a.row < b.row else "below")
    return out


def describe(
    objects: Sequence[SceneObject],
    seed: int | np.random.Generator | None = 0,
    *,
    p_relation: float = 0.75,
) -> str:
    """A true caption mentioning every object: consecutive objects (in random order) are paired
    by a relation clause with probability p_relation, otherwise named alone."""
    if not objects:
        raise ValueError("cannot describe a scene without objects")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    order = [objects[i] for i in rng.permutation(len(objects))]
    clauses, i = [], 0
    while i < len(order):
        a = order[i]
        name = str(Thing(a.colour, a.shape))
        if i + 1 < len(order) and rng.random() < p_relation:
            b = order[i + 1]
            rels = _relations_that_hold(a, b)
            if not rels:
                raise ValueError(f"objects {a} and {b} share a cell")
            rel = rels[rng.integers(len(rels))]
            clauses.append(f"{name} {rel} {Thing(b.colour, b.shape)}")
            i += 2
        else:
            clauses.append(name)
            i += 1
    return " and ".join(clauses)


# ----------------------------------------------------------------------------- reading


def words(caption: str) -> list[str]:
    """The caption's words: lower-cased, split on white space; raises on an empty caption."""
    if not isinstance(caption, str):
        raise TypeError(f"a caption is a str, got {type(caption).__name__}")
    out = caption.lower().split()
    if not out:
        raise ValueError("empty caption: a caption needs at least one word, e.g. 'a red circle'")
    for w in out:
        if w not in _ID or w in SPECIALS:
            close = closest(w, VOCAB[len(SPECIALS) :])  # by edit distance, a typo away
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ValueError(
                f"unknown word {w!r} in caption {caption!r}{hint}; "
                f"the vocabulary is: {' '.join(VOCAB[len(SPECIALS) :])}"
            )
    return out


def parse_caption(caption: str) -> list[Property]:
    """The properties a caption asserts (Exists for each thing named, Relation per relation
    clause), in order, without repeats; raises ValueError naming the first word that breaks
    the grammar."""
    ws = words(caption)
    pos = 0

    def fail(expected: str) -> ValueError:
        got = repr(ws[pos]) if pos < len(ws) else "the end"
        return ValueError(f"caption {caption!r}: expected {expected} at word {pos + 1}, got {got}")

    def take(options: Sequence[str], what: str) -> str:
        nonlocal pos
        if pos >= len(ws) or ws[pos] not in options:
            raise fail(what)
        pos += 1
        return ws[pos - 1]

    def thing() -> Thing:
        take(("a",), "'a'")
        colour = take(COLOURS, f"a colour ({', '.join(COLOURS)})")
        return Thing(colour, take(SHAPES, f"a shape ({', '.join(SHAPES)})"))

    props: list[Property] = []
    while True:
        a = thing()
        props.append(Exists(a))
        if pos < len(ws) and ws[pos] != "and":
            rel = take(("left", "right", "above", "below"), "a relation or 'and'")
            if rel in ("left", "right"):
                take(("of",), "'of'")
                rel += " of"
            b = thing()
            props += [Exists(b), Relation(a, rel, b)]
        if pos == len(ws):
            return list(dict.fromkeys(props))
        take(("and",), "'and'")


# ----------------------------------------------------------------------------- tokenizer


def encode(caption: str, max_len: int = MAX_LEN) -> np.ndarray:
    """Token ids (max_len,) int64: <bos> words <eos> then <pad>; raises if it does not fit."""
    ws = words(caption)
    if len(ws) + 2 > max_len:
        raise ValueError(
            f"caption {caption!r} has {len(ws)} words: with <bos> and <eos> it needs "
            f"{len(ws) + 2} tokens, more than max_len={max_len}"
        )
    ids = np.full(max_len, PAD, dtype=np.int64)  # (L,)
    ids[: len(ws) + 2] = [BOS, *(_ID[w] for w in ws), EOS]
    return ids


def encode_batch(captions: Sequence[str], max_len: int = MAX_LEN) -> np.ndarray:
    """Token ids of many captions: (N, max_len) int64."""
    out = np.full((len(captions), max_len), PAD, dtype=np.int64)  # (N, L)
    for i, c in enumerate(captions):
        out[i] = encode(c, max_len)
    return out


def decode(ids: Sequence[int] | np.ndarray) -> str:
    """The caption of a row of ids: skips <pad> and <bos>, stops at the first <eos>."""
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
        if not 0 <= i < len(VOCAB):
            raise ValueError(f"token id {i} outside the vocabulary of {len(VOCAB)} words")
        if i == EOS:
            break
        if i not in (PAD, BOS):
            out.append(VOCAB[i])
    return " ".join(out)


# ----------------------------------------------------------------------------- data sets


@dataclass
class CaptionedScenes:
    """Scenes with one true caption each, its tokens and its properties."""

    scenes: Scenes
    captions: list[str]
    tokens: np.ndarray  # (N, L) int64
    properties: list[list[Property]]

    @property
    def images(self) -> np.ndarray:
        return self.scenes.images  # (N, 3, H, W)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, idx: np.ndarray | slice) -> CaptionedScenes:
        """The items selected by an index array or a slice."""
        keep = np.arange(len(self))[idx]
        return CaptionedScenes(
            self.scenes[keep],
            [self.captions[i] for i in keep],
            self.tokens[keep],
            [self.properties[i] for i in keep],
        )


def caption_scenes(
    scenes: Scenes,
    seed: int | np.random.Generator | None = 0,
    *,
    p_relation: float = 0.75,
    max_len: int = MAX_LEN,
) -> CaptionedScenes:
    """Describe every scene (see `describe`), tokenize and parse the captions."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    caps = [describe(scenes.objects(i), rng, p_relation=p_relation) for i in range(len(scenes))]
    return CaptionedScenes(
        scenes, caps, encode_batch(caps, max_len), [parse_caption(c) for c in caps]
    )


@dataclass
class Split:
    """Training and held-out sets: every held-out caption names a held-out thing or relation,
    no training caption does, and no training image contains a held-out thing."""

    train: CaptionedScenes
    test: CaptionedScenes
    held_out_things: tuple[Thing, ...]
    held_out_relations: tuple[tuple[str, str, str], ...]  # (colour of a, relation, colour of b)


def is_held_out(
    props: Sequence[Property],
    things: Sequence[Thing],
    relations: Sequence[tuple[str, str, str]],
) -> bool:
    """Whether the properties mention a held-out thing or (colour, relation, colour) triple."""
    for p in props:
        if isinstance(p, Exists) and p.thing in things:
            return True
        if isinstance(p, Relation) and (p.a.colour, p.relation, p.b.colour) in relations:
            return True
    return False


def _collect(
    n: int,
    rng: np.random.Generator,
    want: bool,
    held_things: tuple[Thing, ...],
    held_relations: tuple[tuple[str, str, str], ...],
    **kw: object,
) -> CaptionedScenes:
    """Generate scenes in batches until n of them are (or are not) held out."""
    parts = [caption_scenes(generate(0, rng, **kw))]  # type: ignore[arg-type]
    have, tries = 0, 0
    while have < n:
        tries += 1
        if tries > 1000:  # pragma: no cover - only for a split that holds out nearly nothing
            raise RuntimeError(f"could not collect {n} scenes with held_out={want}")
        batch = caption_scenes(generate(max(4 * (n - have), 64), rng, **kw), rng)  # type: ignore[arg-type]
        held = np.array(
            [is_held_out(p, held_things, held_relations) for p in batch.properties], bool
        )
        parts.append(batch[np.flatnonzero(held == want)[: n - have]])
        have += len(parts[-1])
    return CaptionedScenes(
        concat([p.scenes for p in parts]),
        [c for p in parts for c in p.captions],
        np.concatenate([p.tokens for p in parts]),
        [q for p in parts for q in p.properties],
    )


def make_split(
    n_train: int,
    n_test: int,
    seed: int | np.random.Generator | None = 0,
    *,
    n_things: int = 4,
    n_relations: int = 2,
    size: int = 16,
    max_objects: int = 3,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Split:
    """A train / held-out split for measuring generalisation to unseen combinations.

    n_things (colour, shape) pairs, with distinct colours and shapes, never appear in training
    images; n_relations (colour, relation, colour) triples (and their converses: red left of
    blue is blue right of red) never appear in training captions. Every test caption mentions
    at least one of them. Each colour, shape and relation word still appears in training
    (given a few hundred training scenes).
    """
    if not 0 <= n_things <= len(COLOURS):
        raise ValueError(f"n_things must be in [0, {len(COLOURS)}], got {n_things}")
    if not 0 <= n_relations <= len(COLOURS) * (len(COLOURS) - 1) * 2:
        raise ValueError(f"n_relations must be in [0, {len(COLOURS) * (len(COLOURS) - 1) * 2}]")
    if n_things + n_relations == 0 and n_test > 0:
        raise ValueError("nothing is held out: set n_things or n_relations > 0")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    colours, shapes = rng.permutation(len(COLOURS)), rng.permutation(len(SHAPES))
    things = tuple(
        Thing(COLOURS[colours[i]], SHAPES[shapes[i % len(SHAPES)]]) for i in range(n_things)
    )
    # canonical triples (a, "left of" | "above", b), a != b, plus their converses
    pairs = [(a, r, b) for a in COLOURS for b in COLOURS if a != b for r in ("left of", "above")]
    chosen = [pairs[i] for i in rng.choice(len(pairs), n_relations, replace=False)]
    relations = tuple(t for a, r, b in chosen for t in ((a, r, b), (b, CONVERSE[r], a)))
    allowed = [(c, s) for c in COLOURS for s in SHAPES if Thing(c, s) not in things]
    kw = {"size": size, "max_objects": max_objects, "value_range": value_range}
    train = _collect(n_train, rng, False, things, relations, things=allowed, **kw)
    test = _collect(n_test, rng, True, things, relations, **kw)
    return Split(train, test, things, relations)
