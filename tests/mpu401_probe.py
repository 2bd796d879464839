"""The built-in UART miniport with a window for tests (`tests.mpu401_probe:StatsFileUart`).

The miniport is unchanged; whenever it publishes its statistics to the
device's registry key, this subclass reads the key back through the port and
writes what it found to `stats_file` as JSON, so a test in another process can
see what the registry holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from miniports.base import Port, PortServiceGroup, ResourceList
from miniports.uart import DEVICE_KEY, UartMiniport


class StatsFileUart(UartMiniport):
    def __init__(self, stats_file: str, **options: Any) -> None:
        super().__init__(**options)
        self.stats_file = Path(stats_file)
        self.probe_port: Port | None = None

    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        self.probe_port = port
        return super().init(resources, port)

    def publish_statistics(self) -> None:
        super().publish_statistics()
        if self.probe_port is None:
            return
        values = self.probe_port.new_registry_key(DEVICE_KEY, "Statistics").enumerate_values()
        partial = self.stats_file.with_suffix(".partial")
        partial.write_text(json.dumps(values))
        os.replace(partial, self.stats_file)
