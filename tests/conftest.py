"""Shared fixtures: fresh default programs, scope and names per test; GPU tests skip without a GPU."""
from __future__ import annotations

import pytest

import fleetkit as fk
from fleetkit.core import framework, scope, unique_name
from fleetkit.core.backend import gpu_count


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gpu_count() > 0:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (cupy + driver)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_defaults():
    """Each test builds into new default programs, a new global scope and fresh names."""
    main, startup = fk.Program(), fk.Program()
    old_main = framework.switch_main_program(main)
    old_start = framework.switch_startup_program(startup)
    old_names = unique_name.switch()
    with scope.scope_guard(scope.Scope()):
        yield
    framework.switch_main_program(old_main)
    framework.switch_startup_program(old_start)
    unique_name.switch(old_names)
