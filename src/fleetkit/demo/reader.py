"""The demo's ``pipe_command``: a ``DataGenerator`` turning raw click-log lines into MultiSlot.

    python -m fleetkit.demo.reader < part-00000 > part-00000.multislot

A raw line (``ctr_data.write_click_log``) is tab-separated: the click (0/1), the
dense features as a comma list, then one space-separated id list per sparse slot.
The samples are ``slot0..slotN-1, dense, label``: the model's feed order.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from ..dataset.generator import MultiSlotDataGenerator
from ..errors import DataFormatError

__all__ = ["ClickLogReader", "parse_click_line"]


def parse_click_line(line: str) -> list[tuple[str, list]]:
    """One raw click-log line as a sample ``[(slot name, values), ...]``."""
    fields = line.rstrip("\n").split("\t")
    if len(fields) < 3:
        raise DataFormatError(f"click log line has {len(fields)} tab-separated fields, expected at least 3 "
                              f"(click, dense, ids...): {line[:80]!r}")
    try:
        sample: list[tuple[str, list]] = [(f"slot{s}", [int(x) for x in ids.split()])
                                          for s, ids in enumerate(fields[2:])]
        sample.append(("dense", [float(v) for v in fields[1].split(",")]))
        sample.append(("label", [int(fields[0])]))
    except ValueError as e:
        raise DataFormatError(f"click log line: {e}: {line[:80]!r}") from None
    return sample


class ClickLogReader(MultiSlotDataGenerator):
    """``generate_sample`` for the raw click log (fluid 1.4's DataGenerator protocol)."""

    def generate_sample(self, line: Any) -> Callable[[], Iterator[list]]:
        def gen() -> Iterator[list]:
            yield parse_click_line(line)
        return gen


if __name__ == "__main__":
    ClickLogReader().run_from_stdin()
