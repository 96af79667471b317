"""fluid 1.4's public API (tests/data/fluid14_api.txt, from PaddlePaddle's API.spec) against fleetkit.

Every name either exists under fleetkit (``paddle.fluid.X`` -> ``fleetkit.X``, ``paddle.reader.X`` ->
``fleetkit.reader.X``) and is callable, or is listed as unsupported, with its reason, in
docs/porting.md (``paddle.fluid.layers.*`` in docs/porting-layers.md).  A listed class covers its
methods.  A name listed as unsupported that now exists fails the test, so the guide stays true.
"""
import re
from pathlib import Path

import pytest

import fleetkit

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "tests" / "data" / "fluid14_api.txt"
LAYERS = "paddle.fluid.layers."


def spec_names():
    return [ln.strip() for ln in SPEC.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def resolve(name):
    """The fleetkit object for a fluid 1.4 name, or None."""
    if name.startswith("paddle.fluid."):
        obj, rest = fleetkit, name[len("paddle.fluid."):]
    elif name.startswith("paddle.reader."):
        obj, rest = fleetkit.reader, name[len("paddle.reader."):]
    else:
        raise AssertionError(f"unexpected name {name}")
    for part in rest.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _reasons(doc, heading, prefix=""):
    text = (ROOT / "docs" / doc).read_text()
    m = re.search(heading + r"[^\n]*\n.*?```\n(.*?)```", text, re.S)
    assert m, f"docs/{doc} lost its list under {heading!r}"
    reasons = {prefix + k: v for k, v in (ln.split(": ", 1) for ln in m.group(2).strip().splitlines())}
    assert int(m.group(1)) == len(reasons), f"docs/{doc}: the heading says {m.group(1)}, the list has {len(reasons)}"
    return reasons


def unsupported():
    """fluid name -> reason, from both porting guides."""
    out = _reasons("porting.md", r"## Not supported outside layers \((\d+)\), and why")
    out.update(_reasons("porting-layers.md", r"## Not supported \((\d+)\), and why", LAYERS))
    return out


def _listed(name, reasons):
    parts = name.split(".")
    return any(".".join(parts[:i]) in reasons for i in range(2, len(parts) + 1))


def test_spec_file_is_the_14_list():
    names = spec_names()
    assert len(names) == len(set(names)) == 572
    assert "paddle.fluid.layers.fc" in names and "paddle.fluid.DataFeeder.feed" in names


def test_every_fluid_name_exists_and_is_callable_or_is_documented_unsupported(capsys):
    names, reasons = spec_names(), unsupported()
    found = {n: resolve(n) for n in names}
    present = [n for n in names if found[n] is not None]
    not_callable = [n for n in present if not callable(found[n])]
    assert not not_callable, f"exist but are not callable: {not_callable}"
    undocumented = [n for n in names if found[n] is None and not _listed(n, reasons)]
    assert not undocumented, f"neither in fleetkit nor in the porting guides' unsupported lists: {undocumented}"
    assert all(r.strip() for r in reasons.values())
    with capsys.disabled():
        print(f"\nfluid 1.4 API: {len(present)} of {len(names)} names exist in fleetkit "
              f"({len(names) - len(present)} documented as unsupported)")


def test_unsupported_lists_are_up_to_date():
    reasons = unsupported()
    spec = set(spec_names())
    assert not [n for n in reasons if n not in spec], "unsupported lists name things fluid 1.4 does not have"
    now_there = [n for n in reasons if resolve(n) is not None]
    assert not now_there, f"now in fleetkit: remove them from the unsupported list: {now_there}"


@pytest.mark.parametrize("path", [
    "fleetkit.incubate.fleet.parameter_server.distribute_transpiler", "fleetkit.incubate.fleet.collective",
    "fleetkit.incubate.fleet.base.role_maker", "fleetkit.incubate.data_generator", "fleetkit.transpiler",
    "fleetkit.core", "fleetkit.data_feeder", "fleetkit.param_attr", "fleetkit.backward", "fleetkit.io",
    "fleetkit.layers", "fleetkit.nets", "fleetkit.metrics", "fleetkit.profiler", "fleetkit.reader"])
def test_fluid_import_paths(path):
    import importlib
    mod = importlib.import_module(path)
    want = {"fleetkit.incubate.fleet.parameter_server.distribute_transpiler": ["fleet", "TranspilerOptimizer"],
            "fleetkit.incubate.fleet.collective": ["fleet", "DistributedStrategy"],
            "fleetkit.incubate.fleet.base.role_maker": ["PaddleCloudRoleMaker", "UserDefinedRoleMaker"],
            "fleetkit.incubate.data_generator": ["MultiSlotDataGenerator"],
            "fleetkit.core": ["Scope", "LoDTensor", "EOFException"]}.get(path, [])
    for name in want:
        assert getattr(mod, name, None) is not None, f"{path}.{name}"
