"""Filter instances: a pin's per-filter limit counts the pins on one filter instance,
its global limit those on every instance of the filter."""

from __future__ import annotations

import pytest

import ksclient

PROBE = """
[[device]]
name = "inst"
miniport = "tests.probe_miniports:InstanceProbe"
"""


def test_per_filter_and_global_instance_limits(start_kernel) -> None:
    kernel = start_kernel(PROBE)
    with kernel.connect() as c, kernel.connect() as other:
        c.wait_for_filter("inst")
        first, second = c.open_filter("inst"), c.open_filter("inst")
        a, b = first.open_pin(3), first.open_pin(3)
        assert first.cinstances(3) == {"possible": 2, "current": 2}
        assert second.cinstances(3) == {"possible": 2, "current": 0}
        with pytest.raises(ksclient.InstancesExhaustedError, match="per filter"):
            first.open_pin(3)  # the per-filter limit of this instance
        third = second.open_pin(3)  # another instance: room under the global limit
        assert c.pin_property("inst", 3, "globalcinstances") == {"possible": 3, "current": 3}
        with pytest.raises(ksclient.InstancesExhaustedError, match="3 instance"):
            second.open_pin(3)  # the global limit, across instances
        with pytest.raises(ksclient.InstancesExhaustedError):
            other.open_capture("inst", pin=3)  # and across clients
        first.close()  # closes its pins
        assert a._closed and b._closed
        assert c.pin_property("inst", 3, "globalcinstances")["current"] == 1
        with other.open_capture("inst", pin=3) as theirs:  # the default instance of theirs
            assert other.pin_property("inst", 3, "cinstances") == {"possible": 2, "current": 1}
            theirs.run()
        third.close()
        second.close()
        with pytest.raises(ksclient.KsError):
            c.open_pin("inst", 3, instance=first.instance)  # closed
