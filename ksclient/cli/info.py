"""`portcls info FILTER` and `portcls ls --json`: filters, pins and their devices' health."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

import ksclient
from ipc import ks
from ipc.ks import Communication, DataFlow
from ksclient.cli import common

DESCRIPTION = "a filter's pins and their properties, its device's state, restarts, last failure"
UNLIMITED = 0xFFFFFFFF


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="FILTER")
    parser.add_argument("--json", action="store_true")
    common.add_runtime(parser)


def pin_kind(pin: ksclient.PinInfo) -> str:
    if pin.communication == Communication.NONE:
        return "bridge " + ("in" if pin.dataflow == DataFlow.IN else "out")
    return "render" if pin.dataflow == DataFlow.IN else "capture"


def physical_connections(client: ksclient.Client, f: ksclient.FilterInfo) -> dict[int, str]:
    """KSPROPERTY_PIN_PHYSICALCONNECTION of each pin that has one: "<filter>:<pin>"; a
    filter removed meanwhile has none."""
    wires = {}
    for pin in f.pins:
        try:
            wire = client.pin_property(f.id, pin.id, "physicalconnection")
        except ksclient.KsError:
            return {}
        if isinstance(wire, dict):
            wires[pin.id] = f"{wire.get('filter')}:{wire.get('pin')}"
    return wires


def filter_record(f: ksclient.FilterInfo, devices: dict[str, Any],
                  wires: dict[int, str] | None = None) -> dict[str, Any]:
    """A filter as a JSON object: its pins (with their physical connections, `wires`)
    and its device's state from `stats()`."""
    wires = wires or {}
    return {
        "id": f.id, "device": f.device, "subdevice": f.name,
        "device_state": devices.get(f.device, {}),
        "pins": [{
            "id": pin.id, "name": pin.name, "kind": pin_kind(pin),
            "dataflow": pin.dataflow.name, "communication": pin.communication.name,
            "category": guid_name(pin.category), "open": f.open_counts[pin.id],
            "max_instances": None if pin.max_instances == UNLIMITED else pin.max_instances,
            "data_ranges": [_range(r) for r in pin.data_ranges],
            "physical_connection": wires.get(pin.id),
        } for pin in f.pins],
    }


def _range(r: Any) -> str:
    sub = getattr(r, "sub_format", "")
    names = {ks.KSDATAFORMAT_SUBTYPE_MIDI: "MIDI", ks.KSDATAFORMAT_SUBTYPE_MIDI_BUS: "MIDI bus",
             ks.KSDATAFORMAT_SUBTYPE_DIRECTMUSIC: "DirectMusic"}
    return names.get(sub, str(sub))


def guid_name(guid: str) -> str:
    """A GUID by its KS name (KSAUDFNAME_MIDI, ...) where `ipc.ks` knows it."""
    for name, value in vars(ks).items():
        if name.startswith("KS") and value == guid:
            return name
    return guid


def run(args: argparse.Namespace) -> int:
    with common.connect(args) as client:
        f = client.filter(args.target)
        devices = client.stats().get("devices", {})
        registry = client.device_registry(f.device)
        wires = physical_connections(client, f)
    record = filter_record(f, devices, wires)
    record["registry"] = [{**key, "values": {name: _json_value(value) for name, value
                                             in key["values"].items()}} for key in registry]
    if args.json:
        print(json.dumps(record))
        return 0
    out = common.console()
    state = record["device_state"]
    out.print(f"[bold]{f.id}[/bold]  device {f.device}, subdevice {f.name}")
    if state:
        out.print(f"  state {_state(state.get('state', '?'))}, pid {state.get('pid')}, "
                  f"restarts {state.get('restarts', 0)}, "
                  f"last failure: {state.get('last_exit') or 'none'}")
    table = Table("pin", "name", "kind", "category", "instances", "data ranges", "wired to")
    for pin in record["pins"]:
        limit = "unlimited" if pin["max_instances"] is None else pin["max_instances"]
        table.add_row(str(pin["id"]), pin["name"], pin["kind"], pin["category"] or "",
                      f"{pin['open']}/{limit}", ", ".join(pin["data_ranges"]) or "-",
                      pin["physical_connection"] or "")
    out.print(table)
    for key in record["registry"]:
        out.print(f"  registry key {key['type']}\\{key['path']}", highlight=False)
        for name, value in key["values"].items():
            out.print(f"    {name} = {value}", highlight=False, markup=False)
        if not key["values"]:
            out.print("    (no values)")
    return 0


def _json_value(value: Any) -> Any:
    """A registry value as JSON holds it: binary data as hex."""
    return value.hex(" ") if isinstance(value, bytes) else value


def _state(state: str) -> str:
    colour = {"running": "green", "failed": "red"}.get(state, "yellow")
    return f"[{colour}]{state}[/{colour}]"


def run_ls_json(client: ksclient.Client) -> int:
    """Every filter with its pins, and every device (failed and restarting ones too)."""
    filters = client.filters()
    devices = client.stats().get("devices", {})
    print(json.dumps({
        "filters": [filter_record(f, devices, physical_connections(client, f))
                    for f in filters],
        "devices": devices,
    }))
    return 0


def print_other_devices(client: ksclient.Client, filters: list[ksclient.FilterInfo]) -> None:
    """The devices without a published filter: failed, restarting, starting."""
    devices: dict[str, Any] = client.stats().get("devices", {})
    published = {f.device for f in filters}
    out = common.console()
    for name, state in sorted(devices.items()):
        if name in published:
            continue
        out.print(f"{name}  (device, no filter) state {_state(state.get('state', '?'))}, "
                  f"restarts {state.get('restarts', 0)}, "
                  f"last failure: {state.get('last_exit') or 'none'}")
