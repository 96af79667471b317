"""Differential fuzz test: the compiled MultiSlot scanner and the numpy parser (the reference)
must agree on every input, under the one grammar of docs/formats.md.

For each input block: when the numpy parser accepts it, the scanner returns the same columns
(float32 values compared bit for bit); when the numpy parser refuses it, the scanner must not
accept it either (``parse_lines`` then reports the numpy parser's error: same file, line, reason).
Blocks run one after another in one process, so the scanner's array-size estimates carried from
block to block are exercised too (the heap overflow of issue 11 hid there).

The fuzz loop runs in a child process, so a crash of the C code fails the test with the seed
instead of killing pytest.  Budget: ``FLEETKIT_FUZZ_SECONDS`` (default 20); seed:
``FLEETKIT_FUZZ_SEED`` (default: random, printed on failure).  A longer run:

    FLEETKIT_FUZZ_SECONDS=600 python -m pytest tests/unit/test_parser_fuzz.py
"""
from __future__ import annotations

import decimal
import os
import subprocess
import sys
import time

import numpy as np

TOKENS = [  # the corners of the grammar (docs/formats.md)
    b"0", b"1", b"+7", b"-0", b"-1", b"007", b"0" * 25 + b"5", b"0" * 30 + b"18446744073709551615",
    b"18446744073709551615", b"18446744073709551616", b"9223372036854775807", b"9223372036854775808",
    b"99999999999999999999", b"1" * 21, b"1" * 400, b"+", b"-", b"++1", b"1+", b"+-1",
    b"0x10", b"0x1p3", b"0X1P-2", b"nan(1)", b"nan()", b"nan", b"NaN", b"-nan", b"+inf", b"-Infinity",
    b"infinity", b"infinit", b"inf1", b"infinityy", b"1e5", b"1E-5", b"1e", b"1e+", b"e5", b".5", b"5.",
    b".", b"-.5", b"+.5e1", b"1.5.5", b"1_0", b"1e39", b"-1e39", b"1e-46", b"1.4e-45", b"3.4028235e38",
    b"3.4028236e38", b"1e400", b"1e-400", b"1e99999999999999999999", b"0.1234567890123456789",
    b"123456789012345678901.5", b"9999999999.999999999", b"999999999.999999999", b"-99999999.999999999",
    b"0." + b"0" * 40 + b"1", b"1" * 30 + b"." + b"9" * 30, b"x", b"\xff", b"\xc3\xa9", b"(", b"1,5",
]
ALPHABET = b"0123456789+-.eExXpPinfaINFAty()_\xff"
BLANKS = [b" ", b" ", b" ", b"\t", b"\r", b"  ", b"\x0b", b"\x00"]
LAYOUTS = [  # (name, type, is_dense, is_used, dense width)
    [("ids", "uint64", False, True, 0), ("w", "float", True, True, 2), ("u", "uint64", False, False, 0)],
    [("f", "float", False, True, 0), ("y", "uint64", True, True, 1)],
    [("a", "uint64", False, True, 0)],
    [("g", "float", False, False, 0), ("h", "float", False, True, 0)],
]


def _slots(layout):
    from fleetkit.dataset import Slot
    return [Slot(n, t, d, u, (-1, w) if d else ()) for n, t, d, u, w in layout]


def _float_text(rng) -> bytes:
    x = float(np.frombuffer(rng.integers(0, 2**32, dtype=np.uint32).tobytes(), np.float32)[0])
    if not np.isfinite(x) or rng.random() < 0.3:
        x = float(rng.normal(0, 10.0 ** rng.integers(-8, 9)))
    pick = rng.integers(8)
    if pick < 4:
        return (("%.9g", "%.17g", "%e", "%.20f")[pick] % x).encode()
    if pick == 4:
        return repr(x).encode()
    if pick == 5:  # an exact float32 midpoint: double rounding and ties must agree
        a = np.float32(abs(x) or 1.0)
        mid = (float(a) + float(np.nextafter(a, np.float32(np.inf)))) / 2
        return str(decimal.Decimal(mid)).encode()
    if pick == 6:  # just beside a midpoint
        a = np.float32(abs(x) or 1.0)
        mid = decimal.Decimal((float(a) + float(np.nextafter(a, np.float32(np.inf)))) / 2)
        return str(mid * (1 + decimal.Decimal(int(rng.choice([-1, 1]))) / 10**25)).encode()
    return str(int(rng.integers(0, 2**63))).encode()


def _id_text(rng) -> bytes:
    v = int(rng.integers(0, 2**64, dtype=np.uint64)) >> int(rng.integers(0, 64))
    return (b"0" * int(rng.integers(0, 3)) if rng.random() < 0.1 else b"") + str(v).encode()


def _junk(rng) -> bytes:
    if rng.random() < 0.6:
        return TOKENS[rng.integers(len(TOKENS))]
    return bytes(rng.choice(np.frombuffer(ALPHABET, np.uint8), int(rng.integers(1, 7))))


def _line(rng, layout, p_bad: float) -> bytes:
    toks = []
    for _, kind, dense, _, width in layout:
        n = width if dense else int(rng.integers(1, 5))
        toks.append(str(n).encode())
        toks += [_float_text(rng) if kind == "float" else _id_text(rng) for _ in range(n)]
    for _ in range(int(rng.integers(0, 3))):
        if rng.random() < p_bad:
            toks[rng.integers(len(toks))] = _junk(rng)
    if rng.random() < p_bad / 4:
        del toks[rng.integers(len(toks))]
    if rng.random() < p_bad / 4:
        toks.insert(int(rng.integers(len(toks) + 1)), _junk(rng))
    out = toks[0]
    for t in toks[1:]:
        out += BLANKS[rng.integers(len(BLANKS))] + t
    return out + (b" \t" if rng.random() < 0.1 else b"")


def _block(rng, layout) -> bytes:
    if rng.random() < 0.05:  # bytes from the grammar's alphabet and blanks, shaped by nothing
        return bytes(rng.choice(np.frombuffer(ALPHABET + b"  \n\t", np.uint8), int(rng.integers(0, 200))))
    nlines = int(rng.integers(1, 300 if rng.random() < 0.1 else 30))
    p_bad = float(rng.choice([0.0, 0.0, 0.02, 0.2, 0.8]))
    lines = [b"" if rng.random() < 0.05 else _line(rng, layout, p_bad) for _ in range(nlines)]
    end = rng.choice([b"\n", b"\r\n", b"\n\n"])
    return end.join(lines) + (end if rng.random() < 0.7 else b"")


def _overflow_blocks():
    """The exact input of issue 11: a good block sizes the estimate, then a count of 2**63 (or
    near it) in a later block, followed by more values than the estimate holds."""
    good = b"".join(b"1 5 2 0.5 1.5 1 3\n" for _ in range(200))
    for count in (2**63, 2**63 + 1, 2**64 - 1, 2**64 - 2, 2**62):
        yield 0, good
        yield 0, good[:50 * 18] + str(count).encode() + b" " + b" ".join([b"1"] * 50000) + b"\n" + good


def _columns_equal(got, ref) -> bool:
    vals_g, lens_g, num_g = got
    if num_g != ref.num or len(vals_g) != len(ref.values) or len(lens_g) != len(ref.lengths):
        return False
    for a, b in zip(vals_g, ref.values):
        bits = np.uint32 if b.dtype == np.float32 else np.int64
        if a.dtype != b.dtype or not np.array_equal(a.view(bits), b.view(bits)):
            return False
    return all(np.array_equal(a, b) for a, b in zip(lens_g, ref.lengths))


def check_block(buf: bytes, layout) -> str | None:
    """None when both parsers agree on ``buf``, else what differs."""
    from fleetkit.dataset import parse_lines
    from fleetkit.dataset._fastparse import fast_parse
    from fleetkit.errors import DataFormatError
    slots = _slots(layout)
    try:
        ref, err = parse_lines(buf, slots, "fz", 7, fast=False), None
    except DataFormatError as e:
        ref, err = None, e
    got = fast_parse(buf, slots)
    if err is None and (got is None or not _columns_equal(got, ref)):
        return "the scanner " + ("refused" if got is None else "parsed differently") + " a block numpy accepts"
    if err is not None:
        if got is not None:
            return f"the scanner accepted a block numpy refuses ({err.reason})"
        try:
            parse_lines(buf, slots, "fz", 7)
            return "parse_lines(fast=True) accepted a block numpy refuses"
        except DataFormatError as e2:
            if (e2.file, e2.line, e2.reason) != (err.file, err.line, err.reason):
                return f"different errors: {e2} / {err}"
    return None


def fuzz(seconds: float, seed: int) -> int:
    """Run until ``seconds`` pass; raise AssertionError naming the first disagreement."""
    from fleetkit.dataset._fastparse import _library
    assert _library() is not None, "no compiled scanner (C compiler) here: nothing to compare"
    rng = np.random.default_rng(seed)
    fixed = [(int(rng.integers(len(LAYOUTS))), b"1 " + t + b" 2 0.5 1 1 3\n") for t in TOKENS]
    fixed += [(1, b"1 " + t + b" 1 3\n") for t in TOKENS] + [(1, b"1 5 1 " + t + b"\n") for t in TOKENS]
    fixed += [(0, t + b" 5 2 0.5 1 1 3\n") for t in TOKENS]  # as a count
    fixed += [(0, b"0" * 30 + b"2 5 6 +02 0.5 1 1 3\n"), (2, b"+" + b"0" * 40 + b"1 " + b"0" * 40 + b"\n")]
    fixed += list(_overflow_blocks())
    stop, n = time.monotonic() + seconds, 0
    for i in range(10**12):
        if i < len(fixed):
            k, buf = fixed[i]
        elif time.monotonic() > stop:
            return n
        else:
            k = int(rng.integers(len(LAYOUTS)))
            buf = _block(rng, LAYOUTS[k])
        problem = check_block(buf, LAYOUTS[k])
        assert problem is None, f"seed {seed}, case {i}, layout {k}: {problem}\nblock: {buf[:2000]!r}"
        n += 1
    return n


def test_parsers_agree_on_fuzzed_input():
    seconds = float(os.environ.get("FLEETKIT_FUZZ_SECONDS", "20"))
    seed = int(os.environ.get("FLEETKIT_FUZZ_SEED", str(int.from_bytes(os.urandom(4), "little"))))
    proc = subprocess.run([sys.executable, __file__, str(seconds), str(seed)], capture_output=True,
                          text=True, timeout=seconds + 120)
    if "no compiled scanner" in proc.stderr:
        import pytest
        pytest.skip("no C compiler here: only the numpy parser exists")
    assert proc.returncode == 0, f"fuzz child (seed {seed}) exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    assert int(proc.stdout.split()[-1]) > 4 * len(TOKENS) + 20  # past the fixed cases: it really fuzzed


if __name__ == "__main__":
    print("cases", fuzz(float(sys.argv[1]), int(sys.argv[2])))
