"""Losses over large label spaces: ``nce`` (noise-contrastive estimation),
``hierarchical_sigmoid`` (``layers.hsigmoid``) and ``sample_logits`` (behind
``layers.sampled_softmax_with_cross_entropy``).

Both touch only a few rows of their [classes, D] weight per example, so with
``is_sparse`` the weight's gradient is a SelectedRows of those rows.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import scatter_add, to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from ..scope import SelectedRows
from .activation import _sigmoid

SAMPLERS = ("uniform", "log_uniform", "custom_dist")


def _weight_grad(ctx: KernelContext, rows: Any, values: Any, like: Any) -> Any:
    """d(table) from per-use rows and gradients: SelectedRows when is_sparse, else dense."""
    if ctx.attrs.get("is_sparse"):
        return SelectedRows(to_numpy(rows).reshape(-1), values, like.shape[0])
    dw = ctx.xp.zeros(like.shape, like.dtype)
    scatter_add(dw, rows.reshape(-1), values)
    return dw


def _checked_labels(ctx: KernelContext, slot: str, classes: int, op: str) -> np.ndarray:
    lab = to_numpy(ctx.x(slot)).astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= classes):
        bad = int(lab.max() if lab.max() >= classes else lab.min())
        raise InvalidArgumentError(f"op '{op}': {slot} '{ctx.ins[slot][0]}' holds {bad}, outside [0, {classes})")
    return lab


# --------------------------------------------------------------------- nce
def _nce_infer(ctx: ShapeContext) -> None:
    x, lab, w = ctx.var("Input"), ctx.var("Label"), ctx.var("Weight")
    classes, neg = int(ctx.attr("num_total_classes")), int(ctx.attr("num_neg_samples"))
    if len(x.shape) != 2 or len(lab.shape) != 2:
        raise ctx.fail("Input must be [N, D] and Label [N, num_true]")
    if tuple(w.shape) != (classes, x.shape[1]) and x.shape[1] > 0:
        raise ctx.fail(f"Weight must be [num_total_classes={classes}, {x.shape[1]}], got {list(w.shape)}")
    if neg < 1 or classes < 2:
        raise ctx.fail(f"need num_neg_samples >= 1 and num_total_classes >= 2, got {neg} and {classes}")
    sampler = ctx.attr("sampler")
    if sampler not in SAMPLERS:
        raise ctx.fail(f"sampler {sampler!r} is not one of {list(SAMPLERS)}")
    if sampler == "custom_dist" and len(ctx.attr("custom_dist")) != classes:
        raise ctx.fail(f"custom_dist must hold num_total_classes={classes} probabilities")
    width = lab.shape[1] + neg if lab.shape[1] > 0 else -1
    ctx.set("Cost", (x.shape[0], 1), x.dtype, 0)
    ctx.set("SampleLogits", (x.shape[0], width), x.dtype, 0)
    ctx.set("SampleLabels", (x.shape[0], width), "int64", 0)


def _class_probs(attrs: dict) -> np.ndarray:
    """The noise distribution q over the classes."""
    c = int(attrs["num_total_classes"])
    if attrs["sampler"] == "uniform":
        return np.full(c, 1.0 / c)
    if attrs["sampler"] == "log_uniform":  # Zipfian: P(k) = log((k + 2) / (k + 1)) / log(c + 1)
        k = np.arange(c, dtype=np.float64)
        return np.log((k + 2) / (k + 1)) / np.log(c + 1)
    p = np.asarray(attrs["custom_dist"], dtype=np.float64)
    return p / p.sum()


def _negatives(ctx: KernelContext, n: int) -> np.ndarray:
    a = ctx.attrs
    fixed = list(a.get("custom_neg_classes") or [])
    if fixed:  # the same negatives for every example (tests and reproducible runs)
        return np.tile(np.asarray(fixed, dtype=np.int64), (n, 1))
    seed = int(a["seed"])
    rng = np.random.default_rng(seed) if seed else ctx.rng
    q = _class_probs(a)
    return rng.choice(q.size, size=(n, int(a["num_neg_samples"])), p=q).astype(np.int64)


def _nce_logits(ctx: KernelContext, labels: Any) -> Any:
    """sigmoid(x_i . w_c + b_c) for every sampled class c of example i: [N, S]."""
    xp, x, w = ctx.xp, ctx.x("Input"), ctx.x("Weight")
    z = xp.einsum("nd,nsd->ns", x, w[labels])
    if ctx.has("Bias"):
        z = z + ctx.x("Bias").reshape(-1)[labels]
    return _sigmoid(xp, z, None)


def _nce_noise(ctx: KernelContext, labels: np.ndarray, dtype: Any) -> Any:
    """b = num_neg_samples * q(c) for every sampled class."""
    return ctx.xp.asarray((_class_probs(ctx.attrs)[labels] * int(ctx.attrs["num_neg_samples"])).astype(dtype))


@register_op("nce", _nce_infer, no_grad_inputs=("Label", "SampleWeight"), grad_outputs=("Cost",),
             attrs={"num_total_classes": 2, "num_neg_samples": 10, "sampler": "uniform", "custom_dist": [],
                    "seed": 0, "is_sparse": False, "custom_neg_classes": []},
             sparse_grad=lambda op: {"Weight"} if op.attrs.get("is_sparse") else set(), random=True)
def nce(ctx: KernelContext) -> None:
    """Cost_i = -sum_true log(s / (s + b)) - sum_neg log(b / (s + b)), s the sigmoid of the
    class logit and b = num_neg_samples * q(class)."""
    xp, x = ctx.xp, ctx.x("Input")
    true = _checked_labels(ctx, "Label", int(ctx.attrs["num_total_classes"]), "nce")
    labels = np.concatenate([true, _negatives(ctx, x.shape[0])], axis=1)
    lab = xp.asarray(labels)
    s = _nce_logits(ctx, lab)
    b = _nce_noise(ctx, labels, x.dtype)
    k = true.shape[1]
    cost = -(xp.log(s[:, :k] / (s[:, :k] + b[:, :k])).sum(1) + xp.log(b[:, k:] / (s[:, k:] + b[:, k:])).sum(1))
    if ctx.has("SampleWeight"):
        cost = cost * ctx.x("SampleWeight").reshape(-1)
    ctx.out("Cost", cost.reshape(-1, 1).astype(x.dtype, copy=False))
    ctx.out("SampleLogits", s)
    ctx.out("SampleLabels", lab)


@register_grad("nce")
def nce_grad(ctx: KernelContext) -> None:
    xp, x, w = ctx.xp, ctx.x("Input"), ctx.x("Weight")
    lab = ctx.x("SampleLabels")
    labels = to_numpy(lab).astype(np.int64)
    s = _nce_logits(ctx, lab)
    b = _nce_noise(ctx, labels, x.dtype)
    k = ctx.x("Label").shape[1]
    dz = s * (1 - s) / (s + b)  # d cost / d logit for the negatives
    dz[:, :k] = -b[:, :k] * (1 - s[:, :k]) / (s[:, :k] + b[:, :k])
    g = ctx.x("Cost@GRAD").reshape(-1, 1)
    if ctx.has("SampleWeight"):
        g = g * ctx.x("SampleWeight").reshape(-1, 1)
    dz = dz * g
    if ctx.wants("Input@GRAD"):
        ctx.out("Input@GRAD", xp.einsum("ns,nsd->nd", dz, w[lab]))
    if ctx.wants("Weight@GRAD"):
        vals = (dz[:, :, None] * x[:, None, :]).reshape(-1, x.shape[1])
        ctx.out("Weight@GRAD", _weight_grad(ctx, lab, vals, w))
    if ctx.wants("Bias@GRAD"):
        bias = ctx.x("Bias")
        db = xp.zeros(bias.size, bias.dtype)
        scatter_add(db, lab.reshape(-1), dz.reshape(-1))
        ctx.out("Bias@GRAD", db.reshape(bias.shape))


# ----------------------------------------------------- hierarchical_sigmoid
def _hsig_infer(ctx: ShapeContext) -> None:
    x, w = ctx.var("X"), ctx.var("W")
    classes = int(ctx.attr("num_classes"))
    custom = ctx.has("PathTable")
    if classes < 2:
        raise ctx.fail(f"num_classes must be >= 2, got {classes}")
    if len(x.shape) != 2 or len(w.shape) != 2 or (x.shape[1] > 0 and w.shape[1] != x.shape[1]):
        raise ctx.fail("X must be [N, D] and W [nodes, D]")
    if not custom and w.shape[0] != classes - 1:
        raise ctx.fail(f"W must have num_classes - 1 = {classes - 1} rows (one per inner node), got {w.shape[0]}")
    if custom != ctx.has("PathCode"):
        raise ctx.fail("PathTable and PathCode go together")
    length = ctx.shape("PathTable")[1] if custom else max(int(classes - 1).bit_length(), 1)
    ctx.set("Out", (x.shape[0], 1), x.dtype, 0)
    ctx.set("PreOut", (x.shape[0], length), x.dtype, 0)


def _paths(ctx: KernelContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per example: inner-node ids [N, L] (0 where padded), branch bits and the valid mask."""
    if ctx.has("PathTable"):
        table = to_numpy(ctx.x("PathTable")).astype(np.int64)
        code = to_numpy(ctx.x("PathCode")).astype(np.int64)
        nodes = ctx.x("W").shape[0]
        mask = table >= 0
        if (table[mask] >= nodes).any():
            raise InvalidArgumentError(f"op 'hierarchical_sigmoid': PathTable '{ctx.ins['PathTable'][0]}' "
                                       f"names a node >= {nodes} (W's rows)")
        return np.where(mask, table, 0), np.where(mask, code, 0), mask
    classes = int(ctx.attrs["num_classes"])
    c = _checked_labels(ctx, "Label", classes, "hierarchical_sigmoid").reshape(-1) + classes
    length = max(int(classes - 1).bit_length(), 1)
    j = np.arange(length)
    depth = np.floor(np.log2(c)).astype(np.int64)  # path length of each label's leaf
    mask = j[None, :] < depth[:, None]
    node = (c[:, None] >> (j[None, :] + 1)) - 1
    bit = (c[:, None] >> j[None, :]) & 1
    return np.where(mask, node, 0), np.where(mask, bit, 0), mask


def _hsig_pre(ctx: KernelContext) -> tuple[Any, Any, Any, Any]:
    xp, x, w = ctx.xp, ctx.x("X"), ctx.x("W")
    node, bit, mask = _paths(ctx)
    node, bit, m = xp.asarray(node), xp.asarray(bit.astype(x.dtype)), xp.asarray(mask.astype(x.dtype))
    pre = xp.einsum("nd,nld->nl", x, w[node])
    if ctx.has("Bias"):
        pre = pre + ctx.x("Bias").reshape(-1)[node]
    return xp.clip(pre, -40.0, 40.0) * m, node, bit, m


@register_op("hierarchical_sigmoid", _hsig_infer, no_grad_inputs=("Label", "PathTable", "PathCode"),
             grad_outputs=("Out",), attrs={"num_classes": 2, "is_sparse": False},
             sparse_grad=lambda op: {"W"} if op.attrs.get("is_sparse") else set())
def hierarchical_sigmoid(ctx: KernelContext) -> None:
    """Out_i = sum over the inner nodes on label i's path of softplus(pre) - bit * pre, where
    pre = x_i . W[node] + b[node] (clipped to [-40, 40]).  The default tree is the complete
    binary tree over num_classes leaves; PathTable/PathCode give a custom one."""
    xp = ctx.xp
    pre, _, bit, m = _hsig_pre(ctx)
    out = ((xp.logaddexp(0, pre) - bit * pre) * m).sum(axis=1, keepdims=True)
    ctx.out("Out", out.astype(pre.dtype, copy=False))
    ctx.out("PreOut", pre)


@register_grad("hierarchical_sigmoid")
def hierarchical_sigmoid_grad(ctx: KernelContext) -> None:
    xp, x, w = ctx.xp, ctx.x("X"), ctx.x("W")
    pre, node, bit, m = _hsig_pre(ctx)
    dpre = (_sigmoid(xp, pre, None) - bit) * m * ctx.x("Out@GRAD").reshape(-1, 1)
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", xp.einsum("nl,nld->nd", dpre, w[node]))
    if ctx.wants("W@GRAD"):
        vals = (dpre[:, :, None] * x[:, None, :]).reshape(-1, x.shape[1])
        ctx.out("W@GRAD", _weight_grad(ctx, node, vals, w))
    if ctx.wants("Bias@GRAD"):
        bias = ctx.x("Bias")
        db = xp.zeros(bias.size, bias.dtype)
        scatter_add(db, node.reshape(-1), dpre.reshape(-1))
        ctx.out("Bias@GRAD", db.reshape(bias.shape))


# ------------------------------------------------------------- sample_logits
def _sample_logits_infer(ctx: ShapeContext) -> None:
    x, lab = ctx.shape("Logits"), ctx.shape("Labels")
    s = int(ctx.attr("num_samples"))
    if len(x) != 2 or len(lab) != 2 or s < 1 or (x[1] > 0 and s + lab[1] > x[1] and ctx.attr("uniq")):
        raise ctx.fail("Logits must be [N, K], Labels [N, num_true] and 1 <= num_samples (unique: <= K - num_true)")
    width = lab[1] + s
    for slot, dt in (("Samples", "int64"), ("Probabilities", ctx.dtype("Logits")),
                     ("SampledLogits", ctx.dtype("Logits")), ("SampledLabels", "int64")):
        ctx.set(slot, (x[0], width if slot != "SampledLabels" else lab[1]), dt, 0)


def _draw_unique(rng: np.random.Generator, q: np.ndarray, s: int) -> tuple[np.ndarray, int]:
    """s distinct classes drawn from q by rejection, and the number of draws it took."""
    seen: dict[int, None] = {}
    tries = 0
    while len(seen) < s:
        batch = rng.choice(q.size, size=2 * (s - len(seen)) + 8, p=q)
        for v in batch.tolist():
            tries += 1
            seen.setdefault(v, None)
            if len(seen) == s:
                break
    return np.fromiter(seen, dtype=np.int64, count=s), tries


def _sample_probs(q: np.ndarray, classes: np.ndarray, s: int, tries: int) -> np.ndarray:
    """The chance each class shows up among the samples (fluid's adjustment for unique draws)."""
    p = q[classes]
    return p * s if tries == s else -np.expm1(tries * np.log1p(-np.minimum(p, 1 - 1e-12)))


@register_op("sample_logits", _sample_logits_infer, no_grad_inputs=("Labels",), grad_outputs=("SampledLogits",),
             attrs={"num_samples": 1, "uniq": True, "remove_accidental_hits": True, "seed": 0,
                    "use_customized_samples": False}, random=True)
def sample_logits(ctx: KernelContext) -> None:
    """Per row: the logits of its true labels and of ``num_samples`` shared log-uniform negatives,
    each minus log(probability of being sampled); negatives that are true labels get -1e20."""
    xp, x, a = ctx.xp, ctx.x("Logits"), ctx.attrs
    k = x.shape[1]
    true = _checked_labels(ctx, "Labels", k, "sample_logits")
    seed = int(a["seed"])
    rng = np.random.default_rng(seed) if seed else ctx.rng
    q = _class_probs({"num_total_classes": k, "sampler": "log_uniform"})
    s = int(a["num_samples"])
    if a["uniq"]:
        neg, tries = _draw_unique(rng, q, s)
    else:
        neg, tries = rng.choice(k, size=s, p=q).astype(np.int64), s
    samples = np.concatenate([true, np.tile(neg, (true.shape[0], 1))], axis=1)
    probs = _sample_probs(q, samples, s, tries)
    sampled = x[xp.arange(x.shape[0])[:, None], xp.asarray(samples)] - xp.asarray(np.log(probs).astype(x.dtype))
    if a["remove_accidental_hits"]:
        nt = true.shape[1]
        hits = (samples[:, nt:, None] == true[:, None, :]).any(axis=2)
        sampled[:, nt:] = sampled[:, nt:] - xp.asarray(hits.astype(x.dtype)) * 1e20
    ctx.out("Samples", xp.asarray(samples))
    ctx.out("Probabilities", xp.asarray(probs.astype(x.dtype)))
    ctx.out("SampledLogits", sampled)
    ctx.out("SampledLabels", xp.asarray(np.tile(np.arange(true.shape[1]), (true.shape[0], 1))))


@register_grad("sample_logits")
def sample_logits_grad(ctx: KernelContext) -> None:
    xp, x = ctx.xp, ctx.x("Logits")
    samples = ctx.x("Samples")
    dx = xp.zeros_like(x)
    rows = xp.repeat(xp.arange(x.shape[0]), samples.shape[1])
    scatter_add(dx.reshape(-1), rows * x.shape[1] + samples.reshape(-1), ctx.x("SampledLogits@GRAD").reshape(-1))
    ctx.out("Logits@GRAD", dx)
