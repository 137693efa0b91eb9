"""The table of differentiable ops: how to draw inputs, minigen's call, PyTorch's call.

Used by test_ops_gradcheck.py (central differences) and test_ops_torch.py (PyTorch
float64 oracle). `draw(data)` returns (input arrays, static keyword arguments);
`ours(*tensors, **kw)` and `theirs(torch, *tensors, **kw)` compute the same thing
(`theirs` may return None when PyTorch cannot express that particular draw).
Inputs of non-smooth ops are drawn well separated (no ties, no kinks) so that
central differences are valid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

import minigen.functional as F
from minigen import ops, shape_ops
from minigen.text import gpt_ops
from tests import strategies as S

Draw = Callable[[Any], tuple[list[np.ndarray], dict[str, Any]]]


@dataclass(frozen=True)
class Spec:
    name: str
    draw: Draw
    ours: Callable[..., Any]
    theirs: Callable[..., Any] | None = None
    fd: bool = True  # check against central differences

    def __repr__(self) -> str:
        return self.name


SPECS: list[Spec] = []


def spec(name: str, draw: Draw, ours: Callable, theirs: Callable | None = None, fd: bool = True):
    SPECS.append(Spec(name, draw, ours, theirs, fd))


# ----------------------------------------------------------------------------- draw helpers


def unary(make: Callable[[Any], Any] = S.arrays, **kw: Any) -> Draw:
    return lambda data: ([data.draw(make(S.shapes(), **kw))], {})


def binary(make_b: Callable[[Any], Any] = S.arrays) -> Draw:
    def draw(data):
        sa, sb = data.draw(S.broadcastable_shapes(2))
        return [data.draw(S.arrays(sa)), data.draw(make_b(sb))], {}

    return draw


def separated_pair(data):
    sa, sb = data.draw(S.broadcastable_shapes(2))
    na, nb = int(np.prod(sa)), int(np.prod(sb))
    vals = data.draw(S.separated_arrays((na + nb,)))
    return [vals[:na].reshape(sa), vals[na:].reshape(sb)], {}


def reduce_draw(separated: bool = False, ddof: bool = False) -> Draw:
    def draw(data):
        shape, axis, keepdims = data.draw(S.reduce_args())
        x = data.draw(S.separated_arrays(shape) if separated else S.arrays(shape))
        kw = {"axis": axis, "keepdims": keepdims}
        if ddof:
            n = int(np.prod([shape[a] for a in ops._axes(axis, len(shape))]))
            kw["ddof"] = data.draw(st.sampled_from([0, 1] if n > 1 else [0]))
        return [x], kw

    return draw


def dims(axis: Any, ndim: int) -> tuple[int, ...]:
    return ops._axes(axis, ndim)


# ----------------------------------------------------------------------------- elementwise

spec("add", binary(), lambda a, b: a + b, lambda t, a, b: a + b)
spec("sub", binary(), lambda a, b: a - b, lambda t, a, b: a - b)
spec("mul", binary(), lambda a, b: a * b, lambda t, a, b: a * b)
spec("div", binary(S.nonzero_arrays), lambda a, b: a / b, lambda t, a, b: a / b)
spec("neg", unary(), lambda a: -a, lambda t, a: -a)
spec("add_scalar", unary(), lambda a: 2.5 - a * 3.0, lambda t, a: 2.5 - a * 3.0)


def pow_scalar_draw(data):
    return [data.draw(S.positive_arrays(S.shapes()))], {
        "k": data.draw(st.sampled_from([2, 3, 0.5, -1.5]))
    }


spec("pow_scalar", pow_scalar_draw, lambda a, k: a**k, lambda t, a, k: a**k)


def pow_tensor_draw(data):
    sa, sb = data.draw(S.broadcastable_shapes(2))
    return [data.draw(S.positive_arrays(sa)), data.draw(S.arrays(sb, -2, 2))], {}


spec("pow_tensor", pow_tensor_draw, lambda a, b: a**b, lambda t, a, b: a**b)
spec("rpow", unary(), lambda a: 2.0**a, lambda t, a: 2.0**a)
spec("exp", unary(), ops.exp, lambda t, a: a.exp())
spec("log", unary(S.positive_arrays), ops.log, lambda t, a: a.log())
spec("sqrt", unary(S.positive_arrays), ops.sqrt, lambda t, a: a.sqrt())
spec("tanh", unary(), ops.tanh, lambda t, a: a.tanh())
spec("sigmoid", unary(S.arrays, lo=-30, hi=30), ops.sigmoid, lambda t, a: a.sigmoid())
spec("relu", unary(S.separated_arrays), ops.relu, lambda t, a: a.relu())
spec("silu", unary(), ops.silu, lambda t, a: t.nn.functional.silu(a))
spec("gelu", unary(), ops.gelu, lambda t, a: t.nn.functional.gelu(a))
spec(
    "gelu_tanh",
    unary(),
    lambda a: ops.gelu(a, "tanh"),
    lambda t, a: t.nn.functional.gelu(a, approximate="tanh"),
)
spec("abs", unary(S.separated_arrays), ops.abs, lambda t, a: a.abs())
spec(
    "logsigmoid",
    unary(S.arrays, lo=-30, hi=30),
    F.logsigmoid,
    lambda t, a: t.nn.functional.logsigmoid(a),
)
spec("maximum", separated_pair, ops.maximum, lambda t, a, b: t.maximum(a, b))
spec("minimum", separated_pair, ops.minimum, lambda t, a, b: t.minimum(a, b))


def where_draw(data):
    sc, sa, sb = data.draw(S.broadcastable_shapes(3))
    from hypothesis.extra import numpy as hnp

    cond = data.draw(hnp.arrays(np.bool_, sc))
    return [data.draw(S.arrays(sa)), data.draw(S.arrays(sb))], {"cond": cond}


spec(
    "where",
    where_draw,
    lambda a, b, cond: ops.where(cond, a, b),
    lambda t, a, b, cond: t.where(t.tensor(cond), a, b),
)


def clip_draw(data):
    lo = data.draw(st.sampled_from([None, -1.0, -0.2]))
    hi = data.draw(st.sampled_from([None, 0.3, 1.0] if lo is not None else [0.3, 1.0]))
    return [data.draw(S.separated_arrays(S.shapes()))], {"lo": lo, "hi": hi}


spec("clip", clip_draw, lambda a, lo, hi: a.clip(lo, hi), lambda t, a, lo, hi: a.clamp(lo, hi))

# ----------------------------------------------------------------------------- reductions

spec(
    "sum",
    reduce_draw(),
    lambda a, axis, keepdims: a.sum(axis, keepdims),
    lambda t, a, axis, keepdims: a.sum(dim=dims(axis, a.ndim), keepdim=keepdims),
)
spec(
    "mean",
    reduce_draw(),
    lambda a, axis, keepdims: a.mean(axis, keepdims),
    lambda t, a, axis, keepdims: a.mean(dim=dims(axis, a.ndim), keepdim=keepdims),
)
spec(
    "var",
    reduce_draw(ddof=True),
    lambda a, axis, keepdims, ddof: a.var(axis, keepdims, ddof),
    lambda t, a, axis, keepdims, ddof: a.var(
        dim=dims(axis, a.ndim), keepdim=keepdims, correction=ddof
    ),
)
spec(
    "max",
    reduce_draw(separated=True),
    lambda a, axis, keepdims: a.max(axis, keepdims),
    lambda t, a, axis, keepdims: a.amax(dim=dims(axis, a.ndim), keepdim=keepdims),
)
spec(
    "min",
    reduce_draw(separated=True),
    lambda a, axis, keepdims: a.min(axis, keepdims),
    lambda t, a, axis, keepdims: a.amin(dim=dims(axis, a.ndim), keepdim=keepdims),
)
spec(
    "logsumexp",
    reduce_draw(),
    lambda a, axis, keepdims: a.logsumexp(axis, keepdims),
    lambda t, a, axis, keepdims: a.logsumexp(dim=dims(axis, a.ndim), keepdim=keepdims),
)


def matmul_draw(data):
    sa, sb = data.draw(S.matmul_shapes())
    return [data.draw(S.arrays(sa)), data.draw(S.arrays(sb))], {}


spec("matmul", matmul_draw, lambda a, b: a @ b, lambda t, a, b: a @ b)

# ----------------------------------------------------------------------------- shape ops


def reshape_draw(data):
    shape = data.draw(S.shapes(min_dims=1))
    new = data.draw(
        st.sampled_from([(-1,), tuple(reversed(shape)), (1, *shape), (int(np.prod(shape)), 1)])
    )
    return [data.draw(S.arrays(shape))], {"new": new}


spec("reshape", reshape_draw, lambda a, new: a.reshape(new), lambda t, a, new: a.reshape(new))


def transpose_draw(data):
    shape = data.draw(S.shapes(min_dims=1))
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    return [data.draw(S.arrays(shape))], {"perm": perm}


spec(
    "transpose",
    transpose_draw,
    lambda a, perm: a.transpose(perm),
    lambda t, a, perm: a.permute(perm),
)
spec("T", unary(), lambda a: a.T, lambda t, a: a.permute(tuple(range(a.ndim))[::-1]))


def swapaxes_draw(data):
    shape = data.draw(S.shapes(min_dims=2))
    nd = len(shape)
    return [data.draw(S.arrays(shape))], {
        "i": data.draw(st.integers(-nd, nd - 1)),
        "j": data.draw(st.integers(0, nd - 1)),
    }


spec(
    "swapaxes",
    swapaxes_draw,
    lambda a, i, j: a.swapaxes(i, j),
    lambda t, a, i, j: a.transpose(i, j),
)


def expand_draw(data):
    shape = data.draw(S.shapes())
    return [data.draw(S.arrays(shape))], {
        "axis": data.draw(st.integers(-len(shape) - 1, len(shape)))
    }


spec(
    "expand_dims",
    expand_draw,
    lambda a, axis: a.expand_dims(axis),
    lambda t, a, axis: a.unsqueeze(axis),
)


def squeeze_draw(data):
    shape = data.draw(S.shapes(min_dims=1, max_side=2))
    return [data.draw(S.arrays(shape))], {}


spec("squeeze", squeeze_draw, lambda a: a.squeeze(), lambda t, a: a.squeeze())


def broadcast_draw(data):
    shape = data.draw(S.shapes(max_dims=3, max_side=3))
    target = (2, *(3 if n == 1 else n for n in shape))
    return [data.draw(S.arrays(shape))], {"target": target}


spec(
    "broadcast_to",
    broadcast_draw,
    lambda a, target: a.broadcast_to(target),
    lambda t, a, target: a.expand(target),
)


def concat_draw(data):
    shape = data.draw(S.shapes(min_dims=1, max_dims=3, max_side=3))
    axis = data.draw(st.integers(0, len(shape) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    arrs = [data.draw(S.arrays(shape[:axis] + (n,) + shape[axis + 1 :])) for n in sizes]
    return arrs, {"axis": axis}


spec(
    "concatenate",
    concat_draw,
    lambda *a, axis: shape_ops.concatenate(a, axis),
    lambda t, *a, axis: t.cat(a, dim=axis),
)


def stack_draw(data):
    shape = data.draw(S.shapes(max_dims=2, max_side=3))
    n = data.draw(st.integers(1, 3))
    return [data.draw(S.arrays(shape)) for _ in range(n)], {
        "axis": data.draw(st.integers(0, len(shape)))
    }


spec(
    "stack",
    stack_draw,
    lambda *a, axis: shape_ops.stack(a, axis),
    lambda t, *a, axis: t.stack(a, dim=axis),
)


def split_draw(data):
    shape = list(data.draw(S.shapes(min_dims=1, max_dims=3, max_side=3)))
    axis, pieces = data.draw(st.integers(0, len(shape) - 1)), data.draw(st.integers(1, 3))
    shape[axis] *= pieces
    return [data.draw(S.arrays(tuple(shape)))], {"axis": axis, "pieces": pieces}


def _weighted(parts: list[Any], stack: Callable) -> Any:
    return stack([p * (i + 1.0) for i, p in enumerate(parts)])  # distinct weight per piece


spec(
    "split",
    split_draw,
    lambda a, axis, pieces: _weighted(shape_ops.split(a, pieces, axis), shape_ops.stack),
    lambda t, a, axis, pieces: _weighted(t.chunk(a, pieces, dim=axis), t.stack),
)


def getitem_draw(data):
    shape, idx = data.draw(S.index_args())
    return [data.draw(S.arrays(shape))], {"idx": idx}


def torch_index(t, a, idx):
    if isinstance(idx, np.ndarray):
        return a[t.tensor(idx)]
    if any(isinstance(i, slice) and (i.step or 1) < 0 for i in idx):
        return None  # PyTorch has no negative slice steps
    return a[idx]


spec("getitem", getitem_draw, lambda a, idx: a[idx], torch_index)

# ----------------------------------------------------------------------------- nn ops


def axis_draw(data):
    shape = data.draw(S.shapes(min_dims=1))
    return [data.draw(S.arrays(shape, -5, 5))], {
        "axis": data.draw(st.integers(-len(shape), len(shape) - 1))
    }


spec("softmax", axis_draw, lambda a, axis: F.softmax(a, axis), lambda t, a, axis: a.softmax(axis))
spec(
    "log_softmax",
    axis_draw,
    lambda a, axis: F.log_softmax(a, axis),
    lambda t, a, axis: a.log_softmax(axis),
)


def ce_draw(data):
    lead = data.draw(S.shapes(min_dims=1, max_dims=2, max_side=4))
    C = data.draw(st.integers(2, 5))
    targets = data.draw(
        st.lists(
            st.integers(0, C - 1) | st.just(-100),
            min_size=int(np.prod(lead)),
            max_size=int(np.prod(lead)),
        )
    )
    targets = np.array(targets).reshape(lead)
    targets.flat[0] = 0  # at least one target is not ignored
    return [data.draw(S.arrays((*lead, C)))], {
        "target": targets,
        "reduction": data.draw(st.sampled_from(["mean", "sum", "none"])),
    }


def torch_ce(t, x, target, reduction):
    C = x.shape[-1]
    y = t.nn.functional.cross_entropy(
        x.reshape(-1, C), t.tensor(target.reshape(-1)), reduction=reduction
    )
    return y.reshape(target.shape) if reduction == "none" else y


spec(
    "cross_entropy",
    ce_draw,
    lambda x, target, reduction: F.cross_entropy(x, target, reduction=reduction),
    torch_ce,
)


def same_shape_pair(data):
    shape = data.draw(S.shapes())
    return [data.draw(S.arrays(shape)), data.draw(S.arrays(shape))], {}


spec("mse_loss", same_shape_pair, F.mse_loss, lambda t, a, b: t.nn.functional.mse_loss(a, b))


def linear_draw(data):
    lead = data.draw(S.shapes(min_dims=1, max_dims=2, max_side=3))
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    arrs = [
        data.draw(S.arrays((*lead, n_in))),
        data.draw(S.arrays((n_in, n_out))),
        data.draw(S.arrays((n_out,))),
    ]
    return arrs, {}


spec("linear", linear_draw, F.linear, lambda t, x, w, b: x @ w + b)


def layer_norm_draw(data):
    lead = data.draw(S.shapes(min_dims=0, max_dims=2, max_side=3))
    C = data.draw(st.integers(2, 6))
    return [
        data.draw(S.arrays((*lead, C))),
        data.draw(S.arrays((C,))),
        data.draw(S.arrays((C,))),
    ], {}


spec(
    "layer_norm",
    layer_norm_draw,
    F.layer_norm,
    lambda t, x, w, b: t.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5),
)


def embedding_draw(data):
    V, D = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    ids = np.array(data.draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=8)))
    return [data.draw(S.arrays((V, D)))], {
        "ids": ids.reshape(data.draw(st.sampled_from([(-1,), (1, -1)])))
    }


spec(
    "embedding",
    embedding_draw,
    lambda w, ids: F.embedding(ids, w),
    lambda t, w, ids: t.nn.functional.embedding(t.tensor(ids), w),
)
spec(
    "dropout",
    unary(),
    lambda a: F.dropout(a, 0.3, gen=np.random.default_rng(0)),  # the same mask at every call
)


def attention_draw(data):
    sq, sk, sv = data.draw(S.attention_shapes())
    arrs = [data.draw(S.arrays(sq)), data.draw(S.arrays(sk)), data.draw(S.arrays(sv))]
    return arrs, {"is_causal": data.draw(st.booleans())}


def torch_attention(t, q, k, v, is_causal):
    mask = t.tensor(F.causal_mask(q.shape[-2], k.shape[-2])) if is_causal else None
    return t.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


spec(
    "scaled_dot_product_attention",
    attention_draw,
    lambda q, k, v, is_causal: F.scaled_dot_product_attention(q, k, v, is_causal=is_causal),
    torch_attention,
)


def conv_draw(data):
    a = data.draw(S.conv_args())
    arrs = [
        data.draw(S.arrays(a["x"])),
        data.draw(S.arrays(a["w"])),
        data.draw(S.arrays((a["w"][0],))),
    ]
    return arrs, {"stride": a["stride"], "padding": a["padding"]}


spec(
    "conv2d",
    conv_draw,
    F.conv2d,
    lambda t, x, w, b, stride, padding: t.nn.functional.conv2d(x, w, b, stride, padding),
)


def group_norm_draw(data):
    G, per = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    N, H, W = (
        data.draw(st.integers(1, 2)),
        data.draw(st.integers(1, 3)),
        data.draw(st.integers(1, 3)),
    )
    C = G * per
    if per * H * W == 1:  # a group of one value has no variance to normalise
        H = 2
    return [
        data.draw(S.arrays((N, C, H, W))),
        data.draw(S.arrays((C,))),
        data.draw(S.arrays((C,))),
    ], {"G": G}


spec(
    "group_norm",
    group_norm_draw,
    lambda x, w, b, G: F.group_norm(x, G, w, b),
    lambda t, x, w, b, G: t.nn.functional.group_norm(x, G, w, b),
)


def image_draw(data):
    shape = (
        data.draw(st.integers(1, 2)),
        data.draw(st.integers(1, 2)),
        data.draw(st.integers(2, 5)),
        data.draw(st.integers(2, 5)),
    )
    return [data.draw(S.arrays(shape))], {}


spec("avg_pool2d", image_draw, F.avg_pool2d, lambda t, x: t.nn.functional.avg_pool2d(x, 2))
spec(
    "upsample_nearest2d",
    image_draw,
    F.upsample_nearest2d,
    lambda t, x: t.nn.functional.interpolate(x, scale_factor=2, mode="nearest"),
)


# ----------------------------------------------------------------------------- text (GPT)


def gpt_attention_draw(data):
    shape, n_head = data.draw(S.gpt_attention_args())
    return [data.draw(S.arrays(shape))], {"n_head": n_head}


def torch_causal_self_attention(t, qkv, n_head):
    B, T, C3 = qkv.shape
    q, k, v = qkv.view(B, T, 3, n_head, -1).permute(2, 0, 3, 1, 4)
    y = t.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C3 // 3)


spec(
    "gpt_causal_self_attention",
    gpt_attention_draw,
    lambda qkv, n_head: gpt_ops.causal_self_attention(qkv, n_head),
    torch_causal_self_attention,
)
spec(  # with dropout on the attention weights: one fixed mask (central differences only)
    "gpt_causal_self_attention_dropout",
    gpt_attention_draw,
    lambda qkv, n_head: gpt_ops.causal_self_attention(
        qkv, n_head, dropout=0.3, gen=np.random.default_rng(0)
    ),
)


def gpt_embedding_draw(data):
    a = data.draw(S.gpt_embedding_args())
    wte, wpe = data.draw(S.arrays((a["V"], a["D"]))), data.draw(S.arrays((a["P"], a["D"])))
    return [wte, wpe], {"ids": a["ids"], "start": a["start"]}


spec(
    "gpt_embed_tokens",
    gpt_embedding_draw,
    lambda wte, wpe, ids, start: gpt_ops.embed_tokens(ids, wte, wpe, start),
    lambda t, wte, wpe, ids, start: wte[t.from_numpy(ids)] + wpe[start : start + ids.shape[1]],
)


def lm_head_draw(data):
    shape = data.draw(S.shapes(min_dims=1, max_dims=3))
    V = data.draw(st.integers(1, 5))
    return [data.draw(S.arrays(shape)), data.draw(S.arrays((V, shape[-1])))], {}


spec("gpt_tied_lm_head", lm_head_draw, gpt_ops.tied_lm_head, lambda t, x, w: x @ w.T)
