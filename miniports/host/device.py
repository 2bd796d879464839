"""The device's process: its adapter's start_device, and one miniport host per port.

The kernel starts one process per device (`python -m miniports.host`). It
loads the device's adapter (`--adapter`) or, for a device configured with a
miniport (`--miniport`), the default adapter around that miniport, and runs
`start_device` on a thread of its own. Each `port.init` the adapter makes
starts a `MiniportHost` for that port: the first on the process's main thread
(where a miniport may install signal handlers, as the fault injector does),
every further one on a thread of its own, each with its own bus connection
under the launch's identity + "/<index>" and the launch's secret. `port.init`
returns once the kernel has run IPort::Init for it (InitComplete);
`pc_register_subdevice` and `pc_register_physical_connection` are requests the
port's host makes for the adapter. When start_device returns, the process tells
the kernel (DeviceStarted, under the launch's own identity).

The device is one driver: a miniport host that ends with a fault (or a
refused registration) ends every other one and the process with its exit
status; an adapter that raises anything but StatusError is a fault too
(EXIT_MINIPORT_FAULT, restarted by the kernel with back-off); a StatusError
from start_device is reported as a failed start (EXIT_CONFIG_ERROR, not
restarted). The process ends when every host has ended.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Final

import zmq

from ipc import protocol as p
from ipc import trace
from ipc.credentials import MAX_SUBDEVICES, LaunchCredentials
from ipc.rpc import RpcEndpoint
from ipc.runtime import BUS_SOCKET, endpoint
from ipc.status import Status, StatusError
from miniports import registry
from miniports.adapter import Adapter, AdapterPort, DefaultAdapter, DeviceObject
from miniports.contract import MiniportMidi, ResourceList
from miniports.host.loop import EXIT_MINIPORT_FAULT, MiniportHost, load_miniport
from miniports.host.loop import _extend_path as extend_path

__all__ = ["HostDevice", "load_miniport", "main"]

INIT_TIMEOUT: Final = 60.0
"""How long `port.init` waits for the kernel's IPort::Init (registering included)."""
JOIN_SECONDS: Final = 3.0


class SubdeviceHost:
    """One port's miniport host, started by `port.init`, run on its own thread or the
    main one; `ready` is set once the host exists (or failed to)."""

    def __init__(self, device: HostDevice, index: int, miniport: MiniportMidi,
                 clsid: str, resources: ResourceList) -> None:
        self.device, self.index, self.miniport = device, index, miniport
        self.clsid, self.resources = clsid, resources
        self.host: MiniportHost | None = None
        self.ready = threading.Event()
        self.exit_code: int | None = None

    def run(self) -> None:
        """Make the host on this thread (its bus belongs to the thread), run it, record how
        it ended, and tell the device."""
        dev = self.device
        launch = dev.launch.for_subdevice(self.index) if dev.launch is not None else None
        cls = type(self.miniport)
        try:
            self.host = MiniportHost(
                dev.runtime_dir, dev.name, f"{cls.__module__}:{cls.__qualname__}",
                self.miniport, launch=launch, port_clsid=self.clsid,
                resources=self.resources.to_wire())
        except Exception:
            traceback.print_exc()
            self.exit_code = 1
            self.ready.set()
            dev.host_ended(self)
            return
        self.ready.set()
        try:
            self.exit_code = self.host.run()
        except StatusError as exc:
            print(f"device {dev.name}: subdevice host {self.index}: {exc}", file=sys.stderr)
            self.exit_code = 1
        except Exception:
            traceback.print_exc()
            self.exit_code = 1
        dev.host_ended(self)


class HostDevice(DeviceObject):
    """The device object `start_device` gets, and the process around its hosts."""

    def __init__(self, runtime_dir: Path, name: str, resources: ResourceList,
                 launch: LaunchCredentials | None) -> None:
        self.runtime_dir = runtime_dir
        self.name = name
        self.resources = resources
        self.launch = launch
        self.subdevices: list[SubdeviceHost] = []
        self._lock = threading.Lock()
        self._main_thread: queue.Queue[SubdeviceHost | None] = queue.Queue()
        self._ended = threading.Condition(self._lock)
        self._fault: int | None = None
        """The exit status the process ends with once something failed (first wins)."""
        self._adapter_done = False

    # The PortCls calls (DeviceObject).

    def _init_port(self, port: AdapterPort, miniport: Any, resources: ResourceList) -> None:
        with self._lock:
            if self._fault is not None:
                raise StatusError(Status.DEVICE_REMOVED, "the device is failing")
            index = len(self.subdevices)
            if index >= MAX_SUBDEVICES:
                raise StatusError(Status.INSUFFICIENT_RESOURCES,
                                  f"more than {MAX_SUBDEVICES} ports on one device")
            sub = SubdeviceHost(self, index, miniport, port.clsid, resources)
            self.subdevices.append(sub)
        if index == 0:
            self._main_thread.put(sub)
        else:
            threading.Thread(target=sub.run, name=f"{self.name} subdevice {index}",
                             daemon=True).start()
        sub.ready.wait()
        if sub.host is None:
            raise StatusError(Status.INSUFFICIENT_RESOURCES, "the miniport host did not start")
        sub.host.wait_init(INIT_TIMEOUT)
        port.binding = sub

    def _host_of(self, port: AdapterPort) -> MiniportHost:
        sub = port.binding
        if not isinstance(sub, SubdeviceHost) or sub.device is not self or sub.host is None:
            raise StatusError(Status.INVALID_PARAMETER, "not a port of this device")
        return sub.host

    def _register_subdevice(self, name: str, port: AdapterPort) -> str:
        result = self._host_of(port).call_kernel(p.RegisterSubdevice(name))
        fid = result.get("filter") if isinstance(result, dict) else None
        if not isinstance(fid, str):
            raise StatusError(Status.UNSUCCESSFUL, "the kernel named no filter")
        return fid

    def _register_physical_connection(
        self, via: AdapterPort, from_name: str, from_pin: int, to_name: str, to_pin: int,
        from_external: bool, to_external: bool,
    ) -> None:
        self._host_of(via).call_kernel(p.RegisterPhysicalConnection(
            from_name, from_pin, to_name, to_pin, from_external, to_external))

    # The process.

    def host_ended(self, sub: SubdeviceHost) -> None:
        """A host's loop ended: a failure ends every other host and the process."""
        with self._ended:
            if sub.exit_code and self._fault is None:
                self._fault = sub.exit_code
            failing = self._fault is not None
            self._ended.notify_all()
        if failing:
            self.stop_hosts()

    def stop_hosts(self) -> None:
        for sub in list(self.subdevices):
            if sub.host is not None:
                sub.host.stop()

    def _start(self, adapter: Adapter) -> None:
        """The adapter's thread: start_device, then DeviceStarted to the kernel."""
        status: StatusError | None = None
        try:
            adapter.start_device(self, self.resources)
            if not self.subdevices:
                status = StatusError(Status.DEVICE_CONFIGURATION_ERROR,
                                     "start_device bound no port")
        except StatusError as exc:
            status = exc
        except Exception:
            traceback.print_exc()
            self._fail(EXIT_MINIPORT_FAULT)
            return
        finally:
            self._main_thread.put(None)  # the main thread serves no host if none came
        with self._lock:
            faulted = self._fault is not None
        if faulted:
            return  # a host failed: that is the device's fault, not a failed start
        report = p.DeviceStarted(self.name, os.getpid(), self._secret(),
                                 status.status if status else Status.SUCCESS,
                                 (status.message if status else "")[:p.MAX_STR])
        if not report_to_kernel(self.runtime_dir, self.name, report, self.launch) and status:
            print(f"device {self.name}: start_device failed: {status}", file=sys.stderr)
        if status is not None:
            self._fail(p.EXIT_CONFIG_ERROR)
        with self._ended:
            self._adapter_done = True
            self._ended.notify_all()

    def _secret(self) -> bytes:
        return self.launch.secret if self.launch is not None else b""

    def _fail(self, code: int) -> None:
        with self._ended:
            if self._fault is None:
                self._fault = code
            self._adapter_done = True
            self._ended.notify_all()
        self.stop_hosts()

    def serve(self, adapter: Adapter) -> int:
        """Run `start_device` on its own thread and the first port's host on this one;
        wait for every host to end; the process's exit status."""
        threading.Thread(target=self._start, args=(adapter,), name=f"{self.name} adapter",
                         daemon=True).start()
        first = self._main_thread.get()
        if first is not None:
            first.run()
        with self._ended:
            # Every host ends (Unload, the kernel gone, or a failure that stopped them all).
            while not (self._fault is not None or (
                    self._adapter_done and all(s.exit_code is not None for s in self.subdevices))):
                self._ended.wait(1.0)
        for sub in self.subdevices:
            if sub.host is not None:
                sub.host.stop()
        with self._ended:
            self._ended.wait_for(
                lambda: all(s.exit_code is not None for s in self.subdevices), JOIN_SECONDS)
            return self._fault or 0


def _options(options_json: str) -> dict[str, Any]:
    options = json.loads(options_json)
    if not isinstance(options, dict):
        raise ValueError("options must be a JSON object")
    return options


def load_adapter(spec: str, options_json: str) -> Adapter:
    """The adapter `spec` names, constructed with the JSON `options`; StatusError
    (DEVICE_CONFIGURATION_ERROR) with the reason if it cannot be loaded or constructed."""
    try:
        options = _options(options_json)
        return registry.load_adapter(spec)(**options)
    except StatusError as exc:
        raise StatusError(Status.DEVICE_CONFIGURATION_ERROR, exc.message) from exc
    except Exception as exc:  # the adapter's constructor may raise anything
        raise StatusError(
            Status.DEVICE_CONFIGURATION_ERROR, f"{spec}: {type(exc).__name__}: {exc}"
        ) from exc


def report_to_kernel(
    runtime: Path, device: str, body: Any, launch: LaunchCredentials | None
) -> bool:
    """Send `body` (LoadFailed, DeviceStarted) under the launch's own identity, on a
    socket of its own; True once the kernel acknowledged it."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        identity = launch.identity if launch is not None else device.encode()
        rpc = RpcEndpoint(ctx, endpoint(runtime, BUS_SOCKET), identity)
        try:
            rpc.call(body, 3.0)
            return True
        except StatusError:
            return False
        finally:
            rpc.close()
    finally:
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniports.host")
    parser.add_argument("--runtime", required=True, type=Path)
    parser.add_argument("--device", required=True)
    driver = parser.add_mutually_exclusive_group(required=True)
    driver.add_argument("--miniport", help="the default adapter around this miniport")
    driver.add_argument("--adapter", help="an adapter name or module:Class")
    parser.add_argument("--options", default="{}", help="JSON object of constructor options")
    parser.add_argument("--resources", default="{}", help="JSON object: the device's resources")
    parser.add_argument("--launch-fd", type=int, default=None,
                        help="a pipe holding this launch's credentials (from the kernel)")
    args = parser.parse_args(argv)
    launch = None
    if args.launch_fd is not None:
        # Read before any miniport code runs, and closed: nothing else here sees them.
        try:
            launch = LaunchCredentials.receive(args.launch_fd)
        except (OSError, ValueError) as exc:
            print(f"miniport host {args.device}: {exc}", file=sys.stderr)
    # Stopped by the kernel, never by the terminal's Ctrl-C (it is in its own group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    extend_path()  # where module:Class miniports and adapters are found
    try:
        resources = ResourceList.from_wire(_options(args.resources))
        if args.adapter:
            adapter = load_adapter(args.adapter, args.options)
        else:
            adapter = DefaultAdapter(load_miniport(args.miniport, args.options))
    except (StatusError, ValueError) as exc:
        reason = exc.message if isinstance(exc, StatusError) else f"resources: {exc}"
        secret = launch.secret if launch is not None else b""
        failed = p.LoadFailed(args.device, os.getpid(), reason[:p.MAX_STR], secret)
        if not report_to_kernel(args.runtime, args.device, failed, launch):
            print(f"miniport host {args.device}: {reason}", file=sys.stderr)
        return p.EXIT_CONFIG_ERROR
    if trace.ON:
        trace.set_process_name(f"miniport {args.device}")
    code = HostDevice(args.runtime, args.device, resources, launch).serve(adapter)
    sys.stdout.flush()
    sys.stderr.flush()
    return code

