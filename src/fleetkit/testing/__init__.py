"""Test helpers shipped with the package (gradient checks, multi-process runners)."""
from ..fleet.launch import free_ports
from .workers import WorkerFailure, run_workers

__all__ = ["WorkerFailure", "free_ports", "run_workers"]
