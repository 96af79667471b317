"""``tree_conv`` (tree-based convolution, TBCNN): each node's patch is itself and its
descendants up to ``max_depth``, every member weighted by three coefficients (top, left,
right) from its depth and its place among its siblings; the patch features go through
one [3 * F, output_size * num_filters] matrix.

The trees are small host structures (int edge lists, 1-based node ids, a (0, 0) pair
ending the list), so the coefficient matrices are built on the host; the feature maths
is three matrix products per example.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op


def _tree_infer(ctx: ShapeContext) -> None:
    x, e, w = ctx.shape("NodesVector"), ctx.shape("EdgeSet"), ctx.shape("Filter")
    if len(x) != 3 or len(e) != 3 or e[2] != 2 or len(w) != 4 or w[1] != 3 or (x[2] > 0 and w[0] != x[2]):
        raise ctx.fail("need NodesVector [N, nodes, F], EdgeSet [N, edges, 2] and Filter [F, 3, out, num_filters]")
    if int(ctx.attr("max_depth")) < 1:
        raise ctx.fail(f"max_depth must be >= 1, got {ctx.attr('max_depth')}")
    ctx.set("Out", (x[0], x[1], w[2], w[3]), ctx.dtype("NodesVector"), 0)


def coefficients(edges: np.ndarray, n_nodes: int, max_depth: int) -> np.ndarray:
    """[3, patches, nodes]: the (left, right, top) weight of node v in the patch rooted at
    each node, as fluid's tree2col defines them."""
    children: dict[int, list[int]] = {}
    count = 0
    for u, v in edges.tolist():
        if u == 0 or v == 0:
            break
        if not (0 < u <= n_nodes and 0 < v <= n_nodes):
            raise InvalidArgumentError(f"op 'tree_conv': edge ({u}, {v}) names a node outside 1 ... {n_nodes}")
        children.setdefault(u, []).append(v)
        count += 1
    n_patches = count + 1
    coef = np.zeros((3, n_patches, n_nodes))
    for root in range(1, n_patches + 1):
        stack = [(root, 1, 1, 0)]  # (node, 1-based index among its siblings, sibling count, depth)
        while stack:
            node, index, siblings, depth = stack.pop()
            top = (max_depth - depth) / max_depth
            left = (1 - top) * (0.5 if siblings == 1 else (index - 1) / (siblings - 1))
            coef[:, root - 1, node - 1] += (left, (1 - top) * (1 - left), top)
            kids = children.get(node, [])
            if depth + 1 < max_depth:
                stack.extend((k, i + 1, len(kids), depth + 1) for i, k in enumerate(kids))
    return coef


def _per_example(ctx: KernelContext) -> list[Any]:
    x = ctx.x("NodesVector")
    edges = to_numpy(ctx.x("EdgeSet")).astype(np.int64)
    depth = int(ctx.attrs["max_depth"])
    return [ctx.xp.asarray(coefficients(edges[i], x.shape[1], depth).astype(x.dtype)) for i in range(x.shape[0])]


def _patches(xp: Any, coef: Any, feats: Any) -> Any:
    """[patches, F * 3] with (left, right, top) interleaved per feature, as Filter's [F, 3] rows."""
    return xp.einsum("kpv,vf->pfk", coef, feats).reshape(coef.shape[1], -1)


@register_op("tree_conv", _tree_infer, no_grad_inputs=("EdgeSet",), attrs={"max_depth": 2})
def tree_conv(ctx: KernelContext) -> None:
    """Out[n, p] = patch features of node p's subtree (depth < max_depth) times Filter;
    rows past the tree's nodes stay zero."""
    xp, x, w = ctx.xp, ctx.x("NodesVector"), ctx.x("Filter")
    out = xp.zeros((x.shape[0], x.shape[1], w.shape[2] * w.shape[3]), dtype=x.dtype)
    w2 = w.reshape(-1, w.shape[2] * w.shape[3])
    for i, coef in enumerate(_per_example(ctx)):  # one example's tree at a time
        out[i, :coef.shape[1]] = _patches(xp, coef, x[i]) @ w2
    ctx.out("Out", out.reshape(x.shape[:2] + w.shape[2:]))


@register_grad("tree_conv")
def tree_conv_grad(ctx: KernelContext) -> None:
    xp, x, w = ctx.xp, ctx.x("NodesVector"), ctx.x("Filter")
    g = ctx.x("Out@GRAD").reshape(x.shape[0], x.shape[1], -1)
    w2 = w.reshape(-1, w.shape[2] * w.shape[3])
    dx, dw = xp.zeros_like(x), xp.zeros_like(w2)
    for i, coef in enumerate(_per_example(ctx)):
        gp = g[i, :coef.shape[1]]
        dw += _patches(xp, coef, x[i]).T @ gp
        dpatch = (gp @ w2.T).reshape(coef.shape[1], x.shape[2], 3)
        dx[i] = xp.einsum("kpv,pfk->vf", coef, dpatch)
    if ctx.wants("NodesVector@GRAD"):
        ctx.out("NodesVector@GRAD", dx)
    if ctx.wants("Filter@GRAD"):
        ctx.out("Filter@GRAD", dw.reshape(w.shape))
