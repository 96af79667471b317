"""Test helpers shipped with the package (gradient checks, multi-process runners)."""
