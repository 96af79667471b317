"""``hash``: fluid's ``layers.hash``, XXH64 of each row's int64 values (their little-endian
bytes) with seeds 0 ... num_hash - 1, modulo ``mod_by``.

XXH64 is written here on numpy uint64 arrays, vectorized over the rows (every row has the
same byte length, so every row takes the same steps); uint64 array arithmetic wraps, which
is what the hash wants.
"""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import to_numpy
from ..registry import KernelContext, ShapeContext, register_op

P1, P2, P3, P4, P5 = (np.uint64(v) for v in (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                                             0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5))


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _round(acc: np.ndarray, lane: np.ndarray) -> np.ndarray:
    return _rotl(acc + lane * P2, 31) * P1


def xxh64_rows(words: np.ndarray, seed: int) -> np.ndarray:
    """XXH64 of each row of ``words`` [N, K] (uint64 lanes, i.e. 8 * K bytes), with ``seed``."""
    n, k = words.shape
    s = np.full(n, seed, dtype=np.uint64)
    i = 0
    if k >= 4:  # 32-byte stripes into four accumulators
        v = [s + P1 + P2, s + P2, s.copy(), s - P1]
        while i + 4 <= k:
            v = [_round(v[j], words[:, i + j]) for j in range(4)]
            i += 4
        h = _rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)
        for acc in v:
            h = (h ^ _round(np.zeros(n, np.uint64), acc)) * P1 + P4
    else:
        h = s + P5
    h = h + np.uint64(8 * k)
    while i < k:  # the remaining 8-byte lanes
        h = _rotl(h ^ _round(np.zeros(n, np.uint64), words[:, i]), 27) * P1 + P4
        i += 1
    h ^= h >> np.uint64(33)
    h *= P2
    h ^= h >> np.uint64(29)
    h *= P3
    h ^= h >> np.uint64(32)
    return h


def _hash_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    if np.dtype(x.dtype).kind not in "iu" or int(ctx.attr("mod_by")) < 1 or int(ctx.attr("num_hash")) < 1:
        raise ctx.fail("X must hold integer ids, and num_hash and mod_by be >= 1")
    ctx.set("Out", tuple(x.shape[:-1]) + (int(ctx.attr("num_hash")), 1), x.dtype, x.lod_level)


@register_op("hash", _hash_infer, no_grad_inputs=("X",), attrs={"num_hash": 1, "mod_by": 100000})
def hash_op(ctx: KernelContext) -> None:
    """Out[..., i, 0] = XXH64(bytes of the row X[...], seed=i) % mod_by."""
    x = to_numpy(ctx.x("X"))
    if x.dtype.itemsize != 8:
        raise InvalidArgumentError(f"op 'hash': X '{ctx.ins['X'][0]}' must be int64 (fluid hashes its 8-byte values)")
    words = np.ascontiguousarray(x.reshape(-1, x.shape[-1])).astype("<i8", copy=False).view(np.uint64)
    mod = np.uint64(int(ctx.attrs["mod_by"]))
    out = np.stack([xxh64_rows(words, seed) % mod for seed in range(int(ctx.attrs["num_hash"]))], axis=1)
    ctx.out("Out", ctx.xp.asarray(out.astype(x.dtype).reshape(x.shape[:-1] + (-1, 1))), ctx.lod("X"))
