"""Optional compiled fast path of the MultiSlot parser (C through ctypes).

The numpy parser in ``multislot.py`` is the reference and handles every error
and the skip-bad-lines mode.  This module compiles a small C scanner once per
machine (with the system C compiler, cached under ``~/.cache/fleetkit`` or
``$FLEETKIT_CACHE_DIR``) that parses well-formed blocks in two passes: count
values per slot, then fill exactly sized arrays (or, after the first block,
one pass into arrays sized from the previous block, redone when they are
short).  Counts are parsed unsigned with overflow detection and checked
against the bytes left and the arrays' room before any value is written.
ctypes releases the GIL during the call, so reader threads parse in parallel.
Any problem in a block makes it return "not handled" and the numpy parser
redoes that block, so errors are always reported the same way.  Without a compiler (or with
``FLEETKIT_PARSER=numpy``) everything uses numpy.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..env import c_compiler, cache_dir, numpy_parser_only

__all__ = ["fast_parse"]

log = logging.getLogger(__name__)

_C_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>

/* The grammar of docs/formats.md ("MultiSlot text"), the same as the numpy parser's:
   bytes <= 32 are blanks, '\n' ends an instance, a token is a run of other bytes. */
#define BLANK(c) ((unsigned char)(c) <= 32 && (c) != '\n')
#define SOLID(c) ((unsigned char)(c) > 32)
#define DIGIT(c) ((unsigned char)((c) - '0') < 10)

static const char *skip(const char *p, const char *end) {
    while (p < end && BLANK(*p)) p++;
    return p;
}

static const char *token_end(const char *p, const char *end) {
    while (p < end && SOLID(*p)) p++;
    return p;
}

/* count or id: '+'? digits (any number of leading zeros), at most 2^64 - 1 */
static int parse_u64(const char **pp, const char *end, uint64_t *out) {
    const char *p = *pp, *start;
    uint64_t v = 0, d;
    if (p < end && *p == '+') p++;
    for (start = p; p < end && DIGIT(*p); p++) {
        d = (uint64_t)(*p - '0');
        if (p - start < 19) v = v * 10 + d;  /* 19 digits always fit */
        else if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, d, &v)) return 0;
    }
    if (p == start || (p < end && SOLID(*p))) return 0;
    *pp = p; *out = v;
    return 1;
}

/* case-insensitive keyword that is the whole rest of the token */
static int keyword(const char *p, const char *end, const char *word) {
    for (; *word; p++, word++)
        if (p >= end || (*p | 0x20) != *word) return 0;
    return p >= end || !SOLID(*p);
}

static const double P10[16] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12,
                                1e13, 1e14, 1e15};

/* float: [+-]? (digits [. digits*] | . digits) ([eE] [+-]? digits)?  or  [+-]? inf|infinity|nan.
   The value is the correctly rounded double rounded to float32: up to 15 digits without an
   exponent it is one exact division (correctly rounded), otherwise strtod (correctly rounded
   in glibc), which only ever sees text the grammar above accepted. */
static int parse_f32(const char **pp, const char *end, float *out) {
    const char *p = *pp, *q = p;
    int neg = 0, nd = 0, frac = -1, expo = 0;
    uint64_t m = 0;
    if (q < end && (*q == '-' || *q == '+')) { neg = *q == '-'; q++; }
    for (; q < end; q++) {
        /* m wraps past 19 digits, but is only used up to 15 (longer ones go to strtod) */
        if (DIGIT(*q)) { m = m * 10 + (uint64_t)(*q - '0'); nd++; if (frac >= 0) frac++; }
        else if (*q == '.' && frac < 0) frac = 0;
        else break;
    }
    if (nd == 0) {
        if (frac >= 0 || !(keyword(q, end, "inf") || keyword(q, end, "infinity") || keyword(q, end, "nan")))
            return 0;
        q = token_end(q, end);
        expo = 1;  /* strtod */
    } else if (q < end && (*q == 'e' || *q == 'E')) {
        const char *digits;
        q++;
        if (q < end && (*q == '-' || *q == '+')) q++;
        for (digits = q; q < end && DIGIT(*q); q++) {}
        if (q == digits) return 0;
        expo = 1;
    }
    if (q < end && SOLID(*q)) return 0;
    if (!expo && nd <= 15) {
        double v = (double)m / P10[frac < 0 ? 0 : frac];
        *out = (float)(neg ? -v : v);
    } else {
        char *stop;
        double v = strtod(p, &stop);
        if (stop != q) return 0;  /* e.g. another locale's decimal point: the numpy parser decides */
        *out = (float)v;
    }
    *pp = q;
    return 1;
}

/* One walk over the lines.  Counting (outs == NULL): totals get the values per slot.
   Filling: outs[s] (caps[s] values) and lens[s] (max_lines entries) are written, every
   write inside them; -2 when they are too small.  Any line that is not well formed
   gives -1 (the numpy parser then reports it).  Returns the number of instances. */
int64_t ms_parse(const char *buf, int64_t len, int32_t nslots, const int32_t *types,
                 const int32_t *widths, int64_t *totals, void **outs, int64_t **lens,
                 const int64_t *caps, int64_t max_lines) {
    const char *p = buf, *end = buf + len;
    int64_t line = 0;
    int32_t s;
    uint64_t fill[4096];
    if (nslots < 0 || nslots > 4096 || len < 0 || (outs && (!caps || !lens))) return -1;
    for (s = 0; s < nslots; s++) {
        fill[s] = 0;
        if (caps && caps[s] < 0) return -1;
    }
    while (p < end) {
        p = skip(p, end);
        if (p < end && *p == '\n') { p++; continue; }
        if (p >= end) break;
        if (outs && line >= max_lines) return -2;
        for (s = 0; s < nslots; s++) {
            uint64_t n, i;
            p = skip(p, end);
            if (p >= end || *p == '\n' || !parse_u64(&p, end, &n) || n == 0) return -1;
            if (widths[s] > 0 && n != (uint64_t)widths[s]) return -1;
            /* each value takes a blank and a byte: a larger count can not be right, and the
               sums below stay far from overflowing */
            if (n > (uint64_t)(end - p) / 2) return -1;
            if (outs && n > (uint64_t)caps[s] - fill[s]) return -2;
            for (i = 0; i < n; i++) {
                p = skip(p, end);
                if (p >= end || *p == '\n') return -1;
                if (!outs) { p = token_end(p, end); continue; }
                if (fill[s] + i >= (uint64_t)caps[s]) return -2;  /* never reached: belt and braces */
                if (types[s] == 0) {
                    uint64_t v;
                    if (!parse_u64(&p, end, &v)) return -1;
                    if (outs[s]) ((uint64_t *)outs[s])[fill[s] + i] = v;
                } else {
                    float v;
                    if (!parse_f32(&p, end, &v)) return -1;
                    if (outs[s]) ((float *)outs[s])[fill[s] + i] = v;
                }
            }
            if (outs && lens[s]) lens[s][line] = (int64_t)n;
            fill[s] += n;
        }
        p = skip(p, end);
        if (p < end && *p != '\n') return -1;
        if (p < end) p++;
        line++;
    }
    if (totals) for (s = 0; s < nslots; s++) totals[s] = (int64_t)fill[s];
    return line;
}
"""

_CFLAGS = ("-O3", "-shared", "-fPIC")
_lib: Any = None
_lock = threading.Lock()
_tried = False


def _build() -> Any:
    """Compile (once per source version) and load the scanner; None if that is not possible."""
    cc = shutil.which(c_compiler()) or shutil.which("gcc")
    tag = hashlib.sha256((_C_SOURCE + " ".join(_CFLAGS)).encode()).hexdigest()[:16]
    so = os.path.join(cache_dir(), f"multislot_{tag}.so")
    if not os.path.exists(so):
        if cc is None:
            return None
        os.makedirs(os.path.dirname(so), exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src, out = os.path.join(tmp, "ms.c"), os.path.join(tmp, "ms.so")
            with open(src, "w") as f:
                f.write(_C_SOURCE)
            subprocess.run([cc, *_CFLAGS, "-o", out, src], check=True,
                           capture_output=True, timeout=120)
            os.replace(out, so)  # atomic: concurrent builders each install a complete file
    lib = ctypes.CDLL(so)
    lib.ms_parse.restype = ctypes.c_int64
    lib.ms_parse.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_int64]
    return lib


def _library() -> Any:
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if not numpy_parser_only():
                try:
                    _lib = _build()
                except Exception as exc:  # noqa: BLE001 - no compiler, read-only cache...: numpy does the work
                    log.info("MultiSlot C fast path unavailable (%s); using the numpy parser", exc)
                    _lib = None
            _tried = True
    return _lib


# values per input byte of each slot (and lines per byte, last), from the last block with the
# same slots: blocks of one dataset look alike, so one pass into arrays sized from it usually
# suffices, without even counting the newlines first
_RATIOS: dict[tuple, np.ndarray] = {}


def fast_parse(buf: bytes, slots: Sequence[Any]) -> tuple[list[np.ndarray], list[np.ndarray], int] | None:
    """(values, lengths, instances) for the used slots of a well-formed block, or None
    (no compiled scanner, or some line needs the numpy parser's checks and messages)."""
    lib = _library()
    if lib is None or not isinstance(buf, bytes):
        return None  # bytes objects end with a NUL byte, which strtof relies on
    n = len(slots)
    key = tuple((s.type, s.is_used, s.is_dense, s.dense_width) for s in slots)
    types = np.array([0 if s.type == "uint64" else 1 for s in slots], np.int32)
    widths = np.array([s.dense_width if (s.is_dense and s.is_used) else 0 for s in slots], np.int32)
    totals = np.zeros(n, np.int64)
    ratio = _RATIOS.get(key)
    lines = -2
    if ratio is not None:  # one pass into estimated arrays (the scanner says when one is short)
        caps = (ratio[:-1] * len(buf) * 1.25).astype(np.int64) + 64
        max_lines = int(ratio[-1] * len(buf) * 1.25) + 64
        lines, values, lengths = _fill(lib, buf, slots, types, widths, totals, caps, max_lines)
    if lines == -2:  # first block, or the estimate was short: count, then fill exact arrays
        if lib.ms_parse(buf, len(buf), n, types.ctypes.data, widths.ctypes.data, totals.ctypes.data,
                        None, None, None, 0) < 0:
            return None
        lines, values, lengths = _fill(lib, buf, slots, types, widths, totals, totals.copy(), -1)
    if lines < 0:
        return None
    _RATIOS[key] = np.append(totals, lines) / max(len(buf), 1)  # values per slot, then lines
    return ([v[:t] for v, t in zip(values, totals) if v is not None],
            [x[:lines] for x in lengths if x is not None], int(lines))


def _fill(lib: Any, buf: bytes, slots: Sequence[Any], types: np.ndarray, widths: np.ndarray,
          totals: np.ndarray, caps: np.ndarray, max_lines: int) -> tuple[int, list, list]:
    """Convert into arrays of ``caps`` values per slot (``max_lines`` < 0: exact, from counting)."""
    n = len(slots)
    count = max_lines if max_lines >= 0 else buf.count(b"\n") + 1  # lines <= newlines + 1
    values = [np.empty(int(caps[i]), s.dtype) if s.is_used else None for i, s in enumerate(slots)]
    lengths = [np.empty(count, np.int64) if s.is_used else None for s in slots]
    outs = (ctypes.c_void_p * n)(*[v.ctypes.data if v is not None else None for v in values])
    lens = (ctypes.c_void_p * n)(*[x.ctypes.data if x is not None else None for x in lengths])
    lines = lib.ms_parse(buf, len(buf), n, types.ctypes.data, widths.ctypes.data, totals.ctypes.data,
                         outs, lens, caps.ctypes.data, count)
    return int(lines), values, lengths
