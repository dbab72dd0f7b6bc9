"""Real protocol servers on 127.0.0.1 for the PLC bridge tests, and a test "PLC program".

`ModbusPlcServer` is a pymodbus TCP server in its own thread (the PLC's register memory);
`PlcProgram` is what a line controller runs against it: it reads the result block with its
own client, decodes it independently of the bridge's encoder, and acknowledges. The daemon
side is `MiniDaemon` (journal + PUB + control, wired like `inspectd run`).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from inspectd.bridges.cursor import Cursor
from inspectd.bridges.handshake import Bridge
from inspectd.bridges.modbus import ModbusBus
from inspectd.bridges.registermap import RegisterMap
from tests.daemon.conftest import MiniDaemon, free_tcp_endpoint
from tests.daemon.conftest import wait_for as daemon_wait_for

# pymodbus is the optional [plc] extra: imported by the helpers that need it, so the tests
# without a fieldbus (cursor, register map, handshake decisions) run where it is absent.

PLC_REGISTERS = 200


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0, interval_s: float = 0.02) -> bool:
    """The daemon tests' poller with the bridges' longer default (a PLC round trip is slower)."""
    return daemon_wait_for(predicate, timeout_s, interval_s)


class ModbusPlcServer:
    """A Modbus TCP server on 127.0.0.1:`port` holding `PLC_REGISTERS` holding registers."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None

    def start(self, initial: list[int] | None = None) -> ModbusPlcServer:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        values = list(initial) if initial else [0] * PLC_REGISTERS
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        async def serve() -> None:
            device = SimDevice(id=0, simdata=[SimData(address=0, count=1, values=values,
                                                      datatype=DataType.REGISTERS)])
            self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
            await self._server.serve_forever(background=True)
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve())
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"modbus-plc-{self.port}", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the Modbus test server did not start"
        return self

    def snapshot(self) -> list[int]:
        """All registers, read through a client (what the PLC would retain over a restart)."""
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=2, retries=1)
        try:
            client.connect()
            return (client.read_holding_registers(0, count=100, device_id=1).registers
                    + client.read_holding_registers(100, count=100, device_id=1).registers)
        finally:
            client.close()

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def restart(self, *, retain: bool) -> None:
        """Stop and start on the same port; `retain` keeps the registers (retentive memory)."""
        kept = self.snapshot() if retain else None
        self.stop()
        self.start(kept)


def decode_result(regs: list[int]) -> dict[str, Any]:
    """The default map's result block, decoded the way a PLC programmer would (not via inspectd)."""
    part_raw = struct.pack(">16H", *regs[10:26])
    return {
        "seq": regs[5] | (regs[6] << 16),
        "verdict_code": regs[7],
        "failed_rule_count": regs[8],
        "part_id": part_raw.split(b"\0", 1)[0].decode("ascii"),
        "porosity_pct": struct.unpack(">f", struct.pack(">2H", regs[30], regs[31]))[0],
        "porosity_x100": struct.unpack(">h", struct.pack(">H", regs[40]))[0],
        "pore_count": regs[36],
    }


class PlcProgram:
    """The test PLC: takes each shown result, checks it stays put until acked, acknowledges.

    `ack_mode` "echo_seq" writes SEQ_LO into ACK (register 4); "clear_flag" writes 0 into
    NEW_RESULT (register 3). `ack_delay_s` makes it slow; `paused` stops it acknowledging.
    Connection errors (server restarting) are retried, like a PLC's own comms would.
    """

    def __init__(self, port: int, *, ack_mode: str = "echo_seq", ack_delay_s: float = 0.0) -> None:
        self.port = port
        self.ack_mode = ack_mode
        self.ack_delay_s = ack_delay_s
        self.results: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.heartbeats: list[int] = []
        self.max_backlog = 0
        self.statuses: set[int] = set()  # BRIDGE_STATUS words seen
        self.status_now = 0  # the BRIDGE_STATUS word at the last scan
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plc-program", daemon=True)

    def __enter__(self) -> PlcProgram:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def seqs(self) -> list[int]:
        return [r["seq"] for r in self.results]

    def _run(self) -> None:
        from pymodbus.client import ModbusTcpClient
        from pymodbus.exceptions import ModbusException

        client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=1, retries=0)
        try:
            while not self._stop.is_set():
                try:
                    self._scan(client)
                except (ModbusException, OSError, AttributeError):
                    client.close()
                    self._stop.wait(0.05)
                self._stop.wait(0.01)
        finally:
            client.close()

    def _scan(self, client: Any) -> None:
        regs = client.read_holding_registers(0, count=45, device_id=1).registers
        if not self.heartbeats or self.heartbeats[-1] != regs[0]:
            self.heartbeats.append(regs[0])
        self.max_backlog = max(self.max_backlog, regs[2])
        self.statuses.add(regs[1])
        self.status_now = regs[1]
        new = regs[3] == 1 and (self.ack_mode == "clear_flag" or regs[4] != regs[5])
        if not new or self.paused.is_set():
            return
        if self.ack_delay_s:
            self._stop.wait(self.ack_delay_s)
            again = client.read_holding_registers(0, count=45, device_id=1).registers
            if again[3:45] != regs[3:45]:  # the bridge must not touch a shown result before its ack
                self.violations.append(f"result changed before its ack: {regs[3:12]} -> {again[3:12]}")
                return
        if self.paused.is_set():
            return
        self.results.append(decode_result(regs))
        if self.ack_mode == "echo_seq":
            client.write_register(4, regs[5], device_id=1)
        else:
            client.write_register(3, 0, device_id=1)


class BridgeHarness:
    """Builds bridges to the test PLC with short intervals; stops them all at teardown."""

    def __init__(self, tmp_path: Path, context: zmq.Context) -> None:
        self.tmp_path = tmp_path
        self.context = context
        self.bridges: list[Bridge] = []

    def modbus(self, daemon: MiniDaemon, port: int, *, state: str = "cursor.json",
               register_map: RegisterMap | None = None, start: bool = True, **kwargs: Any) -> Bridge:
        bus = ModbusBus("127.0.0.1", port, unit=1, register_map=register_map or RegisterMap(), timeout_s=0.5)
        options: dict[str, Any] = {"heartbeat_interval_s": 0.1, "poll_interval_s": 0.02,
                                   "reconnect_initial_s": 0.05, "reconnect_max_s": 0.2, "context": self.context}
        options.update(kwargs)
        bridge = Bridge(bus, daemon.publish_endpoint, daemon.control_endpoint, Cursor(self.tmp_path / state),
                        **options)
        self.bridges.append(bridge)
        if start:
            bridge.start()
        return bridge

    def close(self) -> None:
        for bridge in self.bridges:
            bridge.stop()


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def daemon(tmp_path: Path, zmq_context: zmq.Context) -> Iterator[MiniDaemon]:
    """A MiniDaemon on fixed ports, so a test can restart it on the same endpoints."""
    state = tmp_path / "daemon"
    state.mkdir()
    mini = MiniDaemon(state, zmq_context, publish_endpoint=free_tcp_endpoint(),
                      control_endpoint=free_tcp_endpoint())
    yield mini
    mini.close()


@pytest.fixture
def plc_server() -> Iterator[ModbusPlcServer]:
    pytest.importorskip("pymodbus", reason="the Modbus bridge tests need pymodbus (the [plc] extra)")
    server = ModbusPlcServer().start()
    yield server
    server.stop()


@pytest.fixture
def bridges(tmp_path: Path, zmq_context: zmq.Context) -> Iterator[BridgeHarness]:
    harness = BridgeHarness(tmp_path, zmq_context)
    yield harness
    harness.close()
