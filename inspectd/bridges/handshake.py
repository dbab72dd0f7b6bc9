"""The PLC handshake, independent of the fieldbus: queue verdicts, show one, wait for the ack.

A PLC scans its inputs every few milliseconds and acts on a "new result" flag; if a second
result overwrote the first before the scan saw it, a part would pass the line with nobody
having looked at its verdict. So the bridge shows exactly one result at a time:

1. write the result fields (seq, verdict code, part id, parameters) while the flag is 0;
2. set NEW_RESULT = 1;
3. the PLC reads the result and acknowledges it, depending on `ack_mode`:
   `echo_seq` (default): it copies the result's seq into ACK;
   `clear_flag`: it writes NEW_RESULT = 0;
4. the bridge sees the ack, persists the seq in its cursor (durable), lowers the flag
   (`echo_seq`), and only then writes the next result. Verdicts arriving meanwhile queue
   in the bridge (and beyond `max_queue` they wait in the daemon's journal: the bridge
   stops reading and replays them later), so none is lost and none is overwritten unread.

What the PLC holds is re-read after every (re)connect and at start, so a PLC restart
(registers back to 0: the result is written again), a dropped connection (the result is
still there: keep waiting) and a bridge crash after the PLC acknowledged (`echo_seq`: the
ack is there, the result is not shown twice) all come out right. With `clear_flag`, a
bridge crash between the PLC's ack and the cursor write shows that result once more (same
seq): a PLC that must never see a seq twice should use `echo_seq`.

The other direction: when the PLC raises the trigger flag (part in position) with a part
id, the bridge sends `{"part_id": ...}` to the daemon's camera trigger endpoint (REQ/REP),
writes the outcome (`TriggerStatus`) and lowers the flag.

`Bridge` runs this loop against any `Fieldbus` (Modbus TCP in `inspectd.bridges.modbus`,
OPC UA in `inspectd.bridges.opcua`), reconnecting with backoff when the PLC goes away.

Example (the decision the loop takes, as a pure function):
    >>> view = HandshakeView(new_result=True, seq=70001 % 65536, ack=70001 % 65536,
    ...                      seq_modulus=65536, ack_modulus=65536)
    >>> classify(view, 70001, AckMode.ECHO_SEQ, presented=True)
    <Delivery.ACKED: 'acked'>
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from inspectd.clients.backoff import Backoff
from inspectd.clients.control import ControlError, ControlTimeoutError, request
from inspectd.clients.subscribe import VerdictSubscriber
from inspectd.errors import InspectdError

if TYPE_CHECKING:
    from inspectd.bridges.cursor import Cursor
    from inspectd.wire.curve import CurveClientKeys

logger = logging.getLogger(__name__)


class FieldbusError(InspectdError):
    """The PLC connection failed or the PLC refused a read/write; the bridge reconnects."""


class AckMode(str, enum.Enum):
    """How the PLC acknowledges a result (see the module docstring)."""

    ECHO_SEQ = "echo_seq"
    CLEAR_FLAG = "clear_flag"


class VerdictCode(enum.IntEnum):
    """The verdict as a number for the PLC; anything unknown reads as ERROR, never as PASS.

    Example:
        >>> VerdictCode.of("FAIL"), VerdictCode.of("SOMETHING_NEW")
        (<VerdictCode.FAIL: 2>, <VerdictCode.ERROR: 3>)
    """

    NONE = 0
    PASS = 1
    FAIL = 2
    ERROR = 3
    NO_INSPECTION = 4

    @classmethod
    def of(cls, verdict: Any) -> VerdictCode:
        try:
            code = cls[str(verdict)]
        except KeyError:
            logger.warning("verdict %r has no code: shown to the PLC as ERROR", verdict)
            return cls.ERROR
        return cls.ERROR if code is cls.NONE else code


class TriggerStatus(enum.IntEnum):
    """What became of a PLC trigger, written back before the trigger flag is lowered."""

    IDLE = 0  # no trigger handled yet
    ACCEPTED = 1  # the camera took it: a verdict (or NO_INSPECTION) with this part id follows
    REFUSED = 2  # the camera answered ok=false (busy, source stopped): try again or divert
    NO_ANSWER = 3  # the trigger endpoint did not answer in time (daemon down, wrong endpoint)
    BAD_REQUEST = 4  # the PLC raised the flag with an empty part id


class StatusBit(enum.IntFlag):
    """Bits of the bridge status word written with each heartbeat."""

    DAEMON_ALIVE = 1  # a daemon heartbeat arrived within `daemon_timeout_s`
    REPLAY_FAILING = 2  # the daemon's control endpoint did not answer the last replay
    QUEUE_FULL = 4  # `max_queue` results wait: newer ones stay in the journal for now
    DAEMON_ERROR = 8  # the daemon reported a problem on error.<station> within `daemon_error_hold_s`


class Delivery(str, enum.Enum):
    """Where a result stands on the PLC."""

    ABSENT = "absent"  # the PLC does not hold it: write it
    PENDING = "pending"  # shown (flag up), not acknowledged yet: wait
    ACKED = "acked"  # the PLC acknowledged it: persist and go on


@dataclass(frozen=True)
class HandshakeView:
    """What the PLC holds now: the flag, the shown result's seq and the ack.

    `seq` and `ack` are as stored, i.e. modulo `seq_modulus` / `ack_modulus` when the
    fieldbus keeps only the low bits (a 16-bit register); None modulus = full width.
    """

    new_result: bool
    seq: int | None
    ack: int | None
    seq_modulus: int | None = None
    ack_modulus: int | None = None


def classify(view: HandshakeView, seq: int, ack_mode: AckMode, *, presented: bool) -> Delivery:
    """Decide whether the result `seq` is absent, pending or acknowledged on the PLC.

    `presented` says whether this bridge process showed `seq` itself; without it a
    `clear_flag` PLC holding `seq` with the flag down is ambiguous (written but never
    flagged, or flagged and acknowledged), and the result is shown again.

    Example:
        >>> view = HandshakeView(new_result=False, seq=5, ack=4)
        >>> classify(view, 5, AckMode.ECHO_SEQ, presented=False)  # written, never flagged
        <Delivery.ABSENT: 'absent'>
        >>> classify(HandshakeView(False, 5, None), 5, AckMode.CLEAR_FLAG, presented=True)
        <Delivery.ACKED: 'acked'>
    """
    if view.seq is None or not _same(view.seq, seq, view.seq_modulus):
        return Delivery.ABSENT
    if ack_mode is AckMode.ECHO_SEQ:
        if view.ack is not None and _same(view.ack, seq, view.ack_modulus):
            return Delivery.ACKED
        return Delivery.PENDING if view.new_result else Delivery.ABSENT
    if view.new_result:
        return Delivery.PENDING
    return Delivery.ACKED if presented else Delivery.ABSENT


def _same(stored: int, seq: int, modulus: int | None) -> bool:
    return stored == (seq % modulus if modulus else seq)


class Fieldbus(Protocol):
    """One PLC connection as the handshake loop uses it (Modbus TCP, OPC UA).

    Every method but `close` raises `FieldbusError` when the PLC is unreachable or refuses.
    """

    description: str
    ack_mode: AckMode
    heartbeat_modulus: int
    has_trigger: bool

    def connect(self) -> None:
        """Open the connection (and check the map fits the device)."""

    def close(self) -> None:
        """Drop the connection; never raises."""

    def read_handshake(self) -> HandshakeView:
        """Read NEW_RESULT, the shown seq and ACK."""

    def present(self, message: Mapping[str, Any]) -> None:
        """Write the result fields of `message`, then raise NEW_RESULT (flag is down on entry)."""

    def withdraw(self) -> None:
        """Lower NEW_RESULT."""

    def read_heartbeat(self) -> int:
        """The heartbeat counter as the PLC holds it (to continue counting from there)."""

    def write_heartbeat(self, count: int, status: StatusBit, backlog: int) -> None:
        """Write the heartbeat counter, the status word and the backlog."""

    def read_trigger(self) -> str | None:
        """The part id when the PLC raised its trigger flag, else None."""

    def answer_trigger(self, status: TriggerStatus) -> None:
        """Write the trigger status, then lower the trigger flag."""


def forward_trigger(endpoint: str, part_id: str, *, timeout_ms: int = 1000,
                    context: zmq.Context | None = None) -> TriggerStatus:
    """Send one trigger to the camera's trigger endpoint (`{"part_id": ...}` over REQ/REP).

    Example:
        >>> forward_trigger("tcp://127.0.0.1:9", "A-17", timeout_ms=50)
        <TriggerStatus.NO_ANSWER: 3>
        >>> forward_trigger("tcp://127.0.0.1:9", "  ")
        <TriggerStatus.BAD_REQUEST: 4>
    """
    if not part_id.strip():
        logger.warning("PLC raised the trigger flag without a part id: refused")
        return TriggerStatus.BAD_REQUEST
    try:
        answer = request(endpoint, {"part_id": part_id, "origin": "plc-bridge"},
                         timeout_ms=timeout_ms, context=context)
    except ControlTimeoutError:
        logger.warning("trigger for part %s: no answer from %s within %d ms", part_id, endpoint, timeout_ms)
        return TriggerStatus.NO_ANSWER
    except ControlError as exc:
        logger.warning("trigger for part %s: unusable answer from %s: %s", part_id, endpoint, exc)
        return TriggerStatus.REFUSED
    if answer.get("ok") is True:
        logger.info("trigger for part %s accepted (%s)", part_id, answer.get("trigger_id"))
        return TriggerStatus.ACCEPTED
    logger.warning("trigger for part %s refused: %s", part_id, answer.get("error", answer))
    return TriggerStatus.REFUSED


class Bridge:
    """Verdicts from the daemon to one PLC (and triggers back), with the ack handshake.

    Subscribes with `from_seq` (default: the cursor's last delivered + 1; without a cursor
    file, verdicts published from now on), queues what arrives, shows one result at a time
    on `bus`, persists each acknowledged seq in `cursor`, writes a heartbeat every
    `heartbeat_interval_s`, forwards PLC triggers to `trigger_endpoint` (if given) and
    reconnects to the PLC with backoff (`reconnect_initial_s` doubling to `reconnect_max_s`).

    At most `max_queue` results wait in memory; beyond that the intake stops reading and the
    rest wait in the daemon's journal (replayed once there is room). `run(stop)` is the PLC
    loop (blocking; the verdict intake runs in a second thread); `start()` / `stop()` run it
    in a thread of its own.

    Example (a bridge to a PLC that is not there keeps retrying until stopped):
        >>> import tempfile, os
        >>> from inspectd.bridges.cursor import Cursor
        >>> from inspectd.bridges.modbus import ModbusBus
        >>> from inspectd.bridges.registermap import RegisterMap
        >>> bus = ModbusBus("127.0.0.1", 9, register_map=RegisterMap(), timeout_s=0.1)
        >>> bridge = Bridge(bus, "tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557",
        ...                 Cursor(os.path.join(tempfile.mkdtemp(), "c.json")))
        >>> bridge.start(); bridge.stop()
        >>> bridge.stats()["plc_connected"], bridge.stats()["delivered"]
        (False, 0)
    """

    def __init__(
        self,
        bus: Fieldbus,
        endpoint: str,
        control_endpoint: str,
        cursor: Cursor,
        *,
        from_seq: int | None = None,
        trigger_endpoint: str | None = None,
        heartbeat_interval_s: float = 1.0,
        poll_interval_s: float = 0.05,
        reconnect_initial_s: float = 0.2,
        reconnect_max_s: float = 5.0,
        max_queue: int = 1000,
        trigger_timeout_ms: int = 1000,
        daemon_timeout_s: float = 3.0,
        daemon_error_hold_s: float = 60.0,
        replay_retry_s: float = 1.0,
        replay_timeout_s: float = 3.0,
        context: zmq.Context | None = None,
        curve_client: CurveClientKeys | None = None,
    ) -> None:
        if heartbeat_interval_s <= 0 or poll_interval_s <= 0:
            msg = f"heartbeat_interval_s and poll_interval_s must be > 0, got {heartbeat_interval_s}, {poll_interval_s}"
            raise ValueError(msg)
        if max_queue < 1:
            msg = f"max_queue must be >= 1, got {max_queue}"
            raise ValueError(msg)
        self.bus = bus
        self.endpoint = endpoint
        self.control_endpoint = control_endpoint
        self.cursor = cursor
        self.from_seq = from_seq if from_seq is not None else cursor.next_from_seq()
        # An explicit from_seq at or below the cursor asks to deliver those verdicts again.
        self._ignores_cursor = from_seq is not None and from_seq <= (cursor.last_seq or 0)
        self.trigger_endpoint = trigger_endpoint
        self.heartbeat_interval_s = float(heartbeat_interval_s)
        self.poll_interval_s = float(poll_interval_s)
        self.max_queue = int(max_queue)
        self.trigger_timeout_ms = int(trigger_timeout_ms)
        self.daemon_timeout_s = float(daemon_timeout_s)
        self.daemon_error_hold_s = float(daemon_error_hold_s)
        self.replay_retry_s = float(replay_retry_s)
        self.replay_timeout_s = float(replay_timeout_s)
        self._context = context or zmq.Context.instance()
        self._curve_client = curve_client
        self._backoff = Backoff(reconnect_initial_s, max(reconnect_initial_s, reconnect_max_s))
        self._queue: collections.deque[dict[str, Any]] = collections.deque()  # [0] is shown next / now
        self._queue_changed = threading.Condition()
        self._intake_error: BaseException | None = None
        self._in_flight: dict[str, Any] | None = None
        # Highest seq accepted into the queue: the de-duplication floor, within the epoch (the
        # daemon journal's stream) `_stream_epoch`; a new epoch starts a new floor.
        self._queued_seq = (self.from_seq - 1) if self.from_seq is not None else (cursor.last_seq or 0)
        self._stream_epoch = cursor.state.epoch if from_seq is None and cursor.state is not None else None
        self._connected = False
        self._reconnect_at = 0.0
        self._next_heartbeat = 0.0
        self._heartbeat_count = 0
        self._replay_failing = False
        self._daemon_alive = False
        self._daemon_error: dict[str, Any] | None = None  # the last error.<station> message, while held
        self._last_plc_error: str | None = None
        self._last_plc_error_logged = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered_count = 0
        self.shown_count = 0
        self.duplicate_count = 0
        self.connect_count = 0
        self.plc_lost_count = 0
        self.rewritten_count = 0
        self.trigger_counts: collections.Counter[str] = collections.Counter()

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a daemon thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="plc-bridge", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the loop thread and wait for it (the connection is closed on the way out)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.error("bridge loop did not stop within %.1f s", timeout_s)
            self._thread = None

    def run(self, stop: threading.Event | None = None) -> None:
        """The PLC loop, with the verdict intake in a second thread, until `stop` is set.

        Two threads so that neither side waits for the other: a replay from a daemon that is
        restarting may take seconds, during which the heartbeat must go on and a PLC trigger
        must still be answered. Raises what stopped it (`CursorError`, or a bug) after both
        threads have ended.
        """
        stop = stop or self._stop
        logger.info("bridge to %s: verdicts from %s (replay %s), starting at seq %s",
                    self.bus.description, self.endpoint, self.control_endpoint,
                    self.from_seq if self.from_seq is not None else "'from now on'")
        intake = threading.Thread(target=self._intake, args=(stop,), name="plc-bridge-intake", daemon=True)
        intake.start()
        try:
            while not stop.is_set():
                self._service_plc()
                stop.wait(self.poll_interval_s)
        except BaseException:
            stop.set()
            raise
        finally:
            intake.join(self.replay_timeout_s + 5.0)
            self._disconnect()
            logger.info("bridge to %s stopped: %s", self.bus.description, self.stats())
        if self._intake_error is not None:
            raise self._intake_error

    def stats(self) -> dict[str, Any]:
        """Counters and state for status lines and tests.

        Example:
            >>> import tempfile, os
            >>> from inspectd.bridges.cursor import Cursor
            >>> from inspectd.bridges.modbus import ModbusBus
            >>> from inspectd.bridges.registermap import RegisterMap
            >>> bridge = Bridge(ModbusBus("127.0.0.1", 9, register_map=RegisterMap()), "tcp://127.0.0.1:5556",
            ...                 "tcp://127.0.0.1:5557", Cursor(os.path.join(tempfile.mkdtemp(), "c.json")))
            >>> bridge.stats()["queued"], bridge.stats()["last_delivered_seq"]
            (0, None)
        """
        return {
            "plc": self.bus.description,
            "plc_connected": self._connected,
            "last_plc_error": self._last_plc_error,
            "delivered": self.delivered_count,
            "shown": self.shown_count,
            "last_delivered_seq": self.cursor.last_seq,
            "in_flight_seq": None if self._in_flight is None else self._in_flight["seq"],
            "queued": len(self._queue),
            "duplicates": self.duplicate_count,
            "rewritten": self.rewritten_count,
            "connects": self.connect_count,
            "plc_lost": self.plc_lost_count,
            "daemon_alive": self._daemon_alive,
            "daemon_error": self._daemon_error,
            "replay_failing": self._replay_failing,
            "triggers": dict(self.trigger_counts),
        }

    # -- the daemon side (intake thread) ----------------------------------------------------

    def _intake(self, stop: threading.Event) -> None:
        """Subscriber -> queue; waits (reading nothing) while `max_queue` results wait."""
        try:
            subscriber = VerdictSubscriber(
                self.endpoint, self.control_endpoint, from_seq=self.from_seq, epoch=self._stream_epoch,
                context=self._context,
                curve_client=self._curve_client, station=self.cursor.station,
                replay_timeout_ms=int(self.replay_timeout_s * 1000))
        except Exception as exc:  # a bad endpoint: stop the bridge and say why
            logger.exception("cannot subscribe to %s", self.endpoint)
            self._intake_error = exc
            stop.set()
            return
        try:
            while not stop.is_set():
                with self._queue_changed:
                    if len(self._queue) >= self.max_queue:
                        # Beyond this they wait in the journal: PUB drops for us, replay brings them.
                        self._queue_changed.wait(self.poll_interval_s)
                        continue
                self._pull(subscriber, stop)
        except Exception as exc:
            logger.exception("verdict intake failed")
            self._intake_error = exc
            stop.set()
        finally:
            subscriber.close()

    def _pull(self, subscriber: VerdictSubscriber, stop: threading.Event) -> None:
        try:
            message = subscriber.poll(self.poll_interval_s)
            while message is not None:
                self._accept(message, subscriber)
                message = subscriber.poll(0.0) if len(self._queue) < self.max_queue else None
        except ControlError as exc:
            if not self._replay_failing:
                logger.warning("replay from %s failed, retrying every %.1f s: %s",
                               self.control_endpoint, self.replay_retry_s, exc)
            self._replay_failing = True
            stop.wait(self.replay_retry_s)
            return
        finally:
            now = time.monotonic()
            beat = subscriber.last_heartbeat_monotonic
            self._daemon_alive = beat is not None and now - beat <= self.daemon_timeout_s
            reported = subscriber.last_error_monotonic
            held = reported is not None and now - reported <= self.daemon_error_hold_s
            self._daemon_error = subscriber.last_error if held else None
        if self._replay_failing:
            logger.info("replay from %s works again", self.control_endpoint)
        self._replay_failing = False

    def _accept(self, message: dict[str, Any], subscriber: VerdictSubscriber) -> None:
        seq = int(message["seq"])
        epoch = subscriber.epoch
        if epoch is not None and self._stream_epoch is not None and epoch != self._stream_epoch:
            logger.warning("the daemon's journal is a new stream (epoch %d, was %d): following it from seq %d",
                           epoch, self._stream_epoch, seq)
            self._queued_seq = 0
        elif subscriber.last_seq is not None and subscriber.last_seq < self._queued_seq:
            # Only a daemon whose journal was reset (seq started over) takes the subscriber back.
            logger.warning("the daemon's journal was reset (seq %d after %d): following it", seq, self._queued_seq)
            self._ignores_cursor = True
            self._queued_seq = seq - 1
        if epoch is not None:
            self._stream_epoch = epoch
        delivered = not self._ignores_cursor and self.cursor.is_delivered(message.get("station"), epoch, seq)
        if delivered or seq <= self._queued_seq:
            self.duplicate_count += 1
            logger.debug("seq %d was delivered or queued already: dropped", seq)
            return
        self._queued_seq = seq
        with self._queue_changed:
            self._queue.append(message)

    # -- the PLC side ------------------------------------------------------------------------

    def _service_plc(self) -> None:
        now = time.monotonic()
        if not self._connected:
            if now < self._reconnect_at:
                return
            try:
                self.bus.connect()
                self._heartbeat_count = self.bus.read_heartbeat()
            except FieldbusError as exc:
                self._plc_failed(exc, was_connected=False)
                return
            self._connected = True
            self._backoff.reset()
            self._next_heartbeat = 0.0
            if self.connect_count:
                logger.warning("PLC %s reconnected", self.bus.description)
            else:
                logger.info("PLC %s connected", self.bus.description)
            self.connect_count += 1
            self._last_plc_error = None
        try:
            self._step_handshake()
            self._step_heartbeat(now)
            self._step_trigger()
        except FieldbusError as exc:
            self._plc_failed(exc, was_connected=True)

    def _step_handshake(self) -> None:
        mode = self.bus.ack_mode
        if self._in_flight is not None:
            message = self._in_flight
            view = self.bus.read_handshake()
            state = classify(view, int(message["seq"]), mode, presented=True)
            if state is Delivery.PENDING:
                return
            if state is Delivery.ABSENT:
                logger.warning("PLC %s no longer holds seq %d (restarted?): writing it again",
                               self.bus.description, message["seq"])
                self.rewritten_count += 1
                self._present(message, view)
                return
            self._delivered(message)
        with self._queue_changed:
            if not self._queue:
                return
            message = self._queue[0]
        view = self.bus.read_handshake()
        state = classify(view, int(message["seq"]), mode, presented=False)
        if state is Delivery.ACKED:
            logger.info("seq %d was acknowledged before this bridge started: not shown again", message["seq"])
            self._delivered(message)
        elif state is Delivery.PENDING:
            logger.info("seq %d is already shown on the PLC: waiting for its ack", message["seq"])
            self._in_flight = message
        else:
            self._present(message, view)

    def _present(self, message: dict[str, Any], view: HandshakeView) -> None:
        if view.new_result:
            if view.seq is not None and not _same(view.seq, int(message["seq"]), view.seq_modulus):
                logger.warning("PLC %s shows an unacknowledged result (seq %s) this bridge does not know; "
                               "replacing it with seq %d", self.bus.description, view.seq, message["seq"])
            self.bus.withdraw()
        self.bus.present(message)
        self.shown_count += 1
        self._in_flight = message
        logger.debug("seq %d shown on %s", message["seq"], self.bus.description)

    def _delivered(self, message: dict[str, Any]) -> None:
        # Durable first: if the bridge dies right after, the restart must not show it again.
        # The stream's epoch, not the message's: rows a journal kept from before epochs named
        # streams carry the old per-start numbers.
        self.cursor.save(station=message.get("station"), epoch=self._stream_epoch, seq=int(message["seq"]))
        with self._queue_changed:
            if self._queue and self._queue[0] is message:
                self._queue.popleft()
            self._queue_changed.notify_all()
        self._in_flight = None
        self.delivered_count += 1
        logger.debug("seq %d acknowledged by %s", message["seq"], self.bus.description)
        if self.bus.ack_mode is AckMode.ECHO_SEQ:
            self.bus.withdraw()

    def _step_heartbeat(self, now: float) -> None:
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.heartbeat_interval_s
        self._heartbeat_count = (self._heartbeat_count + 1) % self.bus.heartbeat_modulus
        status = StatusBit(0)
        if self._daemon_alive:
            status |= StatusBit.DAEMON_ALIVE
        if self._replay_failing:
            status |= StatusBit.REPLAY_FAILING
        if len(self._queue) >= self.max_queue:
            status |= StatusBit.QUEUE_FULL
        if self._daemon_error is not None:
            status |= StatusBit.DAEMON_ERROR
        self.bus.write_heartbeat(self._heartbeat_count, status, len(self._queue))

    def _step_trigger(self) -> None:
        if not self.trigger_endpoint or not self.bus.has_trigger:
            return
        part_id = self.bus.read_trigger()
        if part_id is None:
            return
        status = forward_trigger(self.trigger_endpoint, part_id, timeout_ms=self.trigger_timeout_ms,
                                 context=self._context)
        self.trigger_counts[status.name.lower()] += 1
        self.bus.answer_trigger(status)

    def _plc_failed(self, exc: FieldbusError, *, was_connected: bool) -> None:
        now = time.monotonic()
        delay_s = self._backoff.next()
        reason = str(exc)
        if was_connected:
            self.plc_lost_count += 1
            logger.warning("PLC %s lost: %s; reconnecting in %.1f s (results keep queueing)",
                           self.bus.description, reason, delay_s)
            self._last_plc_error_logged = now
        elif reason != self._last_plc_error or now - self._last_plc_error_logged > 30.0:
            # Once per reason (and every 30 s while it lasts), not once per attempt.
            logger.warning("cannot connect to PLC %s: %s; retrying with backoff", self.bus.description, reason)
            self._last_plc_error_logged = now
        else:
            logger.debug("PLC %s still unreachable: %s", self.bus.description, reason)
        self._last_plc_error = reason
        self._disconnect()
        self._reconnect_at = now + delay_s

    def _disconnect(self) -> None:
        self._connected = False
        self.bus.close()
