"""MultiSlot format: generator -> files -> dataset -> batches round trips, parser edge cases,
generator errors, desc()."""
from __future__ import annotations

import gzip
import io
import os

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.dataset import DatasetFactory, MultiSlotDataGenerator, Slot, parse_lines
from fleetkit.errors import DataFormatError, InvalidArgumentError


class _SampleGen(MultiSlotDataGenerator):
    """Emits the samples given to it, one per input line (the line is the sample index)."""

    def __init__(self, samples):
        super().__init__()
        self.samples = samples

    def generate_sample(self, line):
        def gen():
            yield self.samples[int(line)]
        return gen


def _vars_for(layout):
    out = []
    for name, kind, dense, width in layout:
        dtype = "int64" if kind == "uint64" else "float32"
        out.append(layers.data(name, shape=[width], dtype=dtype, lod_level=0 if dense else 1))
    return out


def _random_samples(layout, n, rng):
    samples = []
    for _ in range(n):
        sample = []
        for name, kind, dense, width in layout:
            k = width if dense else int(rng.integers(1, 5))
            if kind == "uint64":
                vals = [int(v) for v in rng.integers(0, 2**63 - 1, k, dtype=np.int64)]
            else:
                vals = [float(np.float32(v)) for v in rng.normal(0, 100, k)]
            sample.append((name, vals))
        samples.append(sample)
    return samples


LAYOUTS = {
    "words_label": [("words", "uint64", False, 1), ("label", "uint64", True, 1)],
    "ctr_like": [("click", "uint64", True, 1), ("d", "float", True, 3), ("s0", "uint64", False, 1),
                 ("s1", "uint64", False, 1)],
    "float_seq": [("f", "float", False, 1), ("ids", "uint64", False, 1), ("w", "float", True, 2)],
}


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", ["QueueDataset", "InMemoryDataset"])
def test_round_trip_generator_files_dataset_batches(tmp_path, layout_name, kind):
    layout = LAYOUTS[layout_name]
    rng = np.random.default_rng(len(layout_name))
    samples = _random_samples(layout, 23, rng)
    lines = _SampleGen(samples).run_to_lines([str(i) for i in range(len(samples))])
    files = []
    for f, (lo, hi) in enumerate([(0, 10), (10, 23)]):  # two files, the second gzipped
        path = tmp_path / (f"part-{f}" + (".gz" if f else ""))
        data = "".join(lines[lo:hi]).encode()
        path.write_bytes(gzip.compress(data) if f else data)
        files.append(str(path))
    ds = DatasetFactory().create_dataset(kind)
    ds.set_use_var(_vars_for(layout))
    ds.set_filelist(files)
    ds.set_batch_size(4)
    if kind == "InMemoryDataset":
        ds.load_into_memory()
        assert ds.get_memory_data_size() == 23
    batches = list(ds.thread_feeds(1)[0])
    assert [len(next(iter(_lod_or_rows(b)))) for b in batches] == [4, 4, 4, 4, 4, 3]
    for slot_i, (name, kind_, dense, width) in enumerate(layout):
        got_vals, got_lens = [], []
        for b in batches:
            v = b[name]
            if dense:
                arr = np.asarray(v)
                assert arr.shape[1:] == (width,)
                got_vals.append(arr.reshape(-1))
                got_lens += [width] * arr.shape[0]
            else:
                off = v.lod()[0]
                assert off[0] == 0 and np.asarray(v).shape[1] == 1
                got_vals.append(np.asarray(v).reshape(-1))
                got_lens += np.diff(off).tolist()
        want = [x for s in samples for x in s[slot_i][1]]
        want_lens = [len(s[slot_i][1]) for s in samples]
        dtype = np.int64 if kind_ == "uint64" else np.float32
        np.testing.assert_array_equal(np.concatenate(got_vals), np.asarray(want, dtype=dtype))
        assert got_lens == want_lens


def _lod_or_rows(batch):
    v = next(iter(batch.values()))
    return [range(len(v.lod()[0]) - 1)] if isinstance(v, fk.LoDTensor) else [range(np.asarray(v).shape[0])]


@pytest.mark.parametrize("fast", [True, False])
def test_parse_lod_offsets_and_big_ids(fast):
    slots = [Slot("a", "uint64"), Slot("b", "float", True, True, (-1, 2)), Slot("c", "uint64", False, False)]
    buf = b"2 5 18446744073709551615 2 0.5 -1e-05 1 7\n\n3 1 2 3 2 1 2.25 1 9"
    r = parse_lines(buf, slots, fast=fast)
    assert r.num == 2
    np.testing.assert_array_equal(r.values[0], [5, -1, 1, 2, 3])  # 2**64-1 stored as int64, as Paddle
    np.testing.assert_array_equal(r.lengths[0], [2, 3])
    np.testing.assert_array_equal(r.values[1], np.array([0.5, -1e-05, 1, 2.25], np.float32))
    assert len(r.values) == 2  # unused slot 'c' checked but not returned


@pytest.mark.parametrize("fast", [True, False])
def test_parser_matches_float_and_int_text_exactly(fast):
    rng = np.random.default_rng(0)
    floats = np.concatenate([rng.normal(0, 1e3, 300), rng.random(300), [0.0, -0.0, 1e-30, 3e20]])
    ints = rng.integers(0, 2**63 - 1, 300, dtype=np.int64)
    line = f"{len(floats)} " + " ".join(repr(float(x)) for x in floats)
    line += f" {len(ints)} " + " ".join(map(str, ints.tolist()))
    r = parse_lines(line.encode(), [Slot("f", "float"), Slot("i", "uint64")], fast=fast)
    np.testing.assert_array_equal(r.values[0], floats.astype(np.float32))
    np.testing.assert_array_equal(r.values[1], ints)


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_compiled_scanner_equals_numpy_parser(layout_name):
    from fleetkit.dataset._fastparse import fast_parse
    layout = LAYOUTS[layout_name][:1] + [("unused", "float", False, 1)] + LAYOUTS[layout_name][1:]
    rng = np.random.default_rng(3)
    lines = _SampleGen(_random_samples(layout, 300, rng)).run_to_lines([str(i) for i in range(300)])
    buf = ("\n".join(lines) + "  \t\n").encode()  # blank lines and trailing blanks too
    slots = [Slot(n, k, d, n != "unused", (-1, w) if d else ()) for n, k, d, w in layout]
    ref = parse_lines(buf, slots, fast=False)
    got = parse_lines(buf, slots)
    assert got.num == ref.num == 300 and len(got.values) == len(layout) - 1
    for a, b in zip(got.values + got.lengths, ref.values + ref.lengths):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    if fast_parse(buf, slots) is None:
        pytest.skip("no C compiler here: only the numpy parser runs")


@pytest.mark.parametrize("line,reason", [
    (b"2 5 6 2 0.5 1", "line ends before slot 'c'"),
    (b"0 2 0.5 1 1 3", "count '0' must be an integer > 0"),
    (b"1 5 2 0.5 x 1 3", "value 'x' is not a number"),
    (b"1 -5 2 0.5 1 1 3", "value '-5' is not an unsigned integer"),
    (b"1 5.5 2 0.5 1 1 3", "value '5.5' is not an unsigned integer"),
    (b"1 5 2 0.5 1 1 3 4", "more slots than set_use_var"),
    (b"1 5 1 0.5 1 3", "dense slot 'b' (#2) has 1 value(s)"),
    (b"9 5 2 0.5 1 1 3", "announces 9 value(s)"),
    (b"1 18446744073709551616 2 0.5 1 1 3", "value '18446744073709551616' is too large for an unsigned integer id"),
    (b"1 99999999999999999999 2 0.5 1 1 3", "is too large for an unsigned integer id (uint64, at most 18446744073709551615)"),
])
def test_malformed_line_names_file_line_reason(line, reason):
    slots = [Slot("a", "uint64"), Slot("b", "float", True, True, (-1, 2)), Slot("c", "uint64")]
    good = b"1 5 2 0.5 1 1 3\n"
    with pytest.raises(DataFormatError) as e:
        parse_lines(good * 3 + b"\n" + line + b"\n" + good, slots, "part-7", first_line=11)
    assert e.value.file == "part-7" and e.value.line == 15
    assert reason in e.value.reason and "part-7:15" in str(e.value)
    r = parse_lines(good * 3 + b"\n" + line + b"\n" + good, slots, "part-7", first_line=11, skip_bad=True)
    assert r.num == 4 and r.bad_lines == 1 and r.first_bad.startswith("part-7:15:")


def test_dataset_skip_bad_lines_counts_and_reports(tmp_path, caplog):
    path = tmp_path / "f"
    path.write_text("1 3 1 1\n1 x 1 0\n2 4 5 1 1\n1 7\n")
    ds = DatasetFactory().create_dataset("InMemoryDataset")
    ds.set_use_var([layers.data("ids", [1], dtype="int64", lod_level=1), layers.data("y", [1], dtype="int64")])
    ds.set_filelist([str(path)])
    with pytest.raises(DataFormatError, match=r"f:2: slot 'ids' \(#1\): value 'x'"):
        ds.load_into_memory()
    ds.set_skip_bad_lines(True)
    with caplog.at_level("WARNING"):
        ds.load_into_memory()
    assert ds.get_memory_data_size() == 2 and ds.skipped_lines() == 2
    assert "skipped 2 malformed line(s)" in caplog.text


def test_generator_errors_name_slot_and_line():
    class Bad(MultiSlotDataGenerator):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def generate_sample(self, line):
            def gen():
                yield self.fn(line)
            return gen

    ok = [("ids", [1, 2]), ("label", [1])]
    cases = [
        (lambda ln: ok if ln == "a" else [("label", [1]), ("ids", [1])], "slot order must not change"),
        (lambda ln: ok if ln == "a" else [("ids", [1])], "sample has 1 slots but the first sample had 2"),
        (lambda ln: ok if ln == "a" else [("ids", []), ("label", [1])], "slot 'ids' is empty"),
        (lambda ln: ok if ln == "a" else [("ids", ["z"]), ("label", [1])], "slot 'ids': value 'z' is not a number"),
    ]
    for fn, msg in cases:
        g = Bad(fn)
        g.set_batch(1)
        with pytest.raises(DataFormatError, match=msg) as e:
            g.run_to_lines(["a", "b"])
        assert "'b'" in str(e.value)


def test_generator_batch_hook_run_from_memory_and_stdin():
    class Gen(MultiSlotDataGenerator):
        def generate_sample(self, line):
            def gen():
                n = 3 if line is None else int(line)
                for i in range(n):
                    yield [("ids", list(range(1, i + 2))), ("w", [0.5 * i])]
            return gen

        def generate_batch(self, samples):
            def gen():  # pad every ids slot to the longest in the batch
                width = max(len(s[0][1]) for s in samples)
                for ids, w in samples:
                    yield [(ids[0], ids[1] + [0] * (width - len(ids[1]))), w]
            return gen

    g = Gen()
    g.set_batch(2)
    out = io.StringIO()
    g.run_from_memory(stdout=out)
    assert out.getvalue() == "2 1 0 1 0.0\n2 1 2 1 0.5\n3 1 2 3 1 1.0\n"
    out2 = io.StringIO()
    Gen().run_from_stdin(stdin=io.StringIO("1\n2\n"), stdout=out2)
    assert out2.getvalue().splitlines() == ["2 1 0 1 0.0", "2 1 0 1 0.0", "2 1 2 1 0.5"]  # one batch of 3


def test_desc_and_setters():
    ds = DatasetFactory().create_dataset("InMemoryDataset")
    ds.set_use_var([layers.data("ids", [1], dtype="int64", lod_level=1), layers.data("x", [3])])
    ds.set_batch_size(8)
    ds.set_thread(3)
    ds.set_pipe_command('python my "reader".py')
    text = ds.desc()
    assert 'name: "MultiSlotInMemoryDataFeed"' in text and "batch_size: 8" in text and "thread_num: 3" in text
    assert 'pipe_command: "python my \\"reader\\".py"' in text
    assert text.count("slots {") == 2 and 'type: "float"' in text and "is_dense: true" in text
    with pytest.raises(InvalidArgumentError, match="dtype 'int32'"):
        ds.set_use_var([layers.data("bad", [1], dtype="int32")])
    with pytest.raises(ValueError, match="unknown dataset class"):
        DatasetFactory().create_dataset("NoSuchDataset")
    q = DatasetFactory().create_dataset()
    with pytest.raises(NotImplementedError):
        q.local_shuffle()
    assert os.path.basename(__file__)  # keep the import used


def test_compiled_scanner_reestimates_when_a_block_differs():
    """The scanner sizes its arrays from the previous block; a block with far more values of
    one slot per byte must still come out complete (it recounts)."""
    slots = [Slot("ids", "uint64"), Slot("w", "float", True, True, (-1, 1))]
    few = b"".join(b"1 123456789012 1 0.5\n" for _ in range(200))
    many = b"".join(b"9 1 2 3 4 5 6 7 8 9 1 0.5\n" for _ in range(200))
    short = b"".join(b"1 7 1 0.5\n" for _ in range(200))  # far more lines per byte
    for buf in (few, many, few, many, short, few, short):
        got, ref = parse_lines(buf, slots), parse_lines(buf, slots, fast=False)
        assert got.num == ref.num == 200
        for a, b in zip(got.values + got.lengths, ref.values + ref.lengths):
            np.testing.assert_array_equal(a, b)


def test_instance_store_take_slice_concat():
    from fleetkit.dataset import InstanceStore
    slots = [Slot("ids", "uint64"), Slot("w", "float", True, True, (-1, 2)), Slot("one", "uint64")]
    rows = [([1, 2], [0.5, 1.5], [7]), ([3], [2.5, 3.5], [8]), ([4, 5, 6], [4.5, 5.5], [9])]

    def store(rs):
        vals = [np.array([x for r in rs for x in r[k]], s.dtype) for k, s in enumerate(slots)]
        offs = [np.concatenate([[0], np.cumsum([len(r[k]) for r in rs])]).astype(np.int64) for k in range(3)]
        return InstanceStore(slots, vals, offs)

    def rows_of(st):
        return [tuple(tuple(st.values[k][st.offsets[k][i]:st.offsets[k][i + 1]].tolist()) for k in range(3))
                for i in range(len(st))]

    want = [tuple(tuple(x) for x in r) for r in rows]
    s = store(rows)
    assert rows_of(s.take(np.array([2, 0, 2, 1]))) == [want[2], want[0], want[2], want[1]]  # fixed + ragged
    assert rows_of(s.slice(1, 3)) == want[1:]
    assert rows_of(InstanceStore.concat(slots, [s.slice(2, 3), s.slice(0, 2)])) == [want[2]] + want[:2]
    feed = s.feed()
    assert feed["ids"].lod() == [[0, 2, 3, 6]] and feed["w"].shape == (3, 2)


def test_instance_store_batches_ranges_and_array_offsets(monkeypatch):
    """batches(bs, start, stop) gives the instances start..stop-1 in batches, whatever chunks
    its offsets are stacked in; sparse levels are int64 array views, lod() gives lists."""
    from fleetkit.core.scope import check_lod
    from fleetkit.dataset import InstanceStore, instances
    rng = np.random.default_rng(5)
    slots = [Slot("ids", "uint64"), Slot("w", "float", True, True, (-1, 2)), Slot("tags", "uint64")]
    n = 23
    lens = [rng.integers(1, 4, n), np.full(n, 2), rng.integers(0, 3, n)]  # tags: empty ones too
    offs = [np.concatenate([[0], np.cumsum(ln)]).astype(np.int64) for ln in lens]
    vals = [np.arange(o[-1]).astype(s.dtype) * (k + 1) for k, (s, o) in enumerate(zip(slots, offs))]
    store = InstanceStore(slots, vals, offs)

    def expect(lo, hi):
        out = {}
        for k, s in enumerate(slots):
            o = offs[k][lo:hi + 1]
            out[s.name] = (vals[k][o[0]:o[-1]], (o - o[0]).tolist())
        return out

    monkeypatch.setattr(instances, "_CHUNK_BATCHES", 2)  # chunks of 2 batches: boundaries inside the range
    for lo, hi, bs in [(0, n, 4), (3, 20, 3), (5, 6, 4), (7, 7, 2), (0, n, 50)]:
        got = list(store.batches(bs, lo, hi))
        assert len(got) == -(-(hi - lo) // bs)
        for b, feed in enumerate(got):
            want = expect(lo + b * bs, min(lo + (b + 1) * bs, hi))
            for name in ("ids", "tags"):
                level = feed[name]._lod[0]
                assert level.__class__ is np.ndarray and level.dtype == np.int64
                assert check_lod(feed[name]._lod, len(feed[name].values)) is None
                assert feed[name].lod() == [want[name][1]] and type(feed[name].lod()[0][0]) is int
                np.testing.assert_array_equal(feed[name].values.reshape(-1), want[name][0])
            np.testing.assert_array_equal(feed["w"].reshape(-1), want["w"][0])
    bad = fk.LoDTensor(np.zeros((3, 1)))
    bad._lod = [np.array([0, 1, 2], np.int64)]  # ends at 2, the tensor has 3 rows
    assert "ends at 2 but the tensor has 3 rows" in check_lod(bad._lod, 3)
    assert "must start at 0" in check_lod([np.array([1, 3], np.int64)], 3)


_OVERFLOW_CHILD = r"""
import sys
from fleetkit import layers
from fleetkit.dataset import DatasetFactory, Slot, parse_lines
from fleetkit.dataset._fastparse import _library
from fleetkit.errors import DataFormatError

good_path, bad_path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("scanner", _library() is not None)
slots = [Slot("ids", "uint64"), Slot("y", "uint64")]
good = b"".join(b"1 5 1 7\n" for _ in range(100))
parse_lines(good, slots)  # sizes the scanner's estimate for the next block
try:
    parse_lines(good + str(count).encode() + b" " + b" ".join([b"1"] * 100000) + b"\n", slots, "blk")
except DataFormatError as e:
    print("block", e.file, e.line, e.reason)
ds = DatasetFactory().create_dataset("InMemoryDataset")
ds.set_use_var([layers.data("ids", [1], dtype="int64", lod_level=1), layers.data("y", [1], dtype="int64")])
ds.block_bytes = 4096  # the bad count lands in a later block of the second file
for files in ([good_path], [good_path, bad_path]):
    ds.set_filelist(files)
    try:
        ds.load_into_memory()
        print("loaded", ds.get_memory_data_size())
    except DataFormatError as e:
        print("dataset", e.file, e.line, e.reason)
"""


@pytest.mark.parametrize("count", [2**63, 2**63 + 7, 2**64 - 1, 2**64 + 1])
def test_huge_count_in_a_later_block_is_a_clear_error_not_a_crash(tmp_path, count):
    """Issue 11 defect 1: a count near 2**63 in a block after the first once passed the C
    scanner's capacity check as a negative number and wrote past its arrays (SIGSEGV/abort).
    In a child process, so a crash fails this test instead of killing pytest."""
    import subprocess
    import sys
    good = "".join(f"1 {i} 1 7\n" for i in range(2000))
    (tmp_path / "good").write_text(good)
    (tmp_path / "bad").write_text(good + f"{count} " + " ".join(["1"] * 100000) + " 1 7\n" + good)
    proc = subprocess.run([sys.executable, "-c", _OVERFLOW_CHILD, str(tmp_path / "good"), str(tmp_path / "bad"),
                           str(count)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert out[1] == f"block blk 101 slot 'ids' (#1): count '{count}' is too large " \
                     f"(at most 9223372036854775807, and no more than the values that follow it on the line)"
    assert out[2] == "loaded 2000"
    assert out[3].startswith(f"dataset {tmp_path / 'bad'} 2001 slot 'ids' (#1): count '{count}' is too large")
