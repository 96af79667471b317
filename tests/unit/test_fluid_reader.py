"""DataFeeder, py_reader / PyReader / EOFException and the reader decorators, as 1.4 scripts use them."""
import time

import numpy as np
import pytest

import fleetkit as fluid
from fleetkit import reader as preader
from fleetkit.errors import InvalidArgumentError


def _samples(n=10, seed=0):
    rng = np.random.default_rng(seed)
    data = [(rng.standard_normal(4).astype("float32"), int(rng.integers(0, 3))) for _ in range(n)]

    def reader():
        yield from data
    return reader, data


def test_data_feeder_dense_int64_and_lod():
    main, start = fluid.Program(), fluid.Program()
    with fluid.program_guard(main, start):
        x = fluid.layers.data("x", shape=[4])
        fluid.layers.data("y", shape=[1], dtype="int64")  # fed by name below
        words = fluid.layers.data("words", shape=[1], dtype="int64", lod_level=1)
    feeder = fluid.DataFeeder(feed_list=[x, "y", words], place=fluid.CPUPlace(), program=main)
    fed = feeder.feed([([1, 2, 3, 4], 2, [5, 6, 7]), ([0, 0, 0, 1], 0, [8])])
    assert fed["x"].dtype == np.float32 and fed["x"].shape == (2, 4)
    assert fed["y"].dtype == np.int64 and fed["y"].tolist() == [[2], [0]]
    assert fed["words"].lod() == [[0, 3, 4]]
    assert np.asarray(fed["words"]).ravel().tolist() == [5, 6, 7, 8]
    assert np.asarray(fed["words"]).shape == (4, 1)
    with pytest.raises(InvalidArgumentError, match="sample #1 has 2 entries"):
        feeder.feed([([1, 2, 3, 4], 2, [5]), ([1, 2, 3, 4], 2)])
    with pytest.raises(InvalidArgumentError, match="'x' expects shape"):   # no reshape gives [-1, 4]
        feeder.feed([(1, 2, [5])])
    assert feeder.feed([([1, 2, 3], 2, [5])])["x"].shape == (1, 3)   # same rank: kept, as fluid 1.4
    with pytest.raises(InvalidArgumentError, match="lod_level 1"):
        feeder.feed([([1, 2, 3, 4], 2, 5)])
    par = list(feeder.feed_parallel([[([1, 2, 3, 4], 1, [1])]]))
    assert len(par) == 1 and par[0]["y"].tolist() == [[1]]
    with pytest.raises(InvalidArgumentError, match="one place per"):
        list(feeder.feed_parallel([], num_places=2))


def test_data_feeder_lod_level_2_and_decorate_reader():
    main = fluid.Program()
    with fluid.program_guard(main, fluid.Program()):
        para = fluid.layers.data("para", shape=[1], dtype="int64", lod_level=2)
    feeder = fluid.DataFeeder([para], fluid.CPUPlace(), program=main)
    fed = feeder.feed([([[1, 2], [3]],), ([[4, 5, 6]],)])
    assert fed["para"].recursive_sequence_lengths() == [[2, 1], [2, 1, 3]]
    multi = feeder.decorate_reader(lambda: iter([[([[1]],)]]), multi_devices=True)
    out = list(multi())
    assert isinstance(out[0], list) and out[0][0]["para"].lod() == [[0, 1], [0, 1]]


def _net(x, y):
    pred = fluid.layers.fc(x, size=3, act="softmax")
    loss = fluid.layers.mean(fluid.layers.cross_entropy(pred, y))
    fluid.optimizer.SGD(learning_rate=0.5).minimize(loss)
    return loss


def test_py_reader_pass_ends_with_eof_and_matches_feeding():
    reader_fn, data = _samples(10)
    main, start = fluid.Program(), fluid.Program()
    main.random_seed = start.random_seed = 7
    with fluid.program_guard(main, start):
        r = fluid.layers.py_reader(capacity=4, shapes=[(-1, 4), (-1, 1)], dtypes=["float32", "int64"])
        r = fluid.layers.double_buffer(r)
        x, y = fluid.layers.read_file(r)
        loss = _net(x, y)
    r.decorate_paddle_reader(fluid.batch(reader_fn, batch_size=4))
    exe = fluid.Executor(fluid.CPUPlace())
    scope = fluid.Scope()
    exe.run(start, scope=scope)
    losses = []
    for _ in range(2):
        r.start()
        n = 0
        try:
            while True:
                losses.append(exe.run(main, fetch_list=[loss], scope=scope)[0].item())
                n += 1
        except fluid.core.EOFException:
            r.reset()
        assert n == 3  # 10 samples in batches of 4: 4, 4, 2
    # the same batches fed through a DataFeeder give the same losses
    scope2 = fluid.Scope()
    exe = fluid.Executor(fluid.CPUPlace())  # a fresh executor draws the startup's seeded numbers again
    exe.run(start, scope=scope2)
    feeder = fluid.DataFeeder([x, y], fluid.CPUPlace(), program=main)
    plain = main.clone()
    plain.global_block().ops = [op for op in plain.global_block().ops if op.type != "read"]
    plain._bump()
    want = [exe.run(plain, feed=feeder.feed(b), fetch_list=[loss.name], scope=scope2)[0].item()
            for _ in range(2) for b in fluid.batch(reader_fn, 4)()]
    np.testing.assert_allclose(losses, want, rtol=1e-6)
    assert losses[-1] < losses[0]  # it trained


def test_py_reader_errors_name_the_reader():
    main = fluid.Program()
    with fluid.program_guard(main, fluid.Program()):
        r = fluid.layers.py_reader(capacity=2, shapes=[(-1, 2)], dtypes=["float32"], name="myreader")
        x = fluid.layers.read_file(r)
        out = fluid.layers.scale(x, 2.0)
    exe = fluid.Executor()
    with pytest.raises(InvalidArgumentError, match="myreader.*start"):
        r.start()
    r.decorate_tensor_provider(lambda: iter([[np.ones((3, 2), "float32")]]))
    with pytest.raises(InvalidArgumentError, match="not started"):
        exe.run(main, fetch_list=[out], scope=fluid.Scope())
    r.start()
    with pytest.raises(InvalidArgumentError, match="twice"):
        r.start()
    assert exe.run(main, fetch_list=[out], scope=fluid.Scope())[0].tolist() == [[2, 2]] * 3
    with pytest.raises(fluid.core.EOFException):
        exe.run(main, fetch_list=[out], scope=fluid.Scope())
    r.reset()

    def broken():
        yield [np.ones((1, 2), "float32")]
        raise RuntimeError("disk gone")
    r.decorate_batch_generator(broken)
    r.start()
    exe.run(main, fetch_list=[out], scope=fluid.Scope())
    with pytest.raises(fluid.FleetkitError, match="myreader.*RuntimeError: disk gone"):
        exe.run(main, fetch_list=[out], scope=fluid.Scope())
    r.reset()
    r.decorate_batch_generator(lambda: iter([[np.ones((1, 3), "float32")]]))
    r.start()
    with pytest.raises(fluid.FleetkitError, match="expects shape"):
        exe.run(main, fetch_list=[out], scope=fluid.Scope())
    r.reset()


def test_io_pyreader_non_iterable_and_iterable():
    reader_fn, data = _samples(6)
    main, start = fluid.Program(), fluid.Program()
    with fluid.program_guard(main, start):
        x = fluid.layers.data("x", shape=[4])
        y = fluid.layers.data("y", shape=[1], dtype="int64")
        pr = fluid.io.PyReader(feed_list=[x, y], capacity=4)
        loss = _net(x, y)
    exe = fluid.Executor()
    scope = fluid.Scope()
    exe.run(start, scope=scope)
    pr.decorate_sample_generator(reader_fn, batch_size=4, drop_last=False)
    pr.start()
    n = 0
    try:
        while True:
            exe.run(main, fetch_list=[loss], scope=scope)
            n += 1
    except fluid.core.EOFException:
        pr.reset()
    assert n == 2

    main2, start2 = fluid.Program(), fluid.Program()
    with fluid.program_guard(main2, start2):
        x2 = fluid.layers.data("x", shape=[4])
        y2 = fluid.layers.data("y", shape=[1], dtype="int64")
        it = fluid.io.PyReader(feed_list=[x2, y2], capacity=2, iterable=True)
        loss2 = _net(x2, y2)
    exe.run(start2, scope=scope)
    it.decorate_sample_list_generator(fluid.batch(reader_fn, 3))
    for _ in range(2):
        got = [exe.run(main2, feed=d, fetch_list=[loss2], scope=scope)[0] for d in it()]
        assert len(got) == 2
    assert not any(op.type == "read" for op in main2.global_block().ops)


def test_reader_decorators():
    base = lambda: iter(range(10))  # noqa: E731
    assert [len(b) for b in fluid.batch(base, 4)()] == [4, 4, 2]
    assert [len(b) for b in preader.batch(base, 4, drop_last=True)()] == [4, 4]
    assert sorted(preader.shuffle(base, 3)()) == list(range(10))
    assert list(preader.chain(base, base)()) == list(range(10)) * 2
    assert list(preader.compose(base, base)())[2] == (2, 2)
    with pytest.raises(preader.ComposeNotAligned):
        list(preader.compose(base, preader.firstn(base, 3))())
    assert list(preader.map_readers(lambda a, b: a * b, base, base)())[3] == 9
    assert list(preader.firstn(base, 3)()) == [0, 1, 2]
    assert list(preader.buffered(base, 2)()) == list(range(10))
    assert list(preader.xmap_readers(lambda v: v + 1, base, 3, 4, order=True)()) == list(range(1, 11))
    assert sorted(preader.xmap_readers(lambda v: v + 1, base, 2, 4)()) == list(range(1, 11))
    assert sorted(preader.multiprocess_reader([base, base])()) == sorted(list(range(10)) * 2)
    assert list(preader.cache(base)()) == list(range(10))
    assert [r.tolist() for r in preader.creator.np_array(np.eye(2))()] == [[1, 0], [0, 1]]

    def bad():
        yield 1
        raise OSError("boom")
    with pytest.raises(OSError, match="boom"):
        list(preader.xmap_readers(lambda v: v, bad, 2, 2)())


def test_pipe_reader_plain_gzip_and_failure(tmp_path):
    import gzip
    (tmp_path / "a.txt").write_text("x 1\ny 2\nlast")
    with gzip.open(tmp_path / "a.gz", "wt") as f:
        f.write("g 1\ng 2\n" * 3000)
    assert list(preader.PipeReader(f"cat {tmp_path / 'a.txt'}", bufsize=3).get_line()) == ["x 1", "y 2", "last"]
    lines = list(preader.PipeReader(f"cat {tmp_path / 'a.gz'}", file_type="gzip").get_line())
    assert len(lines) == 6000 and lines[-1] == "g 2"
    with pytest.raises(fluid.FleetkitError, match="exited with status 3"):
        list(preader.PipeReader("echo hi; exit 3").get_line())
    with pytest.raises(InvalidArgumentError, match="file_type"):
        preader.PipeReader("cat", file_type="zip")
    assert list(preader.Fake()(lambda: iter([7, 8]), 3)()) == [7, 7, 7]


def test_create_py_reader_by_data_reads_into_the_data_vars():
    main, start = fluid.Program(), fluid.Program()
    with fluid.program_guard(main, start):
        x = fluid.layers.data("x", shape=[4])
        y = fluid.layers.data("y", shape=[1], dtype="int64")
        r = fluid.layers.create_py_reader_by_data(capacity=2, feed_list=[x, y])
        xs, ys = fluid.layers.read_file(r)
        again = fluid.layers.read_file(r)  # a second read gets fresh variables
    assert (xs, ys) == (x, y) and again[0].name != "x" and again[0].shape == x.shape
    with pytest.raises(InvalidArgumentError, match="Variables"):
        fluid.layers.create_py_reader_by_data(2, ["x"])


def test_fluid_tensor_and_the_reader_queue_size_as_fluid_14_scripts_use_them():
    """PaddleRec word2vec (1.4) builds feeds with fluid.Tensor and logs py_reader.queue.size()."""
    t = fluid.Tensor()
    t.set(np.arange(6, dtype="int64").reshape(3, 2), fluid.CPUPlace())
    assert isinstance(t, fluid.LoDTensor) and fluid.core.Tensor is fluid.LoDTensor and t.shape() == [3, 2]
    main = fluid.Program()
    with fluid.program_guard(main, fluid.Program()):
        r = fluid.layers.py_reader(capacity=4, shapes=[(-1, 2)], dtypes=["int64"])
        x = fluid.layers.read_file(r)
    r.decorate_tensor_provider(lambda: iter([[t], [t], [t]]))
    assert r.queue.size() == 0
    r.start()
    deadline = time.monotonic() + 10
    while r.queue.size() < 3 and time.monotonic() < deadline:   # the filler thread has queued all three
        time.sleep(0.01)
    assert r.queue.size() == 3
    fluid.Executor().run(main, fetch_list=[x], scope=fluid.Scope())
    assert r.queue.size() == 2
    r.reset()
