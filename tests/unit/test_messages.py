"""Issue 11, defect 11: messages stay short and readable whatever the input: bad tokens are cut
with their length, huge counts say "too large", durations are rounded."""
from __future__ import annotations

import numpy as np
import pytest

from fleetkit.collective import CollectiveTimeoutError, LocalGroup
from fleetkit.dataset import MultiSlotDataGenerator, Slot, parse_lines
from fleetkit.errors import DataFormatError, seconds_text


@pytest.mark.parametrize("fast", [True, False])
def test_a_huge_bad_token_is_cut_with_its_length(fast):
    token = b"7" * 10 + b"x" * 1_000_000
    with pytest.raises(DataFormatError) as e:
        parse_lines(b"1 5 1 7\n1 " + token + b" 1 7\n", [Slot("a", "uint64"), Slot("b", "uint64")], "f", fast=fast)
    assert len(str(e.value)) < 600 and len(e.value.reason) < 200
    assert f"value '{'7' * 10}{'x' * 30}...' ({len(token)} bytes) is not an unsigned integer" in e.value.reason


def test_a_huge_count_says_too_large_with_the_limit():
    with pytest.raises(DataFormatError) as e:
        parse_lines(b"1 5\n99999999999999999999999 5\n", [Slot("a", "uint64")], "f")
    assert e.value.line == 2
    assert "count '99999999999999999999999' is too large (at most 9223372036854775807" in e.value.reason
    with pytest.raises(DataFormatError, match="count '0' must be an integer > 0"):
        parse_lines(b"0\n", [Slot("a", "uint64")], "f")


def test_generator_errors_cut_a_huge_input_line():
    class Gen(MultiSlotDataGenerator):
        def generate_sample(self, line):
            def gen():
                yield [("ids", ["z" * 100_000])]
            return gen

    with pytest.raises(DataFormatError) as e:
        Gen().run_to_lines(["q" * 1_000_000])
    assert len(str(e.value)) < 400
    assert "(100000 characters) is not a number" in str(e.value) and "(1000000 characters)" in str(e.value)


def test_durations_are_rounded():
    assert seconds_text(14.999817081999936) == "15.0"
    assert seconds_text(300) == "300.0" and seconds_text(0.25) == "0.25" and seconds_text(0.0012345) == "0.0012"
    group = LocalGroup(2, timeout=0.3333333)
    with pytest.raises(CollectiveTimeoutError, match=r"did not enter all_reduce #\d+ within 0.33 s$"):
        group[0].all_reduce(np.ones(2))  # rank 1 never comes
