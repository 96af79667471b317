"""What ``train_from_dataset`` needs from a dataset: the seam between core and ``fleetkit.dataset``.

Core does not import the dataset package (it sits above core); the datasets there
implement this protocol, and any other object that does can feed a training run too."""
from __future__ import annotations

from typing import Any, Iterator, Protocol, Sequence, runtime_checkable


@runtime_checkable
class DatasetSource(Protocol):
    """A source of feed dicts for ``Executor.train_from_dataset`` / ``infer_from_dataset``."""

    #: workers to run when the call does not say (``set_thread``)
    thread_num: int
    #: True if the iterators of ``thread_feeds`` may run in forked worker processes
    process_safe_feeds: bool

    @property
    def used_slots(self) -> Sequence[Any]:
        """The slots fed to the program (each ``.name`` must be a variable of it)."""

    def prepare_to_run(self) -> None:
        """Check everything a run needs before any op runs (slots, files, first lines)."""

    def thread_feeds(self, thread_num: int) -> list[Iterator[dict[str, Any]]]:
        """One iterator of feed dicts (name -> array or LoD tensor) per worker."""

    def finish_run(self) -> None:
        """Called once after the workers stopped (report skipped lines...)."""

    def skip_counts(self) -> tuple[int, str | None]:
        """(malformed lines skipped so far, where the first one was): a forked worker reports
        its copy back to the parent."""

    def add_skip_counts(self, lines: int, first: str | None) -> None:
        """Count ``lines`` that a worker process skipped in its own copy of this source."""


def missing_members(obj: Any) -> list[str]:
    """The ``DatasetSource`` members ``obj`` lacks, in the protocol's order (for error messages)."""
    members = [*DatasetSource.__annotations__,
               *(n for n in vars(DatasetSource) if not n.startswith("_") and n not in DatasetSource.__annotations__)]
    return [m for m in members if not hasattr(obj, m)]
