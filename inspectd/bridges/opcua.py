"""OPC UA: the same result, handshake and trigger as Modbus, as variables (asyncua).

Two ways to reach a line controller:

* `--serve URL` (`OpcUaServerBus`): the bridge runs its own OPC UA server with a browseable
  address space, and the PLC / SCADA is the client::

      Objects/Station                  Name, Heartbeat, BridgeStatus, Backlog
      Objects/Station/LastVerdict      NewResult (rw), Ack (rw), Seq, Epoch, Verdict,
                                       VerdictCode, PartId, Source, CaptureTime,
                                       PublishTime, Reason, FailedRules, FailedRuleCount
      Objects/Station/Parameters       one Double per parameter (porosity_pct, ...)
      Objects/Station/Trigger          Request (rw), PartId (rw), Status

  Node ids are strings in the namespace `urn:inspectd:plc-bridge`, e.g.
  `ns=2;s=Station.LastVerdict.Seq`.
* `--server URL` (`OpcUaClientBus`): the PLC runs the server and the bridge writes to the
  nodes named in a node map (`--nodes FILE`; the default names the layout above), with
  each value converted to the node's own data type (a server refuses a mismatched type).

The handshake is the Modbus one with variables: the bridge writes the result, then sets
NewResult = true; the PLC acknowledges by writing the Seq value into Ack (`echo_seq`,
default) or by writing NewResult = false (`clear_flag`). A trigger: the PLC writes
Trigger.PartId, then Trigger.Request = true; the bridge forwards it to the camera, writes
Trigger.Status (`TriggerStatus` codes) and sets Request = false.

asyncua is asynchronous; the handshake loop is not. Each bus owns an event loop in a
private thread (so a served address space keeps answering clients while the loop waits on
ZeroMQ) and calls into it with a timeout. No OPC UA security policy is configured
(`None` only): keep the endpoint on the cell network, as for Modbus TCP.

Example (the node map is plain data; connecting needs asyncua):
    >>> node_map = NodeMap()
    >>> node_map.nodes["seq"], sorted(node_map.parameters)[:2]
    ('Station.LastVerdict.Seq', ['melted_fraction_pct', 'pore_count'])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from inspectd.bridges.handshake import (
    AckMode,
    FieldbusError,
    HandshakeView,
    StatusBit,
    TriggerStatus,
    VerdictCode,
)
from inspectd.config import StrictModel, parse_yaml, read_text
from inspectd.errors import ConfigError
from inspectd.escaping import printable
from inspectd.metric_values import finite_or_none

logger = logging.getLogger(__name__)

NAMESPACE_URI = "urn:inspectd:plc-bridge"
DEFAULT_PARAMETERS = ("porosity_pct", "unmelted_fraction_pct", "melted_fraction_pct", "pore_count")

FieldName = Literal[
    "station", "heartbeat", "bridge_status", "backlog",
    "new_result", "ack", "seq", "epoch", "verdict", "verdict_code", "part_id", "source",
    "capture_time", "publish_time", "reason", "failed_rules", "failed_rule_count",
    "trigger_request", "trigger_part_id", "trigger_status",
]

# field -> (node identifier in the served address space, browse name, data type name, writable by clients)
SERVED_LAYOUT: dict[str, tuple[str, str, str, bool]] = {
    "station": ("Station.Name", "Name", "String", False),
    "heartbeat": ("Station.Heartbeat", "Heartbeat", "UInt32", False),
    "bridge_status": ("Station.BridgeStatus", "BridgeStatus", "UInt16", False),
    "backlog": ("Station.Backlog", "Backlog", "UInt32", False),
    "new_result": ("Station.LastVerdict.NewResult", "NewResult", "Boolean", True),
    "ack": ("Station.LastVerdict.Ack", "Ack", "UInt32", True),
    "seq": ("Station.LastVerdict.Seq", "Seq", "UInt32", False),
    "epoch": ("Station.LastVerdict.Epoch", "Epoch", "UInt32", False),
    "verdict": ("Station.LastVerdict.Verdict", "Verdict", "String", False),
    "verdict_code": ("Station.LastVerdict.VerdictCode", "VerdictCode", "UInt16", False),
    "part_id": ("Station.LastVerdict.PartId", "PartId", "String", False),
    "source": ("Station.LastVerdict.Source", "Source", "String", False),
    "capture_time": ("Station.LastVerdict.CaptureTime", "CaptureTime", "String", False),
    "publish_time": ("Station.LastVerdict.PublishTime", "PublishTime", "String", False),
    "reason": ("Station.LastVerdict.Reason", "Reason", "String", False),
    "failed_rules": ("Station.LastVerdict.FailedRules", "FailedRules", "String", False),
    "failed_rule_count": ("Station.LastVerdict.FailedRuleCount", "FailedRuleCount", "UInt16", False),
    "trigger_request": ("Station.Trigger.Request", "Request", "Boolean", True),
    "trigger_part_id": ("Station.Trigger.PartId", "PartId", "String", True),
    "trigger_status": ("Station.Trigger.Status", "Status", "UInt16", False),
}
_FOLDERS = {"Station": "Station", "LastVerdict": "Station.LastVerdict", "Parameters": "Station.Parameters",
            "Trigger": "Station.Trigger"}
_COUNTERS = {"heartbeat", "seq", "ack", "epoch"}  # wrap to the node's integer width, never clamp
_REQUIRED = ("new_result", "seq", "verdict_code")


def _default_nodes() -> dict[str, str | None]:
    return {field: identifier for field, (identifier, _, _, _) in SERVED_LAYOUT.items()}


def _default_parameter_nodes() -> dict[str, str]:
    return {name: f"Station.Parameters.{name}" for name in DEFAULT_PARAMETERS}


class NodeMap(StrictModel):
    """Which OPC UA node holds which value (for `--server`); `NodeMap()` is the served layout.

    A node id with `ns=` is used as is (`ns=3;s=DB10.Seq`, `ns=4;i=1012`); without it
    (`s=...`, `i=...`, or a bare string identifier) it is in `namespace_uri`, resolved to
    an index at connect. A file's `nodes` / `parameters` replace the defaults entirely, so
    a PLC's own server need only have the nodes it lists.
    """

    namespace_uri: str = Field(NAMESPACE_URI, description="namespace of node ids given without ns=")
    ack_mode: AckMode = Field(AckMode.ECHO_SEQ, description="echo_seq: PLC writes Seq into Ack; "
                              "clear_flag: PLC writes NewResult = false")
    nodes: dict[FieldName, str | None] = Field(default_factory=_default_nodes)
    parameters: dict[str, str] = Field(default_factory=_default_parameter_nodes,
                                       description="parameter name -> node id (a number node)")

    @model_validator(mode="after")
    def _verify(self) -> NodeMap:
        missing = [field for field in _REQUIRED if not self.nodes.get(field)]
        if self.ack_mode is AckMode.ECHO_SEQ and not self.nodes.get("ack"):
            missing.append("ack")
        if missing:
            msg = f"the node map needs nodes for: {', '.join(missing)}"
            raise ValueError(msg)
        trigger = [self.nodes.get(f) for f in ("trigger_request", "trigger_part_id", "trigger_status")]
        if any(trigger) and not all(trigger):
            msg = "trigger_request, trigger_part_id and trigger_status go together (all or none)"
            raise ValueError(msg)
        return self

    @property
    def has_trigger(self) -> bool:
        return bool(self.nodes.get("trigger_request"))


def load_node_map(path: str | Path | None) -> NodeMap:
    """Read a node map file (YAML or JSON); None gives the default (the served layout).

    Example:
        >>> load_node_map(None).namespace_uri
        'urn:inspectd:plc-bridge'
    """
    if path is None:
        return NodeMap()
    raw = parse_yaml(read_text(path, "node map"), origin=str(path), kind="YAML/JSON")
    try:
        return NodeMap.model_validate(raw or {})
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(str(p) for p in err['loc']) or '<top>'}: "
                 f"{str(err['msg']).removeprefix('Value error, ')}" for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from exc


def result_values(message: Mapping[str, Any], parameter_names: list[str]) -> dict[str, Any]:
    """The values a verdict message puts into the result variables (field -> python value).

    Part id, source and reason are shown through `escaping.printable`: an HMI displays them
    as text, and a name that is not UTF-8 could not be sent as an OPC UA String at all.

    Example:
        >>> values = result_values({"seq": 9, "verdict": "FAIL", "part_id": "A1", "failed_rules": [
        ...     {"metric": "porosity_pct", "op": "<=", "limit": 5.0, "value": 7.25}],
        ...     "parameters": {"porosity_pct": {"value": 7.25, "unit": "%"}}}, ["porosity_pct", "pore_count"])
        >>> values["verdict_code"], values["failed_rules"], values["param:porosity_pct"], values["param:pore_count"]
        (2, 'porosity_pct=7.25 (limit <= 5)', 7.25, None)
    """
    rules = message.get("failed_rules") or []
    parameters = message.get("parameters") or {}
    values: dict[str, Any] = {
        "station": message.get("station") or "",
        "seq": int(message["seq"]),
        "epoch": message.get("epoch") or 0,
        "verdict": str(message.get("verdict") or ""),
        "verdict_code": int(VerdictCode.of(message.get("verdict"))),
        "part_id": printable(message.get("part_id") or ""),
        "source": printable(message.get("source") or ""),
        "capture_time": message.get("capture_time") or "",
        "publish_time": message.get("publish_time") or "",
        "reason": printable(message.get("reason") or ""),
        "failed_rules": "; ".join(
            f"{r.get('metric')}={_number(r.get('value'))} (limit {r.get('op')} {_number(r.get('limit'))})"
            for r in rules if isinstance(r, Mapping)),
        "failed_rule_count": len(rules),
    }
    for name in parameter_names:
        entry = parameters.get(name)
        values[f"param:{name}"] = entry.get("value") if isinstance(entry, Mapping) else None
    return values


class _LoopThread:
    """An asyncio loop in a daemon thread; `call` runs a coroutine there with a timeout."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, make: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> Any:
        async def wrapped() -> Any:
            return await make()

        future = asyncio.run_coroutine_threadsafe(wrapped(), self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            msg = f"{what}: no answer within {timeout_s:g} s"
            raise FieldbusError(msg) from exc
        except FieldbusError:
            raise
        except Exception as exc:
            # Whatever the OPC UA stack raises mid-request (status codes, closed transport,
            # a session the server dropped), the connection is unusable: reconnect.
            msg = f"{what}: {type(exc).__name__}: {exc}"
            raise FieldbusError(msg) from exc

    def close(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_rest(), self._loop).result(5)
        except Exception:  # a task that refuses to die must not block shutdown
            logger.debug("cancelling OPC UA tasks failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


class _OpcUaBus:
    """The `Fieldbus` over OPC UA variables; subclasses open a client or serve a server."""

    def __init__(self, node_map: NodeMap, *, timeout_s: float) -> None:
        self.node_map = node_map
        self.timeout_s = float(timeout_s)
        self.ack_mode: AckMode = node_map.ack_mode
        self.has_trigger = node_map.has_trigger
        self.heartbeat_modulus = 1 << 32
        # Connecting reads every node's data type (client); serving builds the standard
        # address space first, seconds of CPU on a small box: allow for both.
        self.open_timeout_s = max(10.0, 5 * self.timeout_s)
        self._parameter_names = list(node_map.parameters)
        self._runner: _LoopThread | None = None
        self._nodes: dict[str, Any] = {}  # field (or "param:<name>") -> asyncua Node
        self._types: dict[str, Any] = {}  # field -> ua.VariantType
        self._moduli: dict[str, int | None] = {}

    # -- subclass hooks --------------------------------------------------------------------------

    async def _open(self) -> None:
        raise NotImplementedError

    async def _shut(self) -> None:
        raise NotImplementedError

    async def _read_nodes(self, nodes: list[Any]) -> list[Any]:
        return [await node.read_value() for node in nodes]

    async def _write_nodes(self, nodes: list[Any], datavalues: list[Any]) -> None:
        for node, datavalue in zip(nodes, datavalues, strict=True):
            await node.write_value(datavalue)

    # -- Fieldbus --------------------------------------------------------------------------------

    def connect(self) -> None:
        _asyncua()
        self._runner = _LoopThread(f"opcua-{self.description}")
        try:
            self._runner.call(self._open, self.open_timeout_s, f"opening {self.description}")
        except FieldbusError:
            self.close()
            raise
        self.heartbeat_modulus = self._moduli.get("heartbeat") or (1 << 32)

    def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            runner.call(self._shut, 5.0, f"closing {self.description}")
        except FieldbusError as exc:
            logger.debug("closing %s: %s", self.description, exc)
        runner.close()
        self._nodes.clear()

    def read_handshake(self) -> HandshakeView:
        fields = ["new_result", "seq"] + (["ack"] if "ack" in self._nodes else [])
        values = self._read(fields)
        return HandshakeView(
            new_result=bool(values["new_result"]),
            seq=None if values["seq"] is None else int(values["seq"]),
            ack=None if values.get("ack") is None else int(values["ack"]),
            seq_modulus=self._moduli.get("seq"),
            ack_modulus=self._moduli.get("ack"),
        )

    def present(self, message: Mapping[str, Any]) -> None:
        self._write(result_values(message, self._parameter_names))
        self._write({"new_result": True})  # last: the result is complete now

    def withdraw(self) -> None:
        self._write({"new_result": False})

    def read_heartbeat(self) -> int:
        if "heartbeat" not in self._nodes:
            return 0
        value = self._read(["heartbeat"])["heartbeat"]
        return int(value or 0)

    def write_heartbeat(self, count: int, status: StatusBit, backlog: int) -> None:
        self._write({"heartbeat": count, "bridge_status": int(status), "backlog": int(backlog)})

    def read_trigger(self) -> str | None:
        if not self.has_trigger:
            return None
        values = self._read(["trigger_request", "trigger_part_id"])
        if not values["trigger_request"]:
            return None
        return str(values["trigger_part_id"] or "").strip()

    def answer_trigger(self, status: TriggerStatus) -> None:
        self._write({"trigger_status": int(status)})
        self._write({"trigger_request": False})  # last: the PLC reads Status once Request drops

    # -- node I/O ----------------------------------------------------------------------------------

    def _read(self, fields: list[str]) -> dict[str, Any]:
        present = [f for f in fields if f in self._nodes]
        nodes = [self._nodes[f] for f in present]
        values = self._call(lambda: self._read_nodes(nodes), f"reading {', '.join(present)}")
        result = dict.fromkeys(fields)
        result.update(zip(present, values, strict=True))
        return result

    def _write(self, values: Mapping[str, Any]) -> None:
        from asyncua import ua

        fields = [f for f in values if f in self._nodes]
        datavalues = [ua.DataValue(ua.Variant(self._convert(f, values[f]), self._types[f])) for f in fields]
        nodes = [self._nodes[f] for f in fields]
        if nodes:
            self._call(lambda: self._write_nodes(nodes, datavalues), f"writing {', '.join(fields)}")

    def _call(self, make: Callable[[], Awaitable[Any]], what: str) -> Any:
        if self._runner is None:
            msg = f"not connected to {self.description}"
            raise FieldbusError(msg)
        return self._runner.call(make, self.timeout_s, what)

    def _convert(self, field: str, value: Any) -> Any:
        """A python value in the node's data type (clamped; counters wrap).

        Numbers are read by `finite_or_none`, as the verdict message and the Modbus map read
        them: a bool given for a Float, Double or integer node is no value (NaN, or the type's
        sentinel), not 1.0. The variables and their data types are unchanged.
        """
        vtype = self._types[field]
        name = vtype.name
        if name == "Boolean":
            return bool(value)
        if name == "String":
            return "" if value is None else str(value)
        if name in ("Float", "Double"):
            number = finite_or_none(value)
            return math.nan if number is None else number
        if name == "DateTime":
            return _datetime(value)
        if name in _INT_LIMITS:
            low, high = _INT_LIMITS[name]
            number = finite_or_none(value)
            if number is None:  # no value: the type's sentinel, as in the Modbus map
                return low if low < 0 else high
            integer = round(number)
            if field in _COUNTERS:
                return integer % (high + 1) if low == 0 else ((integer - low) % (high - low + 1)) + low
            return min(max(integer, low), high)
        msg = f"node for {field} has data type {name}, which the bridge cannot write"
        raise FieldbusError(msg)

    async def _resolve(self, get_node: Callable[[str], Any], namespace_index: int) -> None:
        """Look up every mapped node, its data type and (for counters) its integer width."""
        wanted = {f: node_id for f, node_id in self.node_map.nodes.items() if node_id}
        wanted.update({f"param:{name}": node_id for name, node_id in self.node_map.parameters.items()})
        for field, node_id in wanted.items():
            text = node_id if node_id.startswith("ns=") else f"ns={namespace_index};{_qualify(node_id)}"
            node = get_node(text)
            try:
                vtype = await node.read_data_type_as_variant_type()
            except Exception as exc:
                msg = f"node {text} (for {field}) cannot be used: {type(exc).__name__}: {exc}"
                raise FieldbusError(msg) from exc
            if vtype.name not in (*_INT_LIMITS, "Boolean", "String", "Float", "Double", "DateTime"):
                msg = f"node {text} (for {field}) has data type {vtype.name}; use a number, Boolean or String"
                raise FieldbusError(msg)
            self._nodes[field] = node
            self._types[field] = vtype
            limits = _INT_LIMITS.get(vtype.name)
            self._moduli[field] = None if limits is None else limits[1] - limits[0] + 1


class OpcUaClientBus(_OpcUaBus):
    """Writes to (and polls) the nodes of the PLC's own OPC UA server at `url`.

    Example:
        >>> bus = OpcUaClientBus("opc.tcp://127.0.0.1:4840", NodeMap())
        >>> bus.description, bus.has_trigger
        ('opc.tcp://127.0.0.1:4840', True)
    """

    def __init__(self, url: str, node_map: NodeMap | None = None, *, timeout_s: float = 2.0) -> None:
        super().__init__(node_map or NodeMap(), timeout_s=timeout_s)
        self.url = url
        self.description = url
        self._client: Any = None

    async def _open(self) -> None:
        from asyncua import Client

        client = Client(self.url, timeout=self.timeout_s)
        client.name = client.description = "inspectd PLC bridge"
        await client.connect()
        self._client = client
        try:
            index = await client.get_namespace_index(self.node_map.namespace_uri)
        except ValueError:
            index = -1
        if index < 0 and any(not n.startswith("ns=") for n in self._all_node_ids()):
            msg = f"server {self.url} has no namespace {self.node_map.namespace_uri!r} (node map namespace_uri)"
            raise FieldbusError(msg)
        await self._resolve(client.get_node, index)

    async def _shut(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.disconnect()
            except Exception:  # the server may be gone already: nothing to tell it
                logger.debug("disconnect from %s failed", self.url, exc_info=True)

    async def _read_nodes(self, nodes: list[Any]) -> list[Any]:
        return await self._client.read_values(nodes)

    async def _write_nodes(self, nodes: list[Any], datavalues: list[Any]) -> None:
        await self._client.write_values(nodes, datavalues)

    def _all_node_ids(self) -> list[str]:
        return [n for n in self.node_map.nodes.values() if n] + list(self.node_map.parameters.values())


class OpcUaServerBus(_OpcUaBus):
    """Serves the address space at `url` (e.g. `opc.tcp://0.0.0.0:4840/inspectd/`).

    Only `ack_mode` and the parameter names of `node_map` are used: the node ids are the
    fixed served layout (module docstring).

    Example:
        >>> OpcUaServerBus("opc.tcp://127.0.0.1:4840/inspectd/").description
        'serving opc.tcp://127.0.0.1:4840/inspectd/'
    """

    def __init__(self, url: str, node_map: NodeMap | None = None, *, timeout_s: float = 2.0,
                 server_name: str = "inspectd PLC bridge") -> None:
        chosen = node_map or NodeMap()
        served = NodeMap(ack_mode=chosen.ack_mode,
                         parameters={name: f"Station.Parameters.{name}" for name in chosen.parameters})
        super().__init__(served, timeout_s=timeout_s)
        self.open_timeout_s = 60.0
        self.url = url
        self.server_name = server_name
        self.description = f"serving {url}"
        self._server: Any = None

    async def _open(self) -> None:
        from asyncua import Server, ua

        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name(self.server_name)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        index = await server.register_namespace(NAMESPACE_URI)
        folders: dict[str, Any] = {}
        parent = server.nodes.objects
        for name, identifier in _FOLDERS.items():
            owner = folders.get("Station", parent)
            folders[name] = await owner.add_object(ua.NodeId(identifier, index), ua.QualifiedName(name, index))
        for identifier, browse_name, type_name, writable in SERVED_LAYOUT.values():
            folder = folders[identifier.split(".")[1]] if identifier.count(".") == 2 else folders["Station"]
            await self._add_variable(folder, index, identifier, browse_name, type_name, writable)
        for name in self._parameter_names:
            await self._add_variable(folders["Parameters"], index, f"Station.Parameters.{name}", name, "Double", False)
        await server.start()
        self._server = server
        await self._resolve(server.get_node, index)
        logger.info("OPC UA address space served at %s (namespace %s = ns=%d)", self.url, NAMESPACE_URI, index)

    async def _add_variable(self, folder: Any, index: int, identifier: str, browse_name: str,
                            type_name: str, writable: bool) -> None:
        from asyncua import ua

        vtype = getattr(ua.VariantType, type_name)
        initial = {"Boolean": False, "String": "", "Double": math.nan}.get(type_name, 0)
        node = await folder.add_variable(ua.NodeId(identifier, index), ua.QualifiedName(browse_name, index),
                                         ua.Variant(initial, vtype))
        if writable:
            await node.set_writable()

    async def _shut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop()


_INT_LIMITS = {
    "Byte": (0, 2**8 - 1), "SByte": (-(2**7), 2**7 - 1),
    "UInt16": (0, 2**16 - 1), "Int16": (-(2**15), 2**15 - 1),
    "UInt32": (0, 2**32 - 1), "Int32": (-(2**31), 2**31 - 1),
    "UInt64": (0, 2**64 - 1), "Int64": (-(2**63), 2**63 - 1),
}


def _asyncua() -> None:
    try:
        import asyncua  # noqa: F401
    except ImportError as exc:
        msg = "the OPC UA bridge needs asyncua: pip install 'inspectd[plc]' (or asyncua)"
        raise ConfigError(msg) from exc


def _qualify(node_id: str) -> str:
    """`s=X` / `i=5` / `g=...` / `b=...` stay; a bare identifier becomes a string id."""
    return node_id if node_id[:2] in ("s=", "i=", "g=", "b=") else f"s={node_id}"


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime(1601, 1, 1, tzinfo=timezone.utc)  # OPC UA's "no time" (DateTime 0)


def _number(value: Any) -> str:
    return "null" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)
