"""Test helpers shipped with the package (gradient checks, multi-process runners)."""
from .workers import WorkerFailure, run_workers

__all__ = ["WorkerFailure", "run_workers"]
