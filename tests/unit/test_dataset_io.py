"""Reading files: pipe commands, .gz, hdfs/afs command reader, and every failure mode
(missing file, failing pipe command with stderr, stalled command, source failing mid-file)."""
from __future__ import annotations

import gzip
import sys
import time

import numpy as np
import pytest

from fleetkit import layers
from fleetkit.dataset import DatasetFactory
from fleetkit.dataset.fs import FsConfig, remote_command
from fleetkit.dataset.pipe import read_blocks
from fleetkit.errors import DataFormatError, DataReadError

LINES = "".join(f"2 {i} {i + 1} 1 {i % 2}\n" for i in range(500))


def _dataset(kind="InMemoryDataset"):
    ds = DatasetFactory().create_dataset(kind)
    ds.set_use_var([layers.data("ids", [1], dtype="int64", lod_level=1), layers.data("y", [1], dtype="int64")])
    ds.set_batch_size(64)
    return ds


def _ids(ds):
    return np.concatenate([np.asarray(b["ids"]).reshape(-1) for it in ds.thread_feeds(1) for b in it])


def test_pipe_command_transforms_lines_and_blocks_keep_line_numbers(tmp_path):
    path = tmp_path / "raw"
    path.write_text(LINES * 400)  # 2.6 MB: several reads of the 1 MiB pipe
    blocks = list(read_blocks(str(path), "cat", block_bytes=100_000))
    assert len(blocks) > 1 and b"".join(b for b, _ in blocks).decode() == LINES * 400
    lines_before = 0
    for block, first in blocks:
        assert first == lines_before + 1 and block.endswith(b"\n")
        lines_before += block.count(b"\n")
    path.write_text(LINES)
    ds = _dataset()
    ds.set_filelist([str(path)])
    ds.set_pipe_command("awk '$2 % 2 == 0'")  # a real converter: keeps even ids
    ds.load_into_memory()
    assert ds.get_memory_data_size() == 250
    assert (_ids(ds)[0::2] % 2 == 0).all()


def test_gz_local_and_remote_command_reader(tmp_path):
    gz = tmp_path / "part.gz"
    gz.write_bytes(gzip.compress(LINES.encode()))
    ds = _dataset()
    ds.set_filelist([str(gz)])
    ds.load_into_memory()
    assert ds.get_memory_data_size() == 500
    # hdfs:// through a configurable command ({path} is the part after the authority)
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "p0").write_text(LINES)
    ds2 = _dataset("QueueDataset")
    ds2.set_fs(cat_command=f"cat {tmp_path}/remote{{path}}")
    ds2.set_filelist(["hdfs://namenode:9000/p0"])
    np.testing.assert_array_equal(_ids(ds2), np.arange(500).repeat(2) + np.tile([0, 1], 500))


def test_hadoop_command_line_is_built_as_paddle_does():
    cfg = FsConfig()
    assert remote_command("hdfs://nn/a/b", cfg) == ["hadoop", "fs", "-cat", "hdfs://nn/a/b"]
    cfg.fs_name, cfg.fs_ugi = "hdfs://nn:9000", "user,passwd"
    assert remote_command("afs://x/y.gz", cfg) == [
        "hadoop", "fs", "-D", "fs.default.name=hdfs://nn:9000", "-D", "hadoop.job.ugi=user,passwd", "-text",
        "afs://x/y.gz"]


def test_missing_file_is_a_clear_error(tmp_path):
    ds = _dataset()
    ds.set_filelist([str(tmp_path / "nope")])
    with pytest.raises(DataReadError, match="nope does not exist"):
        ds.load_into_memory()
    with pytest.raises(DataReadError, match="does not exist"):
        list(read_blocks("file://" + str(tmp_path / "nope")))


def test_failing_pipe_command_reports_status_and_stderr(tmp_path):
    path = tmp_path / "f"
    path.write_text(LINES)
    ds = _dataset("QueueDataset")
    ds.set_filelist([str(path)])
    ds.set_pipe_command("cat; echo 'reader.py: boom at record 42' >&2; exit 3")
    with pytest.raises(DataReadError, match=r"(?s)exited with status 3.*boom at record 42"):
        list(ds.thread_feeds(1)[0])


def test_remote_read_failing_mid_file_is_an_error_not_a_short_epoch(tmp_path):
    path = tmp_path / "p0"
    path.write_text(LINES)
    ds = _dataset()
    # the "remote" prints part of the file, then dies like a broken connection
    ds.set_fs(cat_command=f"sh -c 'head -c 3000 {path}; echo connection reset by peer >&2; exit 255'")
    ds.set_filelist(["afs://cluster/p0"])
    with pytest.raises(DataReadError, match=r"(?s)exited with status 255 after 3000 bytes.*connection reset"):
        ds.load_into_memory()


def test_stalled_command_is_killed_after_idle_timeout(tmp_path):
    path = tmp_path / "f"
    path.write_text(LINES)
    ds = _dataset()
    ds.set_filelist([str(path)])
    ds.set_pipe_command("head -c 100; sleep 30")
    ds.set_fs(idle_timeout=0.5)
    t = time.monotonic()
    with pytest.raises(DataReadError, match="produced no output for 0.5 s"):
        ds.load_into_memory()
    assert time.monotonic() - t < 10


def test_slot_mismatch_is_caught_before_training(tmp_path):
    path = tmp_path / "f"
    path.write_text("2 1 2 1 0 7\n" * 10)  # three slots, the dataset has two
    ds = _dataset("QueueDataset")
    ds.set_filelist([str(path)])
    with pytest.raises(DataFormatError, match=r"f:1: 1 token\(s\) after the last of the 2 slots"):
        ds.prepare_to_run()


def test_python_generator_as_pipe_command(tmp_path):
    script = tmp_path / "gen.py"
    script.write_text(
        "from fleetkit.dataset import MultiSlotDataGenerator\n"
        "class G(MultiSlotDataGenerator):\n"
        "    def generate_sample(self, line):\n"
        "        def gen():\n"
        "            a, b = line.split(',')\n"
        "            yield [('ids', [int(a), int(a) + 1]), ('y', [int(b)])]\n"
        "        return gen\n"
        "G().run_from_stdin()\n")
    raw = tmp_path / "raw.csv"
    raw.write_text("".join(f"{i},{i % 2}\n" for i in range(100)))
    ds = _dataset()
    ds.set_filelist([str(raw)])
    ds.set_pipe_command(f"{sys.executable} {script}")
    ds.load_into_memory()
    ds.local_shuffle(seed=3)
    ids = _ids(ds)
    assert sorted(ids[0::2].tolist()) == list(range(100)) and (ids[1::2] == ids[0::2] + 1).all()


def test_queue_dataset_skips_bad_lines_and_reports_at_the_end(tmp_path, caplog):
    path = tmp_path / "f"
    path.write_text("2 1 2 1 0\n2 1 1 0\n1 5 1 1\n1 x 1 1\n")
    ds = _dataset("QueueDataset")
    ds.set_filelist([str(path)])
    ds.set_skip_bad_lines(True)
    for _ in range(2):  # counts are per pass
        ds.prepare_to_run()
        assert _ids(ds).tolist() == [1, 2, 5]
        with caplog.at_level("WARNING"):
            ds.finish_run()
        assert ds.skipped_lines() == 2
    assert "skipped 2 malformed line(s); first: " + str(path) + ":2:" in caplog.text
