"""The OPC UA bridge against real asyncua servers on 127.0.0.1: served and client mode."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

pytest.importorskip("asyncua", reason="the OPC UA bridge tests need asyncua (the [plc] extra)")

from asyncua import Client, Server, ua

from inspectd.bridges.cursor import Cursor
from inspectd.bridges.handshake import Bridge
from inspectd.bridges.opcua import NAMESPACE_URI, OpcUaClientBus, OpcUaServerBus, load_node_map
from inspectd.sources.trigger import TriggerServer
from tests.bridges.conftest import free_port, wait_for

SERVED = {  # the served layout, as a PLC programmer would look it up
    "new_result": "Station.LastVerdict.NewResult", "ack": "Station.LastVerdict.Ack",
    "seq": "Station.LastVerdict.Seq", "part_id": "Station.LastVerdict.PartId",
    "verdict_code": "Station.LastVerdict.VerdictCode", "porosity": "Station.Parameters.porosity_pct",
    "heartbeat": "Station.Heartbeat",
}


class LoopThread:
    """An asyncio loop in a thread, for the test's own servers and PLC client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout_s: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class UaPlcProgram:
    """A PLC as an OPC UA client: takes each shown result, acknowledges by writing Seq into Ack."""

    def __init__(self, url: str, namespace_uri: str, node_ids: dict[str, str]) -> None:
        self.url, self.namespace_uri, self.node_ids = url, namespace_uri, node_ids
        self.results: list[dict[str, Any]] = []
        self.heartbeats: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> UaPlcProgram:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def seqs(self) -> list[int]:
        return [r["seq"] for r in self.results]

    async def _main(self) -> None:
        while not self._stop.is_set():
            try:
                async with Client(self.url, timeout=1) as client:
                    await self._scan_forever(client)
            except Exception:  # server restarting: reconnect, as a PLC's comms would
                await asyncio.sleep(0.1)

    async def _scan_forever(self, client: Client) -> None:
        index = await client.get_namespace_index(self.namespace_uri)
        nodes = {name: client.get_node(f"ns={index};s={ident}") for name, ident in self.node_ids.items()}
        ack_type = await nodes["ack"].read_data_type_as_variant_type()
        names = list(nodes)
        while not self._stop.is_set():
            values = dict(zip(names, await client.read_values([nodes[n] for n in names]), strict=True))
            if not self.heartbeats or self.heartbeats[-1] != values["heartbeat"]:
                self.heartbeats.append(values["heartbeat"])
            if values["new_result"] and values["ack"] != values["seq"]:
                self.results.append(values)
                await nodes["ack"].write_value(ua.DataValue(ua.Variant(values["seq"], ack_type)))
            await asyncio.sleep(0.01)


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    runner = LoopThread()
    yield runner
    runner.close()


def make_bridge(bus: Any, daemon: Any, tmp_path: Path, context: zmq.Context, **kwargs: Any) -> Bridge:
    return Bridge(bus, daemon.publish_endpoint, daemon.control_endpoint, Cursor(tmp_path / "opcua.cursor.json"),
                  heartbeat_interval_s=0.1, poll_interval_s=0.02, reconnect_initial_s=0.1,
                  reconnect_max_s=0.3, context=context, **kwargs)


def test_served_address_space_is_browseable_and_delivers_in_order(daemon, tmp_path, zmq_context, loop_thread):
    url = f"opc.tcp://127.0.0.1:{free_port()}/inspectd/"
    camera = TriggerServer("tcp://127.0.0.1:*", source_id="cam0")
    camera.start()
    bridge = make_bridge(OpcUaServerBus(url), daemon, tmp_path, zmq_context, from_seq=1,
                         trigger_endpoint=camera.bound_endpoint)
    bridge.start()
    try:
        assert wait_for(lambda: bridge.stats()["plc_connected"], timeout_s=30), bridge.stats()

        async def browse() -> tuple[set[str], set[str], set[str]]:
            async with Client(url, timeout=2) as client:
                index = await client.get_namespace_index(NAMESPACE_URI)
                station = await client.nodes.objects.get_child([f"{index}:Station"])
                names = {(await n.read_browse_name()).Name for n in await station.get_children()}
                last = await station.get_child([f"{index}:LastVerdict"])
                last_names = {(await n.read_browse_name()).Name for n in await last.get_children()}
                params = await station.get_child([f"{index}:Parameters"])
                param_names = {(await n.read_browse_name()).Name for n in await params.get_children()}
                return names, last_names, param_names

        names, last_names, param_names = loop_thread.run(browse())
        assert {"LastVerdict", "Parameters", "Heartbeat", "Trigger", "Name"} <= names
        assert {"NewResult", "Ack", "Seq", "Verdict", "VerdictCode", "PartId"} <= last_names
        assert {"porosity_pct", "unmelted_fraction_pct", "melted_fraction_pct"} <= param_names

        with UaPlcProgram(url, NAMESPACE_URI, SERVED) as plc:
            sent = daemon.emit(8)
            assert wait_for(lambda: len(plc.results) >= 8), bridge.stats()
            assert wait_for(lambda: len(plc.heartbeats) >= 3)
        assert plc.seqs() == [m["seq"] for m in sent]
        for message, shown in zip(sent, plc.results, strict=True):
            assert shown["part_id"] == message["part_id"]
            assert shown["verdict_code"] == {"PASS": 1, "FAIL": 2}[message["verdict"]]
            assert shown["porosity"] == pytest.approx(message["parameters"]["porosity_pct"]["value"])

        async def trigger(part_id: str) -> int:
            async with Client(url, timeout=2) as client:
                index = await client.get_namespace_index(NAMESPACE_URI)
                request = client.get_node(f"ns={index};s=Station.Trigger.Request")
                await client.get_node(f"ns={index};s=Station.Trigger.PartId").write_value(
                    ua.DataValue(ua.Variant(part_id, ua.VariantType.String)))
                await request.write_value(ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)))
                deadline = time.monotonic() + 10
                while await request.read_value() and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                return await client.get_node(f"ns={index};s=Station.Trigger.Status").read_value()

        assert loop_thread.run(trigger("OPC-7")) == 1
        received = camera.next(timeout_s=5.0)
        assert received is not None and received.part_id == "OPC-7"
    finally:
        bridge.stop()
        camera.stop()


PLC_NODES = {  # the PLC's own layout: other names, other types than ours
    "new_result": ("DB10.NewResult", ua.VariantType.Int16),
    "ack": ("DB10.Ack", ua.VariantType.UInt16),
    "seq": ("DB10.Seq", ua.VariantType.UInt16),
    "verdict_code": ("DB10.Code", ua.VariantType.Int32),
    "part_id": ("DB10.Part", ua.VariantType.String),
    "porosity": ("DB10.Porosity", ua.VariantType.Float),
    "heartbeat": ("DB10.Life", ua.VariantType.UInt16),
}


class UaPlcServer:
    """The PLC's own OPC UA server with the nodes of `PLC_NODES`.

    `stop()` / `start()` again keep the address space and its values (a PLC restarting its
    OPC UA server; building a new address space costs seconds of CPU).
    """

    namespace_uri = "urn:test:plc"

    def __init__(self, runner: LoopThread) -> None:
        self.runner = runner
        self.url = f"opc.tcp://127.0.0.1:{free_port()}/plc/"
        self.server: Server | None = None

    def start(self) -> UaPlcServer:
        if self.server is not None:
            self.runner.run(self.server.start())
            return self

        async def start() -> Server:
            server = Server()
            await server.init()
            server.set_endpoint(self.url)
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            index = await server.register_namespace(self.namespace_uri)
            db = await server.nodes.objects.add_object(ua.NodeId("DB10", index), ua.QualifiedName("DB10", index))
            for ident, vtype in PLC_NODES.values():
                initial = "" if vtype is ua.VariantType.String else 0.0 if vtype is ua.VariantType.Float else 0
                node = await db.add_variable(ua.NodeId(ident, index), ua.QualifiedName(ident, index),
                                             ua.Variant(initial, vtype))
                await node.set_writable()
            await server.start()
            return server

        self.server = self.runner.run(start())
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.runner.run(self.server.stop())


def test_client_mode_writes_configured_nodes_and_survives_a_server_restart(daemon, tmp_path, zmq_context, loop_thread):
    plc_server = UaPlcServer(loop_thread).start()
    node_file = tmp_path / "nodes.yaml"
    node_file.write_text(
        f"namespace_uri: {UaPlcServer.namespace_uri}\n"
        "nodes:\n" + "".join(f"  {field}: s={ident}\n" for field, (ident, _) in PLC_NODES.items()
                             if field != "porosity")
        + "parameters:\n  porosity_pct: s=DB10.Porosity\n")
    bus = OpcUaClientBus(plc_server.url, load_node_map(node_file), timeout_s=1.0)
    bridge = make_bridge(bus, daemon, tmp_path, zmq_context, from_seq=1)
    bridge.start()
    plc_ids = {field: ident for field, (ident, _) in PLC_NODES.items()}
    try:
        with UaPlcProgram(plc_server.url, UaPlcServer.namespace_uri, plc_ids) as plc:
            first = daemon.emit(4)
            assert wait_for(lambda: len(plc.results) >= 4), bridge.stats()
            assert wait_for(lambda: bridge.stats()["last_delivered_seq"] == 4 and not bridge.stats()["queued"])
            plc_server.stop()
            second = daemon.emit(3)
            assert wait_for(lambda: not bridge.stats()["plc_connected"]), bridge.stats()
            plc_server.start()
            assert wait_for(lambda: len(plc.results) >= 7, timeout_s=30), bridge.stats()
        assert plc.seqs() == [m["seq"] for m in first + second]
        assert all(r["verdict_code"] in (1, 2) for r in plc.results)
        assert plc.results[0]["porosity"] == pytest.approx(first[0]["parameters"]["porosity_pct"]["value"])
        assert bridge.stats()["connects"] >= 2
    finally:
        bridge.stop()
        plc_server.stop()
