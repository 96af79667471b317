"""The MultiSlot text format: slot descriptions and a vectorized parser.

One instance per line.  For every slot of the description, in order, a line
holds ``<n> v1 .. vn`` (whitespace separated, ``n > 0``): ``uint64`` slots hold
integer ids (stored as int64, as Paddle does), ``float`` slots decimal numbers
(stored as float32).  The exact grammar (decimal only; ``inf``/``nan`` accepted,
hex floats not) is in docs/formats.md, "MultiSlot text"; both parsers follow it.
Example with slots (words: uint64, label: uint64)::

    3 1926 8 17 1 1

The parser works on a whole buffer of complete lines at a time with numpy:
tokens are found from byte classes, numbers are computed per token length
group with one small matrix product, and the slot structure is walked once per
slot over all lines together.  There is no Python loop per token or per line
(only rare tokens, such as ``1e-05``, ``inf``, ids with many leading zeros or
decimals with more than 18 digits, are checked by a regular expression and
converted by ``int()``/``float()`` one by one).  When a C compiler is available, ``_fastparse``
handles well-formed blocks several times faster; this numpy parser remains the
reference, and every block with a problem is (re)parsed here for the message.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataFormatError, InvalidArgumentError
from ._fastparse import fast_parse

__all__ = ["DataFeedDesc", "ParseResult", "Slot", "parse_lines", "slots_from_vars"]

# byte values
_NL, _DOT, _MINUS, _PLUS, _ZERO = 10, 46, 45, 43, 48
# token kinds: unsigned integer (<= 2**64 - 1), decimal (or exponent notation, inf, nan), negative
# integer, not a number, unsigned integer above 2**64 - 1 (a number, but neither an id nor a count)
_INT, _DEC, _NEG_INT, _BAD, _BIG = 0, 1, 3, 2, 4
_MAX_DIGITS = 20  # uint64 has at most 20 decimal digits
_DOT_DIGITS = 18  # vectorized decimals: digits and the dot's shift stay below 2**64
_U64_MAX = 2**64 - 1
MAX_COUNT = 2**63 - 1  # values of one slot in one line (lengths are int64)
_SHOW = 40  # characters of a bad token quoted in a message
# the grammar of docs/formats.md for tokens the vectorized pass leaves (long, exponents, inf, nan)
_UINT_RE = re.compile(rb"\+?([0-9]+)")
_FLOAT_RE = re.compile(rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan))")
_P10_U = 10 ** np.arange(_MAX_DIGITS, dtype=np.uint64)
_P10_F = 10.0 ** np.arange(_MAX_DIGITS + 3)


@dataclass
class Slot:
    """One slot of a MultiSlot line (the fields of Paddle's ``Slot`` message)."""

    name: str
    type: str  # "uint64" or "float"
    is_dense: bool = False
    is_used: bool = True
    shape: tuple[int, ...] = ()

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int64 if self.type == "uint64" else np.float32)

    @property
    def dense_width(self) -> int:
        """Values per instance of a dense slot (product of the non-batch dims)."""
        dims = [d for d in self.shape[1:]] if self.shape and self.shape[0] < 0 else list(self.shape)
        width = 1
        for d in dims:
            width *= max(int(d), 1)
        return width


@dataclass
class DataFeedDesc:
    """What Paddle keeps in its ``DataFeedDesc`` proto; ``to_text()`` prints it in
    protobuf text format (what ``dataset.desc()`` returns)."""

    name: str = "MultiSlotDataFeed"
    batch_size: int = 32
    slots: list[Slot] = field(default_factory=list)
    pipe_command: str = "cat"
    thread_num: int = 0

    def to_text(self) -> str:
        out = [f'name: "{self.name}"', f"batch_size: {self.batch_size}", "multi_slot_desc {"]
        for s in self.slots:
            out += ["  slots {", f'    name: "{s.name}"', f'    type: "{s.type}"',
                    f"    is_dense: {str(s.is_dense).lower()}", f"    is_used: {str(s.is_used).lower()}"]
            out += [f"    shape: {d}" for d in s.shape]
            out.append("  }")
        out += ["}", f'pipe_command: "{_escape(self.pipe_command)}"', f"thread_num: {self.thread_num}"]
        return "\n".join(out) + "\n"


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def slots_from_vars(var_list: Sequence[Any]) -> list[Slot]:
    """Slots for ``set_use_var``: lod_level 0 -> dense with the var's shape;
    float32 -> "float", int64 -> "uint64", any other dtype is an error."""
    slots = []
    for var in var_list:
        dtype = str(getattr(var, "dtype", ""))
        if dtype == "float32":
            kind = "float"
        elif dtype == "int64":
            kind = "uint64"
        else:
            raise InvalidArgumentError(
                f"set_use_var: variable '{getattr(var, 'name', var)}' has dtype {dtype!r}; MultiSlot "
                f"slots must be float32 ('float') or int64 ('uint64')")
        dense = int(getattr(var, "lod_level", 0)) == 0
        slots.append(Slot(var.name, kind, dense, True, tuple(int(d) for d in var.shape) if dense else ()))
    return slots


@dataclass
class ParseResult:
    """Parsed instances in columns: per used slot, flat values and per-instance lengths."""

    values: list[np.ndarray]
    lengths: list[np.ndarray]
    num: int
    bad_lines: int = 0
    first_bad: str | None = None


# ---------------------------------------------------------------- tokenizer
def _tokens(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the whitespace-separated tokens of ``a``."""
    solid = (a > 32).view(np.int8)
    edges = np.flatnonzero(np.diff(solid, prepend=np.int8(0), append=np.int8(0)))
    return edges[0::2], edges[1::2]


def _numbers(a: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numeric value of every token: (int64 values, float64 values, kind).

    Tokens of equal length are parsed together as a (tokens x length) byte
    matrix (rows of a strided window view, so no index matrix is built): each
    digit column has a fixed power of ten and one matrix-vector product gives
    the digits' value; a '.' column shifts the digits on its left by one place,
    which one division undoes for the rows that have a dot.
    """
    n = len(starts)
    ival = np.zeros(n, np.int64)
    fval = np.zeros(n, np.float64)
    kind = np.full(n, _BAD, np.int8)
    if n == 0:
        return ival, fval, kind
    short = np.minimum(lens, 255).astype(np.uint8)
    order = np.argsort(short, kind="stable")  # radix sort on uint8: cheap
    sorted_lens = short[order]
    bounds = np.flatnonzero(np.diff(sorted_lens)) + 1
    padded = np.concatenate([a, np.zeros(_MAX_DIGITS + 2, np.uint8)])
    sorted_starts = starts[order]
    # results are written in length order (contiguous slices), then unsorted once
    s_ival, s_fval, s_kind = np.zeros(n, np.int64), np.zeros(n, np.float64), np.full(n, _BAD, np.int8)
    for lo, hi in zip(np.concatenate([[0], bounds]).tolist(), np.concatenate([bounds, [n]]).tolist()):
        width = int(sorted_lens[lo])
        if width > _MAX_DIGITS + 2:
            continue  # too long for any uint64 / plain decimal: left _BAD (maybe a float below)
        part = slice(lo, hi)
        _parse_group(padded, sorted_starts[part], width, s_ival[part], s_fval[part], s_kind[part])
    ival[order], fval[order], kind[order] = s_ival, s_fval, s_kind
    _rare_tokens(a, starts, lens, ival, fval, kind)
    return ival, fval, kind


def _parse_group(padded: np.ndarray, starts: np.ndarray, width: int,
                 ival: np.ndarray, fval: np.ndarray, kind: np.ndarray) -> None:
    """Parse the tokens of one length ``width`` into the (view) arrays ``ival``/``fval``/``kind``."""
    mat = np.lib.stride_tricks.sliding_window_view(padded, width)[starts]
    digit = mat - np.uint8(_ZERO)
    is_digit = digit < 10
    ndig = is_digit.sum(axis=1, dtype=np.int32)
    first = mat[:, 0]
    neg = first == _MINUS
    signed = neg | (first == _PLUS)
    plain = (ndig + signed == width) & (ndig > 0)  # only digits (and a sign): the common case
    digit *= is_digit  # zero for sign and dot
    if width <= 15:  # exact in float64 (einsum measured several times faster than @ here)
        raw_f = np.einsum("ij,j->i", digit.astype(np.float64), _P10_F[width - 1::-1])
        raw = raw_f.astype(np.uint64)
    else:
        weights = _P10_U[width - 1::-1] if width <= _MAX_DIGITS else np.concatenate(
            [np.zeros(width - _MAX_DIGITS, np.uint64), _P10_U[::-1]])
        raw = digit.astype(np.uint64) @ weights
        raw_f = raw.astype(np.float64)
    ok_int = plain & (ndig <= _MAX_DIGITS)
    if width >= _MAX_DIGITS:  # 20 digits may exceed 2**64 - 1 (the sum above wrapped): compare text
        ok_int &= ~_above_u64_max(mat[:, width - _MAX_DIGITS:], ndig)
    mant_i = raw.view(np.int64)
    if neg.any():
        ival[:] = np.where(neg, -mant_i, mant_i)
        fval[:] = np.where(neg, -raw_f, raw_f)
    else:
        ival[:], fval[:] = mant_i, raw_f
    kind[:] = np.where(ok_int, np.where(neg, _NEG_INT, _INT), _BAD)
    rest = np.flatnonzero(~plain)
    if rest.size == 0 or width < 2:
        return
    is_dot = mat[rest] == _DOT
    nd = ndig[rest]
    one_dot = (is_dot.sum(axis=1) == 1) & (nd + 1 + signed[rest] == width) & (nd >= 1) & (nd <= _DOT_DIGITS)
    rest, is_dot = rest[one_dot], is_dot[one_dot]
    if rest.size == 0:
        return
    frac = width - 1 - np.argmax(is_dot, axis=1)
    scale = _P10_U[frac]
    raw_r = raw[rest]
    right = raw_r % scale
    mant = (raw_r - right) // np.uint64(10) + right  # the digits left of the dot sit one place too high
    value = mant.astype(np.float64) / _P10_F[frac]  # correctly rounded while the mantissa is exact
    fval[rest] = np.where(neg[rest], -value, value)
    sure = mant < np.uint64(2**53)
    if not sure.all():
        sure[~sure] = _same_float32_around(value[~sure])
    kind[rest] = np.where(sure, _DEC, _BAD)  # the rare others: float() below


def _same_float32_around(value: np.ndarray) -> np.ndarray:
    """Whether every double within 3 ulps of ``value`` rounds to the same float32: then so does the
    correctly rounded double of a token whose ``value`` came from a rounded mantissa (2 roundings,
    each off by at most half an ulp), and that is what the token means (docs/formats.md)."""
    lo, hi = value, value
    for _ in range(3):
        lo, hi = np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf)
    return lo.astype(np.float32) == hi.astype(np.float32)


_U64_MAX_TEXT = np.frombuffer(b"18446744073709551615", np.uint8)


def _above_u64_max(digits: np.ndarray, ndig: np.ndarray) -> np.ndarray:
    """Rows of 20 digit characters whose number is above 2**64 - 1 (lexicographic compare)."""
    differ = digits != _U64_MAX_TEXT
    first = np.argmax(differ, axis=1)
    bigger = digits[np.arange(len(digits)), first] > _U64_MAX_TEXT[first]
    return (ndig == _MAX_DIGITS) & differ.any(axis=1) & bigger


def _rare_tokens(a: np.ndarray, starts: np.ndarray, lens: np.ndarray, ival: np.ndarray,
                 fval: np.ndarray, kind: np.ndarray) -> None:
    """Tokens the vectorized pass left (``1e-05``, ``inf``, long digit strings such as ids with
    many leading zeros, decimals with many digits): rare, so parsed one by one, held to the
    grammar by the regular expressions first (``float`` alone would take ``1_0`` or `` 1``)."""
    for i in np.flatnonzero(kind == _BAD).tolist():
        text = a[starts[i]:starts[i] + lens[i]].tobytes()
        whole = _UINT_RE.fullmatch(text)
        if whole:
            digits = whole.group(1).lstrip(b"0") or b"0"
            value = int(digits) if len(digits) <= _MAX_DIGITS else _U64_MAX + 1
            if value <= _U64_MAX:
                ival[i], kind[i] = value - (value >> 63 << 64), _INT  # stored as int64, as Paddle does
            else:
                kind[i] = _BIG
            fval[i] = float(digits)
        elif _FLOAT_RE.fullmatch(text):
            fval[i], kind[i] = float(text), _DEC


# ------------------------------------------------------------------- parser
def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for every pair, without a Python loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return np.arange(total, dtype=np.int64) + shift


class _LineErrors:
    """First problem of every bad line (line index -> reason), filled slot by slot."""

    def __init__(self, nlines: int):
        self.bad = np.zeros(nlines, bool)
        self.reasons: dict[int, str] = {}

    def mark(self, mask: np.ndarray, why: Any) -> None:
        new = mask & ~self.bad
        if new.any():
            first = int(np.argmax(new))
            self.reasons[first] = why(first) if callable(why) else why
            self.bad |= new

    def first(self) -> tuple[int, str] | None:
        if not self.bad.any():
            return None
        i = int(np.argmax(self.bad))
        return i, self.reasons.get(i, "malformed line")


def parse_lines(buf: bytes | memoryview, slots: Sequence[Slot], source: str = "<buffer>",
                first_line: int = 1, skip_bad: bool = False, fast: bool = True) -> ParseResult:
    """Parse complete MultiSlot lines into columns for the used slots.

    Args:
        buf: whole lines (the last one may lack its newline).
        slots: every slot of a line, in order; unused slots are checked and skipped.
        source: file name for error messages.
        first_line: line number of the first line of ``buf`` in ``source``.
        skip_bad: drop malformed lines and count them instead of raising.
        fast: try the compiled scanner first (False: numpy only, the reference).

    Raises:
        DataFormatError: a malformed line (file, line number and reason).
    """
    done = fast_parse(buf, slots) if fast else None  # compiled scanner for well-formed blocks
    if done is not None:
        return ParseResult(done[0], done[1], done[2])
    a = np.frombuffer(buf, np.uint8)
    starts, ends = _tokens(a)
    newlines = np.flatnonzero(a == _NL)
    nlines = len(newlines) + (1 if a.size and a[-1] != _NL else 0)
    # tokens never span a newline: a line's tokens are those starting between its ends
    line_first = np.searchsorted(starts, np.concatenate([[0], newlines + 1])[:nlines])
    line_ntok = np.searchsorted(starts, np.concatenate([newlines, [a.size]])[:nlines]) - line_first
    keep = np.flatnonzero(line_ntok > 0)  # blank lines carry no instance
    first, end = line_first[keep], line_first[keep] + line_ntok[keep]
    ival, fval, kind = _numbers(a, starts, ends - starts)
    errs = _LineErrors(len(keep))

    def text(tok: int) -> str:
        return _quote(a, int(starts[tok]), int(ends[tok]))

    pos = first.copy()
    per_slot: list[tuple[np.ndarray, np.ndarray]] = []
    for s_i, slot in enumerate(slots):
        missing = pos >= end
        errs.mark(missing, lambda i, s_i=s_i, slot=slot: (
            f"line ends before slot '{slot.name}' (#{s_i + 1} of {len(slots)}): it has "
            f"{s_i} slot(s) but set_use_var / the data feed has {len(slots)}"))
        at = np.minimum(pos, len(starts) - 1)
        count_ok = (kind[at] == _INT) & (ival[at] > 0)
        too_big = (kind[at] == _BIG) | ((kind[at] == _INT) & (ival[at] < 0))  # int64 view of >= 2**63
        errs.mark(~missing & too_big, lambda i, s_i=s_i, at=at, slot=slot: (
            f"slot '{slot.name}' (#{s_i + 1}): count {text(int(at[i]))} is too large "
            f"(at most {MAX_COUNT}, and no more than the values that follow it on the line)"))
        errs.mark(~missing & ~count_ok, lambda i, s_i=s_i, at=at, slot=slot: (
            f"slot '{slot.name}' (#{s_i + 1}): count {text(int(at[i]))} must be an integer > 0 "
            f"(the number of ids can not be zero: pad empty slots in the data generator)"))
        cnt = np.where(errs.bad | missing | ~count_ok, 0, ival[at])
        short = cnt > end - pos - 1  # (pos + 1 + cnt could wrap: cnt may be near 2**63)
        errs.mark(short, lambda i, s_i=s_i, cnt=cnt, slot=slot, pos=pos: (
            f"slot '{slot.name}' (#{s_i + 1}) announces {int(cnt[i])} value(s) but the line has "
            f"only {int(end[i] - pos[i] - 1)} token(s) left"))
        cnt = np.where(errs.bad, 0, cnt)
        per_slot.append((pos + 1, cnt))
        pos = np.where(errs.bad, end, pos + 1 + cnt)
    extra = pos < end
    errs.mark(extra, lambda i, pos=pos: (f"{int(end[i] - pos[i])} token(s) after the last of the {len(slots)} slots: "
                                f"the line has more slots than set_use_var / the data feed"))
    _check_values(slots, per_slot, kind, errs, text)
    bad = errs.first()
    nbad = int(errs.bad.sum())
    first_bad = None
    if bad is not None:
        line_no = first_line + int(keep[bad[0]])
        first_bad = f"{source}:{line_no}: {bad[1]}"
        if not skip_bad:
            raise DataFormatError(f"bad MultiSlot data at {first_bad}\n  line: {_line_text(a, newlines, keep[bad[0]])}",
                                  file=source, line=line_no, reason=bad[1])
    good = ~errs.bad
    values, lengths = [], []
    for slot, (vstart, cnt) in zip(slots, per_slot):
        if not slot.is_used:
            continue
        vstart, cnt = vstart[good], cnt[good]
        tok = _ranges(vstart, cnt)
        if slot.type == "uint64":
            vals = ival[tok]
        else:
            with np.errstate(over="ignore"):  # 1e39 is inf in float32, as strtof says
                vals = fval[tok].astype(np.float32)
        values.append(vals)
        lengths.append(cnt.astype(np.int64))
    return ParseResult(values, lengths, int(good.sum()), nbad, first_bad)


def _check_values(slots: Sequence[Slot], per_slot: list, kind: np.ndarray,
                  errs: _LineErrors, text: Any) -> None:
    """Type of every value token, and the width of dense slots."""
    for s_i, (slot, (vstart, cnt)) in enumerate(zip(slots, per_slot)):
        tok = _ranges(vstart, cnt)
        line_of = np.repeat(np.arange(len(cnt)), cnt)
        if slot.type == "uint64":
            wrong = kind[tok] != _INT
        else:
            wrong = kind[tok] == _BAD
        if wrong.any():
            mask = np.zeros(len(cnt), bool)
            mask[line_of[wrong]] = True
            first_tok = {int(line_of[j]): int(tok[j]) for j in np.flatnonzero(wrong)[::-1]}
            errs.mark(mask, lambda i, s_i=s_i, ft=first_tok: (
                f"slot '{slots[s_i].name}' (#{s_i + 1}): value {text(ft[i])} {_not_a(slots[s_i], kind[ft[i]])}"))
        if slot.is_dense and slot.is_used:
            width = slot.dense_width
            mask = (cnt != width) & (cnt > 0)
            errs.mark(mask, lambda i, s_i=s_i, cnt=cnt, width=width: (
                f"dense slot '{slots[s_i].name}' (#{s_i + 1}) has {int(cnt[i])} value(s); its variable's "
                f"shape {list(slots[s_i].shape)} needs {width}"))


def _not_a(slot: Slot, kind: int) -> str:
    """Why a value token does not fit ``slot`` (its kind as ``_numbers`` found it)."""
    if slot.type != "uint64":
        return "is not a number (float: decimal, exponent, inf or nan; see docs/formats.md)"
    if kind == _BIG:
        return f"is too large for an unsigned integer id (uint64, at most {_U64_MAX})"
    return "is not an unsigned integer id (uint64: decimal digits)"


def _quote(a: np.ndarray, start: int, stop: int) -> str:
    """A token for a message: quoted, and cut to ``_SHOW`` characters with its length when longer
    (a bad token can be the whole file)."""
    text = a[start:min(stop, start + _SHOW)].tobytes().decode("utf-8", "replace")
    return repr(text) if stop - start <= _SHOW else f"{text + '...'!r} ({stop - start} bytes)"


def _line_text(a: np.ndarray, newlines: np.ndarray, line: int, limit: int = 200) -> str:
    start = int(newlines[line - 1]) + 1 if line > 0 else 0
    stop = int(newlines[line]) if line < len(newlines) else a.size
    raw = a[start:min(stop, start + limit)].tobytes().decode("utf-8", "replace")
    return raw + (" ..." if stop - start > limit else "")
