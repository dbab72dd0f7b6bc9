"""The reference subscriber: verdicts in seq order, no gaps, no duplicates (the PLC bridges' model).

ZeroMQ PUB drops messages for a slow subscriber or one that has not finished connecting, and
says nothing. Every message carries a journal `seq` (monotonic per station across restarts),
so a subscriber can notice what it missed and ask the daemon's control endpoint to replay it:

- a live verdict whose seq jumps past `last_seq + 1` is held back while the gap is replayed;
- a heartbeat whose `last_seq` stays ahead of ours for two beats means the tail was lost;
- with `from_seq`, the subscriber subscribes first and then replays `from_seq`.. the newest
  (slow-joiner safe: anything published meanwhile arrives live or by replay, never neither);
- anything at or below `last_seq` (replay overlap, a restarted daemon re-announcing) is
  dropped, which is de-duplication on (station, epoch, seq): seq never repeats within an epoch;
- a verdict or heartbeat with a *different* epoch (larger or smaller: epochs are names, not
  counters), also in a replay answer, means the daemon's journal is a new stream (a new or
  emptied journal, one put back from a copy): the subscriber follows it from its first
  verdict, replaying it from seq 1 and skipping the rows an older stream left in that journal
  (they carry the old epoch).

Seqs that retention already pruned cannot be replayed: they are logged and counted in
`lost_count`, and delivery goes on.

Example (against a daemon on the default endpoints):
    >>> subscriber = VerdictSubscriber("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557")  # doctest: +SKIP
    >>> for message in subscriber:  # doctest: +SKIP
    ...     print(message["seq"], message["verdict"])
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import zmq

from inspectd.clients.control import ControlError, request
from inspectd.escaping import logfmt_value, printable
from inspectd.wire.message import decode
from inspectd.wire.publish import set_transport_heartbeats

if TYPE_CHECKING:
    from inspectd.wire.curve import CurveClientKeys

logger = logging.getLogger(__name__)

KEY_PARAMETERS = ("porosity_pct", "unmelted_fraction_pct", "melted_fraction_pct")


class VerdictSubscriber:
    """SUB socket on `endpoint` plus replay over `control_endpoint`; `poll()` or iterate.

    `from_seq=None` starts with what is published from now on; `from_seq=N` delivers every
    journaled verdict with seq >= N first (a bridge passes its persisted last seq + 1, and
    the `epoch` that seq counts in: should the daemon's journal have another epoch by now,
    the subscriber starts that stream from its first verdict instead).
    `station` limits delivery to one station's topics. `poll()` raises `ControlError`
    (or its `ControlTimeoutError`) when a needed replay fails; the state is kept, so calling
    `poll()` again retries exactly there.
    """

    def __init__(
        self,
        endpoint: str,
        control_endpoint: str,
        *,
        from_seq: int | None = None,
        epoch: int | None = None,
        context: zmq.Context | None = None,
        curve_client: CurveClientKeys | None = None,
        station: str | None = None,
        replay_timeout_ms: int = 3000,
        rcvhwm: int = 10_000,
        zmq_heartbeat_ivl_ms: int = 1000,
        zmq_heartbeat_timeout_ms: int = 3000,
    ) -> None:
        if from_seq is not None and from_seq < 1:
            msg = f"from_seq must be >= 1 (the first verdict ever is 1), got {from_seq}"
            raise ValueError(msg)
        self.endpoint = endpoint
        self.control_endpoint = control_endpoint
        self.station = station
        self.replay_timeout_ms = int(replay_timeout_ms)
        self._context = context or zmq.Context.instance()
        self._curve_client = curve_client
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._held: dict[str, Any] | None = None  # live verdict waiting for its gap to fill
        self._last_seq: int | None = None if from_seq is None else from_seq - 1
        self._epoch: int | None = epoch  # the stream followed; None until the daemon names it
        self._switched = False  # followed into a new stream: replayed rows of older epochs are skipped
        self._catch_up_pending = from_seq is not None
        self._tail_target = 0  # heartbeat last_seq seen one beat ago
        self._fill_target = 0  # fill up to here before reading on (from heartbeats)
        self.received_count = 0
        self.duplicate_count = 0
        self.replayed_count = 0
        self.lost_count = 0
        self.stream_changes = 0  # new epochs followed
        self.other_stream_count = 0  # replayed rows of an earlier stream, skipped
        self.last_heartbeat: dict[str, Any] | None = None
        self.last_heartbeat_monotonic: float | None = None
        self.last_error: dict[str, Any] | None = None  # the newest error.<station> message
        self.last_error_monotonic: float | None = None

        socket = self._context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, int(rcvhwm))
        set_transport_heartbeats(socket, interval_ms=zmq_heartbeat_ivl_ms, timeout_ms=zmq_heartbeat_timeout_ms)
        if curve_client is not None:
            curve_client.apply(socket)
        suffix = b"" if station is None else f"{station}".encode()
        for kind in (b"verdict.", b"heartbeat.", b"error."):
            socket.setsockopt(zmq.SUBSCRIBE, kind + suffix)
        socket.connect(endpoint)
        self._socket = socket

    @property
    def last_seq(self) -> int | None:
        """Seq of the last verdict handed out (or queued to be), None before the first one."""
        return self._last_seq

    @property
    def epoch(self) -> int | None:
        """Epoch of the stream followed (`last_seq` counts in it), None before the daemon named one."""
        return self._epoch

    def __enter__(self) -> VerdictSubscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            message = self.poll(1.0)
            if message is not None:
                yield message

    def close(self) -> None:
        """Close the SUB socket."""
        self._socket.close(linger=0)

    def poll(self, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """The next verdict in seq order, or None when none arrives within `timeout_s`."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            # Hand out what is ready before a replay that may fail (and raise).
            if self._pending:
                return self._pending.popleft()
            self._settle()
            if self._pending:
                return self._pending.popleft()
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self._socket.poll(remaining_ms, zmq.POLLIN):
                # One last settle: a heartbeat may have asked for a replay.
                self._settle()
                return self._pending.popleft() if self._pending else None
            # Drain what is already here before replaying, so one replay covers a burst.
            while True:
                try:
                    frames = self._socket.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_frames(frames)
                if self._held is not None:
                    break

    # -- state machine ---------------------------------------------------------------------

    def _settle(self) -> None:
        """Do the replays the state asks for; raises ControlError, keeping state for a retry."""
        while True:
            try:
                self._settle_once()
                return
            except _NewStream:
                continue  # a replay showed another epoch: start that stream from its first verdict

    def _settle_once(self) -> None:
        if self._catch_up_pending:
            self._catch_up()
        if self._held is not None:
            self._fill_to(int(self._held["seq"]) - 1)
            held, self._held = self._held, None
            if held["seq"] > self._last_seq:
                self._take(held)
            else:  # the catch-up replay already delivered it
                self.duplicate_count += 1
        if self._last_seq is not None and self._fill_target > self._last_seq:
            self._fill_to(self._fill_target)

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            logger.warning("ignoring a message of %d frames (expected [topic, json])", len(frames))
            return
        kind, _, station = frames[0].decode("utf-8", errors="replace").partition(".")
        if self.station is not None and station != self.station:
            return
        try:
            message = decode(frames[1])
        except ValueError as exc:
            logger.warning("ignoring a %s message that is not JSON: %s", kind, exc)
            return
        if not isinstance(message, dict):
            logger.warning("ignoring a %s message that is not a JSON object", kind)
            return
        if kind == "verdict":
            self._on_verdict(message, station)
        elif kind == "heartbeat":
            self._on_heartbeat(message, station)
        elif kind == "error":
            self.last_error = message
            self.last_error_monotonic = time.monotonic()
            source = f" from {message['source']}" if message.get("source") else ""
            logger.warning("daemon %s reports %s%s: %s", station, message.get("kind", "an error"), source,
                           message.get("error"))

    def _on_verdict(self, message: dict[str, Any], station: str) -> None:
        seq = message.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            logger.warning("ignoring a verdict without a valid seq: %r", seq)
            return
        if self.station is None:
            self.station = station  # one daemon = one station: lock onto the first one seen
        self.received_count += 1
        epoch = message.get("epoch")
        if _is_epoch(epoch):
            if self._epoch is None:
                self._epoch = epoch
            elif epoch != self._epoch:
                self._follow_new_stream(epoch, station, "a live verdict")
        if self._last_seq is None:
            self._last_seq = seq - 1
        if seq <= self._last_seq:
            self.duplicate_count += 1
        elif seq == self._last_seq + 1 and not self._catch_up_pending:
            self._take(message)
        else:
            self._held = message
            logger.info("gap: got seq %d after %d, replaying the missing ones", seq, self._last_seq)

    def _on_heartbeat(self, beat: dict[str, Any], station: str) -> None:
        self.last_heartbeat = beat
        self.last_heartbeat_monotonic = time.monotonic()
        head = beat.get("last_seq")
        if isinstance(head, bool) or not isinstance(head, int):
            return
        if self.station is None:
            self.station = station
        epoch = beat.get("epoch")
        if self._last_seq is None:
            self._last_seq = head  # "from now on": start after what is already journaled
            self._epoch = epoch if _is_epoch(epoch) else self._epoch
            return
        if _is_epoch(epoch):
            if self._epoch is None:
                self._epoch = epoch
            elif epoch != self._epoch:
                self._follow_new_stream(epoch, station, "a heartbeat")
                return
        # The journal commits before the publish thread sends, so a beat may announce a seq
        # still in flight: only a tail still missing one beat later is replayed.
        if self._tail_target > self._last_seq:
            self._fill_target = max(self._fill_target, self._tail_target)
        self._tail_target = head

    def _take(self, message: dict[str, Any]) -> None:
        self._pending.append(message)
        self._last_seq = int(message["seq"])

    def _follow_new_stream(self, epoch: int, station: str, seen_in: str) -> None:
        """The daemon's journal has another epoch: its verdicts are new whatever their seq, so
        start that stream from its first verdict (a catch-up replay from seq 1)."""
        logger.warning("station %s: %s carries epoch %d, not %s: the daemon's journal is a new stream; following "
                       "it from its first verdict", station or self.station, seen_in, epoch, self._epoch)
        self.stream_changes += 1
        self._epoch = epoch
        self._switched = True
        self._last_seq = 0
        self._held = None
        self._tail_target = self._fill_target = 0
        self._catch_up_pending = True

    def _catch_up(self) -> None:
        """Replay from last_seq + 1 to the newest journaled verdict (paged)."""
        while True:
            answer = self._replay(self._last_seq + 1, None)
            took = self._take_replayed(answer["messages"], upper=None)
            head = answer.get("last_seq")
            if not took or not isinstance(head, int) or self._last_seq >= head:
                break
        if isinstance(head, int) and self._last_seq > head:
            logger.warning("from_seq %d is beyond the newest journaled seq %d: waiting for it "
                           "(after a journal reset, ask for a lower from_seq)", self._last_seq + 1, head)
        self._catch_up_pending = False

    def _fill_to(self, target: int) -> None:
        """Replay last_seq + 1 .. target; seqs the journal no longer has are counted as lost."""
        while self._last_seq < target:
            answer = self._replay(self._last_seq + 1, target)
            if not self._take_replayed(answer["messages"], upper=target):
                missing = target - self._last_seq
                logger.warning("seq %d..%d are not in the journal any more (retention): %d lost",
                               self._last_seq + 1, target, missing)
                self.lost_count += missing
                self._last_seq = target

    def _take_replayed(self, messages: list[dict[str, Any]], *, upper: int | None) -> bool:
        took = False
        for message in sorted(messages, key=lambda m: m["seq"]):
            seq = message["seq"]
            if seq <= self._last_seq:
                continue
            if upper is not None and seq > upper:
                break
            epoch = message.get("epoch")
            if self._switched and _is_epoch(epoch) and epoch != self._epoch:
                self.other_stream_count += 1  # a row an earlier stream left in this journal
                self._last_seq = seq
                took = True
                continue
            if seq > self._last_seq + 1:
                missing = seq - self._last_seq - 1
                logger.warning("seq %d..%d are not in the journal any more (retention): %d lost",
                               self._last_seq + 1, seq - 1, missing)
                self.lost_count += missing
            self._take(message)
            self.replayed_count += 1
            took = True
        return took

    def _replay(self, from_seq: int, to_seq: int | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"cmd": "replay", "from": from_seq}
        if to_seq is not None:
            payload["to"] = to_seq
        answer = request(self.control_endpoint, payload, timeout_ms=self.replay_timeout_ms,
                         curve_client=self._curve_client, context=self._context)
        messages = answer.get("messages")
        if answer.get("ok") is False or not isinstance(messages, list):
            msg = f"replay {from_seq}..{to_seq or ''} refused by {self.control_endpoint}: {answer.get('error', answer)}"
            raise ControlError(msg)
        epoch = answer.get("epoch")  # the stream the daemon's journal is on now
        if _is_epoch(epoch):
            if self._epoch is None:
                self._epoch = epoch
            elif epoch != self._epoch:  # the journal changed under a cursor or during a gap
                self._follow_new_stream(epoch, self.station or "", "the replay answer")
                raise _NewStream
        valid = [m for m in messages if isinstance(m, dict) and isinstance(m.get("seq"), int)
                 and not isinstance(m.get("seq"), bool)]
        if len(valid) != len(messages):
            logger.warning("replay answer held %d entries without a valid seq", len(messages) - len(valid))
        return {**answer, "messages": valid}


class _NewStream(Exception):
    """A replay answer came from another epoch than the one followed: start over with it."""


def _is_epoch(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def format_line(message: dict[str, Any]) -> str:
    """One human line per verdict: seq, verdict, part id, source, key parameters or reason.

    Every value is shown through `inspectd.escaping`: a part id or source holding a space,
    quote or `=` is quoted, and control characters (a newline, a carriage return, an ANSI
    escape) or undecodable bytes are escaped, so a file name can never print a line of its
    own. The reason is the rest of the line.

    Example:
        >>> format_line({"seq": 3, "verdict": "FAIL", "part_id": "P7", "source": "/in/p7.png",
        ...     "parameters": {"porosity_pct": {"value": 7.25, "unit": "%"}},
        ...     "failed_rules": [{"metric": "porosity_pct", "op": "<=", "limit": 5.0, "value": 7.25}]})
        'seq=3 FAIL part=P7 source=/in/p7.png porosity_pct=7.25% failed=[porosity_pct 7.25 !<= 5]'
        >>> format_line({"seq": 4, "verdict": "ERROR", "source": "/in/x\\nseq=9999 PASS part=A-17.png",
        ...              "reason": "not an image"})
        'seq=4 ERROR part=- source="/in/x\\\\nseq=9999 PASS part=A-17.png" reason=not an image'
    """
    parts = [f"seq={logfmt_value(message.get('seq'))}", logfmt_value(message.get("verdict")),
             f"part={logfmt_value(message.get('part_id') or '-')}", f"source={logfmt_value(message.get('source'))}"]
    parameters = message.get("parameters") or {}
    for name in KEY_PARAMETERS:
        entry = parameters.get(name) if isinstance(parameters, dict) else None
        if isinstance(entry, dict) and entry.get("value") is not None:
            unit = printable(entry.get("unit", ""))
            parts.append(f"{name}={_number(entry['value'])}{'' if unit == '1' else unit}")
    failed = message.get("failed_rules") or []
    if failed:
        shown = ", ".join(
            f"{printable(rule.get('metric'))} {_number(rule.get('value'))} !{printable(rule.get('op'))} "
            f"{_number(rule.get('limit'))}"
            for rule in failed if isinstance(rule, dict))
        parts.append(f"failed=[{shown}]")
    if message.get("reason"):
        parts.append(f"reason={printable(message['reason'])}")
    return " ".join(parts)


def run(
    endpoint: str,
    control_endpoint: str,
    from_seq: int | None = None,
    out: Callable[[str], Any] = print,
    *,
    curve_client: CurveClientKeys | None = None,
    context: zmq.Context | None = None,
    stop: threading.Event | None = None,
    max_messages: int | None = None,
    retry_s: float = 1.0,
) -> int:
    """Print one line per verdict until `stop` is set or `max_messages` were printed.

    This is `inspectd subscribe`. A failed replay (daemon restarting) is logged and retried.
    Returns the number of verdicts printed.

    Example:
        >>> import threading
        >>> stop = threading.Event(); stop.set()
        >>> run("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557", stop=stop)
        0
    """
    stop = stop or threading.Event()
    printed = 0
    with VerdictSubscriber(endpoint, control_endpoint, from_seq=from_seq, context=context,
                           curve_client=curve_client) as subscriber:
        while not stop.is_set() and (max_messages is None or printed < max_messages):
            try:
                message = subscriber.poll(0.5)
            except ControlError as exc:
                logger.warning("replay failed, retrying in %.1f s: %s", retry_s, exc)
                stop.wait(retry_s)
                continue
            if message is None:
                continue
            out(format_line(message))
            if out is print:
                sys.stdout.flush()  # a pipe (make demo) should see each verdict as it comes
            printed += 1
    return printed


def _number(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4g}"
    return logfmt_value(value)  # not a number: shown, never formatted as one
