"""Datasets: ``DatasetFactory().create_dataset("QueueDataset" | "InMemoryDataset")``.

A dataset knows its files, the pipe command, the slots (from ``set_use_var``)
and the batch size.  ``Executor.train_from_dataset`` asks it for one iterator
of feed dicts per thread (``thread_feeds``): a ``QueueDataset`` streams and
parses files while training (reader threads share the file list), an
``InMemoryDataset`` parses everything first (``load_into_memory``), can be
shuffled locally or across trainers, and splits its instances between the
threads.
"""
from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..env import shuffle_timeout_s
from ..errors import InvalidArgumentError
from .fs import FsConfig
from .instances import InstanceStore
from .multislot import DataFeedDesc, Slot, parse_lines, slots_from_vars
from .pipe import DEFAULT_BLOCK_BYTES, read_blocks, source_label
from .shuffle import DEFAULT_SEND_BATCH, ShuffleStats, global_shuffle, shuffle_rng

__all__ = ["DatasetBase", "DatasetFactory", "InMemoryDataset", "QueueDataset"]

log = logging.getLogger(__name__)


class DatasetFactory:
    """Creates datasets by class name, as ``fluid.DatasetFactory``."""

    def create_dataset(self, datafeed_class: str = "QueueDataset") -> DatasetBase:
        classes = {"QueueDataset": QueueDataset, "InMemoryDataset": InMemoryDataset}
        if datafeed_class not in classes:
            raise InvalidArgumentError(f"create_dataset: unknown dataset class {datafeed_class!r}; "
                                       f"known: {sorted(classes)}")
        return classes[datafeed_class]()


class DatasetBase:
    """Settings shared by both datasets (fluid 1.4 setter names); with ``prepare_to_run``,
    ``thread_feeds``... each dataset is a ``core.dataset_source.DatasetSource``."""

    feed_name = "MultiSlotDataFeed"
    process_safe_feeds = False

    def __init__(self) -> None:
        self.proto_desc = DataFeedDesc(name=self.feed_name)
        self.thread_num = 0
        self.filelist: list[str] = []
        self.fs = FsConfig()
        self.block_bytes = DEFAULT_BLOCK_BYTES
        self._use_vars: list[Any] = []
        self._skip_bad = False
        self._lock = threading.Lock()
        self._skipped = 0
        self._first_skipped: str | None = None

    # ---- setters (Paddle names) ----------------------------------------------------------
    def set_pipe_command(self, pipe_command: str) -> None:
        """Shell command every file's bytes go through (default ``cat``)."""
        self.proto_desc.pipe_command = pipe_command

    def set_batch_size(self, batch_size: int) -> None:
        if int(batch_size) < 1:
            raise InvalidArgumentError(f"set_batch_size: batch size must be >= 1, got {batch_size}")
        self.proto_desc.batch_size = int(batch_size)

    def set_thread(self, thread_num: int) -> None:
        """Reader threads (and the default number of training threads)."""
        if int(thread_num) < 1:
            raise InvalidArgumentError(f"set_thread: thread number must be >= 1, got {thread_num}")
        self.thread_num = self.proto_desc.thread_num = int(thread_num)

    def set_filelist(self, filelist: Sequence[str]) -> None:
        if isinstance(filelist, str):
            raise InvalidArgumentError("set_filelist: give a list of paths, not one string")
        self.filelist = [str(f) for f in filelist]

    def set_use_var(self, var_list: Sequence[Any]) -> None:
        """The variables one line fills, in line order (their names, dtypes, shapes, lod levels)."""
        self._use_vars = list(var_list)
        self.proto_desc.slots = slots_from_vars(var_list)

    def set_hdfs_config(self, fs_name: str, fs_ugi: str) -> None:
        """``hdfs://``/``afs://`` files are read with ``hadoop fs -D fs.default.name=<fs_name>
        -D hadoop.job.ugi=<fs_ugi> -cat <path>``."""
        self.fs.fs_name, self.fs.fs_ugi = fs_name, fs_ugi

    def set_fs(self, storage_options: dict | None = None, *, hadoop_bin: str | None = None,
               cat_command: str | None = None, block_size: int | None = None,
               idle_timeout: float | None = None, **fsspec_options: Any) -> None:
        """File system options.

        Args:
            storage_options: fsspec options for URLs such as ``s3://`` (``key``,
                ``secret``, ``client_kwargs={"endpoint_url": ...}``); extra
                keyword arguments are merged into it.
            hadoop_bin: command prefix for hdfs/afs paths (default ``hadoop fs``).
            cat_command: template of the command printing an hdfs/afs file,
                e.g. ``"weed filer.cat http://127.0.0.1:8888{path}"`` (see ``FsConfig``).
            block_size: read block size of remote streams.
            idle_timeout: seconds without output after which a command is killed.
        """
        self.fs.storage_options = {**(storage_options or {}), **fsspec_options}
        if hadoop_bin is not None:
            self.fs.hadoop_bin = hadoop_bin
        if cat_command is not None:
            self.fs.cat_command = cat_command
        if block_size is not None:
            self.fs.block_size = int(block_size)
        if idle_timeout is not None:
            self.fs.idle_timeout = float(idle_timeout)

    def set_skip_bad_lines(self, skip: bool = True) -> None:
        """Skip malformed lines (counted, reported at the end) instead of raising DataFormatError."""
        self._skip_bad = bool(skip)

    def desc(self) -> str:
        """The data feed description in protobuf text format."""
        return self.proto_desc.to_text()

    # ---- reading --------------------------------------------------------------------------
    @property
    def slots(self) -> list[Slot]:
        return self.proto_desc.slots

    @property
    def used_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.is_used]

    def skipped_lines(self) -> int:
        """Malformed lines skipped so far (with ``set_skip_bad_lines``)."""
        return self._skipped

    def _read_file(self, path: str, block_bytes: int | None = None) -> Iterator[InstanceStore]:
        cmd = self.proto_desc.pipe_command
        label = source_label(path, cmd)
        for block, line_no in read_blocks(path, cmd, self.fs, block_bytes or self.block_bytes):
            parsed = parse_lines(block, self.slots, label, line_no, self._skip_bad)
            if parsed.bad_lines:
                with self._lock:
                    self._skipped += parsed.bad_lines
                    self._first_skipped = self._first_skipped or parsed.first_bad
            yield InstanceStore.from_parsed(self.used_slots, parsed)

    def skip_counts(self) -> tuple[int, str | None]:
        """(malformed lines skipped, the first of them): a forked worker process reports
        its copy of these back to the parent (``core/trainer_procs.py``)."""
        with self._lock:
            return self._skipped, self._first_skipped

    def add_skip_counts(self, lines: int, first: str | None) -> None:
        """Count ``lines`` a worker process skipped in its own copy of this dataset."""
        with self._lock:
            self._skipped += lines
            self._first_skipped = self._first_skipped or first

    def _reset_skipped(self) -> None:
        with self._lock:
            self._skipped, self._first_skipped = 0, None

    def _report_skipped(self) -> None:
        if self._skipped:
            log.warning("skipped %d malformed line(s); first: %s", self._skipped, self._first_skipped)

    def prepare_to_run(self) -> None:
        """Checks before training: slots set, files given, and the first lines of the first file
        match the slots (a slot-count mismatch fails here, before any op runs)."""
        if not self.slots:
            raise InvalidArgumentError("dataset: call set_use_var(vars) before training")
        if self.proto_desc.batch_size < 1:
            raise InvalidArgumentError("dataset: batch size must be >= 1")

    def _check_first_lines(self) -> None:
        """Parse the first lines of the first file (through the pipe command) to catch a
        slot-count mismatch before training; with skip_bad_lines it fails only if none parse."""
        if not self.filelist:
            raise InvalidArgumentError("dataset: set_filelist(files) gave no files")
        cmd, path = self.proto_desc.pipe_command, self.filelist[0]
        label = source_label(path, cmd)
        blocks = read_blocks(path, cmd, self.fs, 64 << 10)
        try:
            first = next(blocks, None)
        finally:
            blocks.close()  # kills the pipe command
        if first is not None:
            parsed = parse_lines(first[0], self.slots, label, first[1], skip_bad=True)
            if parsed.bad_lines and (not self._skip_bad or parsed.num == 0):
                parse_lines(first[0], self.slots, label, first[1], skip_bad=False)  # raises, naming the line

    def thread_feeds(self, thread_num: int) -> list[Iterator[dict[str, Any]]]:
        raise NotImplementedError

    def finish_run(self) -> None:
        self._report_skipped()


class QueueDataset(DatasetBase):
    """Streams: files are read and parsed while training, ``thread`` files at a time."""

    #: the readers take files from a counter in shared memory: fine in forked workers
    process_safe_feeds = True

    def prepare_to_run(self) -> None:
        super().prepare_to_run()
        self._reset_skipped()  # counts are per pass over the files
        self._check_first_lines()

    def thread_feeds(self, thread_num: int) -> list[Iterator[dict[str, Any]]]:
        if not self.filelist:
            raise InvalidArgumentError("QueueDataset: set_filelist(files) gave no files")
        files = list(self.filelist)
        taken = multiprocessing.Value("q", 0)  # shared by reader threads and forked workers alike

        def next_file() -> str | None:
            with taken.get_lock():
                i = taken.value
                taken.value = i + 1
            return files[i] if i < len(files) else None

        readers = max(1, min(thread_num, len(self.filelist)))
        return [self._stream(next_file) for _ in range(readers)]

    def _stream(self, next_file: Any) -> Iterator[dict[str, Any]]:
        """Batches of ``batch_size`` from the files this reader takes (a batch may span files)."""
        bs = self.proto_desc.batch_size
        carry = InstanceStore.empty(self.used_slots)
        while (path := next_file()) is not None:
            for store in self._read_file(path):
                start = 0
                if len(carry):  # complete the partial batch: copies at most one batch, not the block
                    head = store.slice(0, min(bs - len(carry), len(store)))
                    carry = InstanceStore.concat(self.used_slots, [carry, head])
                    start = len(head)
                    if len(carry) < bs:
                        continue
                    yield carry.feed()
                full = start + (len(store) - start) // bs * bs
                yield from store.batches(bs, start, full)
                carry = store.slice(full, len(store))
        if len(carry):
            yield carry.feed()

    def local_shuffle(self) -> None:
        raise NotImplementedError("QueueDataset streams its files and cannot shuffle; use InMemoryDataset")

    def global_shuffle(self, fleet: Any = None) -> None:
        raise NotImplementedError("QueueDataset streams its files and cannot shuffle; use InMemoryDataset")


class InMemoryDataset(DatasetBase):
    """Parses all files into memory first; can shuffle locally and across trainers."""

    feed_name = "MultiSlotInMemoryDataFeed"
    #: each worker iterates its own slice of the instances: fine in forked workers
    process_safe_feeds = True

    def __init__(self) -> None:
        super().__init__()
        self._store: InstanceStore | None = None
        self._shuffled = 0
        self.send_batch_size = DEFAULT_SEND_BATCH
        #: what the last global_shuffle sent and received here (fleetkit extra)
        self.global_shuffle_stats = ShuffleStats()

    def load_into_memory(self) -> None:
        """Read and parse every file (``thread`` files in parallel), in file-list order."""
        if not self.slots:
            raise InvalidArgumentError("InMemoryDataset: call set_use_var(vars) before load_into_memory")
        if not self.filelist:
            raise InvalidArgumentError("InMemoryDataset: set_filelist(files) gave no files")
        self._reset_skipped()
        threads = max(1, min(self.thread_num or 1, len(self.filelist)))
        slots = self.used_slots
        with ThreadPoolExecutor(threads, thread_name_prefix="load") as pool:   # each file joined on its thread
            files = list(pool.map(lambda p: InstanceStore.concat(slots, list(self._read_file(p))), self.filelist))
        self._store = InstanceStore.concat(slots, files)
        self._report_skipped()

    def local_shuffle(self, seed: int | None = None) -> None:
        """Shuffle the instances in memory (``seed`` makes it repeatable)."""
        store = self._loaded("local_shuffle")
        self._store = store.take(shuffle_rng(seed).permutation(len(store)))
        self._shuffled = len(self._store)

    def global_shuffle(self, fleet: Any = None, seed: int | None = None) -> None:
        """Send every instance to a pseudo-random trainer of ``fleet`` (all trainers must call
        this); without a fleet, or with one trainer, this is a local shuffle."""
        store = self._loaded("global_shuffle")
        if fleet is None or int(fleet.worker_num()) <= 1:
            self.local_shuffle(seed)
            return
        backend = _exchange_backend(fleet, "global_shuffle")
        try:
            backend.barrier()
            self.global_shuffle_stats = ShuffleStats()
            self._store = global_shuffle(store, backend, seed, self.send_batch_size, self.global_shuffle_stats)
            backend.barrier()
        finally:
            backend.close()
        self._shuffled = len(self._store)

    def set_fleet_send_batch_size(self, size: int = DEFAULT_SEND_BATCH) -> None:
        """Instances each trainer sends per frame to each peer in global_shuffle."""
        if int(size) < 1:
            raise InvalidArgumentError(f"set_fleet_send_batch_size: size must be >= 1, got {size}")
        self.send_batch_size = int(size)

    def release_memory(self) -> None:
        self._store = None

    def get_memory_data_size(self, fleet: Any = None) -> int:
        """Instances in memory here, or summed over the fleet's trainers (then every
        trainer must call it: it is a collective)."""
        return self._sum_over(fleet, len(self._store) if self._store is not None else 0)

    def get_shuffle_data_size(self, fleet: Any = None) -> int:
        """Instances this trainer holds after the last shuffle (summed over the fleet with one)."""
        return self._sum_over(fleet, self._shuffled)

    def _sum_over(self, fleet: Any, local: int) -> int:
        if fleet is None or int(fleet.worker_num()) <= 1:
            return local
        backend = _exchange_backend(fleet, "a data size query")
        try:
            return int(backend.all_reduce(np.array([local], np.int64))[0])
        finally:
            backend.close()

    def _loaded(self, what: str) -> InstanceStore:
        if self._store is None:
            raise InvalidArgumentError(f"InMemoryDataset.{what}: call load_into_memory() first")
        return self._store

    def prepare_to_run(self) -> None:
        super().prepare_to_run()
        self._loaded("train_from_dataset")

    def thread_feeds(self, thread_num: int) -> list[Iterator[dict[str, Any]]]:
        store = self._loaded("train_from_dataset")
        n, threads = len(store), max(1, thread_num)
        bounds = [n * i // threads for i in range(threads + 1)]
        bs = self.proto_desc.batch_size
        return [store.batches(bs, bounds[i], bounds[i + 1]) for i in range(threads)]


def _exchange_backend(fleet: Any, what: str) -> Any:
    """The backend ``fleet`` hands the dataset to talk to the other trainers (the dataset
    never builds a transport itself: layering, docs/architecture.md)."""
    make = getattr(fleet, "data_exchange_backend", None)
    if make is None:
        raise InvalidArgumentError(f"{what}: {type(fleet).__name__} is not a fleet (pass fleetkit.fleet.fleet, "
                                   f"initialized with fleet.init(role_maker))")
    return make(shuffle_timeout_s())
