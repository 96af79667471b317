"""docs/porting-layers.md against fleetkit.layers: every layer it lists as supported is a
callable in fleetkit.layers, every layer of fluid 1.4 (tests/data/fluid14_api.txt) is listed
once, and every unsupported name comes with a reason."""
import re
from pathlib import Path

import pytest

import fleetkit.layers as L

DOC = Path(__file__).resolve().parents[2] / "docs" / "porting-layers.md"
SPEC = Path(__file__).resolve().parents[2] / "tests" / "data" / "fluid14_api.txt"
#: every layer of fluid 1.4 (paddle.fluid.layers.<name> in its API.spec; class methods folded into the class)
FLUID_LAYERS = sorted({ln.strip()[len("paddle.fluid.layers."):].split(".")[0] for ln in SPEC.read_text().splitlines()
                       if ln.strip().startswith("paddle.fluid.layers.")})


def _blocks():
    text = DOC.read_text()
    sup = re.search(r"## Supported \((\d+)\)\n\n```\n(.*?)```", text, re.S)
    uns = re.search(r"## Not supported \((\d+)\), and why\n\n```\n(.*?)```", text, re.S)
    assert sup and uns, "docs/porting-layers.md lost its two lists"
    supported = sup.group(2).split()
    reasons = dict(line.split(": ", 1) for line in uns.group(2).strip().splitlines())
    assert int(sup.group(1)) == len(supported) and int(uns.group(1)) == len(reasons)
    return supported, reasons


def test_supported_layers_exist_and_are_callable():
    supported, _ = _blocks()
    missing = [n for n in supported if not callable(getattr(L, n, None))]
    assert not missing, f"listed as supported but not in fleetkit.layers: {missing}"


def test_every_fluid_layer_is_listed_once_with_a_reason_when_unsupported():
    supported, reasons = _blocks()
    listed = supported + list(reasons)
    assert sorted(listed) == sorted(FLUID_LAYERS), (
        f"unlisted: {sorted(set(FLUID_LAYERS) - set(listed))}; not fluid names or listed twice: "
        f"{sorted(n for n in set(listed) if listed.count(n) > 1 or n not in FLUID_LAYERS)}")
    assert all(r.strip() for r in reasons.values())


def test_unsupported_list_is_up_to_date():
    """A layer added to fleetkit.layers moves to the supported list."""
    _, reasons = _blocks()
    now_there = [n for n in reasons if callable(getattr(L, n, None))]
    assert not now_there, f"now in fleetkit.layers, move them to the supported list: {now_there}"


def test_asking_for_an_unsupported_layer_says_why():
    from fleetkit.core.layers.unsupported import REASONS
    _, reasons = _blocks()
    assert REASONS == reasons  # the page and the error messages give the same reasons
    with pytest.raises(AttributeError, match=r"fleetkit.layers.is_empty \(fluid 1.4\) is not supported: not built"):
        getattr(L, "is_empty")
    with pytest.raises(AttributeError, match="has no attribute 'no_such_layer'"):
        getattr(L, "no_such_layer")
    assert not hasattr(L, "multiclass_nms")
