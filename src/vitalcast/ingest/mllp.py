"""An HL7 v2 MLLP listener: each framed message is stored, committed, then acknowledged.

MLLP (HL7 v2.5.1 Appendix C, "Minimal Lower Layer Protocol") frames a message as
``<VT> message <FS><CR>``. The ACK follows original acknowledgment mode: ``AA`` once the
message's unit of work is committed (quarantined items included: they are kept for
review, and MSA-3 says how many), ``AR`` for a message that cannot be read or stored
because of what it contains (not HL7, unsupported type, not UTF-8, too large, a value the
database refuses, data that cannot be attributed to one patient, or a failure of our own
code on it: resending the same message will not help), ``AE`` when the database was
unavailable (the transaction was rolled back; the sender should resend). Every message
gets one of the three, whatever fails: a message that made the handler fail without an
ACK would be resent by the sender forever (a poison message blocking its queue). The
ACK is sent only after the commit, so an AA never covers data that is not in the
database.

A cancellation (ADT^A11 cancel admit, ADT^A13 cancel discharge) is answered as every
message is: ``AA`` once its withdrawal or reopening of the visit's stay is committed, and
also when it was quarantined (a visit that is not stored, a withdrawn stay, no MSH-7:
MSA-3 counts it), since resending it would change nothing.

A frame holds one message (Appendix C: a block is one HL7 message): a frame with a second
MSH is refused whole with AR, nothing stored, rather than acknowledged for its first
message only. The reasons in MSA-3/ERR-8 name the problem without quoting the message.

With a :class:`~vitalcast.serving.stream_scoring.StreamScorer` (``vitalcast listen hl7``
always passes one), the stays a message stored results for or reopened (A13) are
rescored after its ACK is sent, by the scorer's own thread and in a transaction of its
own: the sender never waits for a model, and a scoring failure (retried) can neither turn
an AA into an AE nor lose a result. Coalescing applies as for MQTT
(``VITALCAST_STREAM_RESCORE_INTERVAL_S``).
"""

from __future__ import annotations

import logging
import re
import socket
import socketserver
import threading
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.db.session import session_scope
from vitalcast.errors import error_kind
from vitalcast.ingest.sources.hl7v2 import (
    SOURCE,
    Hl7FormatError,
    Pseudonym,
    decode_text,
    delimiter_problem,
    parse_message,
)
from vitalcast.ingest.units import store_unit
from vitalcast.monitoring.metrics import observe_ingest
from vitalcast.monitoring.worker_http import Heartbeat
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher

if TYPE_CHECKING:
    from vitalcast.serving.stream_scoring import StreamScorer

logger = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
# ERR-3 codes (HL7 table 0357).
_ERR_CODES = {"AR": "200^Unsupported message type^HL70357", "AE": "207^Application error^HL70357"}
_ERR_APPLICATION = _ERR_CODES["AE"]
_MSH_FIELDS = re.compile(r"MSH(.)")


def _escape(text: str) -> str:
    """HL7 escape sequences for the default delimiters (v2.5 section 2.7)."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("~", "\\R\\")
        .replace("&", "\\T\\")
        .replace("\r", " ")
        .replace("\n", " ")
    )


def build_ack(
    code: str,
    *,
    control_id: str,
    text: str = "",
    sending: tuple[str, str] = ("", ""),
    receiving: tuple[str, str] = ("", ""),
    trigger: str = "",
    version: str = "2.5",
    now: datetime | None = None,
    error: str | None = None,
) -> str:
    """An ACK message; for AE/AR an ERR segment repeats the reason.

    ``error`` is the ERR-3 code (table 0357); by default 200 for AR, 207 for AE.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    ack_id = f"ACK{stamp}{control_id}"[:20]
    segments = [
        f"MSH|^~\\&|{_escape(receiving[0])}|{_escape(receiving[1])}|{_escape(sending[0])}"
        f"|{_escape(sending[1])}|{stamp}||ACK^{_escape(trigger)}^ACK|{_escape(ack_id)}|P|{_escape(version)}",
        f"MSA|{code}|{_escape(control_id)}|{_escape(text[:80])}",
    ]
    if code != "AA":
        err = error or _ERR_CODES.get(code, _ERR_CODES["AE"])
        segments.append(f"ERR|||{err}|E||||{_escape(text)}")
    return "\r".join(segments) + "\r"


def _guess_header(text: str) -> tuple[str, tuple[str, str], tuple[str, str], str]:
    """Control id, sender, receiver and trigger of an unreadable message, if its MSH is.

    Only from an MSH segment whose delimiters are valid: with a wrong field separator the
    split would be a guess, and the ACK would echo whatever it cut out.
    """
    msh = text.lstrip().split("\r")[0].split("\n")[0]
    match = _MSH_FIELDS.match(msh)
    if not match or delimiter_problem(msh) is not None:
        return "", ("", ""), ("", ""), ""
    fields = msh.split(match.group(1))
    fields += [""] * 10
    trigger = fields[8].split("^")[1] if "^" in fields[8] else ""
    return fields[9], (fields[2], fields[3]), (fields[4], fields[5]), trigger


class MessageHandler:
    """Turns one framed payload into an ACK, storing the message in between."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        cipher: FieldCipher,
        *,
        tz: tzinfo = UTC,
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.factory = factory
        self.cipher = cipher
        self.tz = tz
        self.max_bytes = max_bytes
        self.pseudonym: Pseudonym = cipher.mrn_hash

    def handle(self, payload: bytes, peer: str, touched: set[int] | None = None) -> str:
        """Store the message and return the ACK text (never raises).

        ``touched`` receives the ids of the encounters it stored data for (to be rescored
        once the ACK is sent); only an AA adds any.

        Anything :meth:`_handle` does not answer itself (a parser bug on some input) is
        answered AR: the same message would fail the same way again.
        """
        try:
            return self._handle(payload, peer, set() if touched is None else touched)
        except Exception as exc:
            logger.error("hl7 message failed", extra={"error": error_kind(exc)})
            control_id, sending, receiving, trigger = _guess_header(
                payload.decode("utf-8", errors="replace")
            )
            return build_ack(
                "AR",
                control_id=control_id,
                text=f"message could not be processed (internal error {error_kind(exc)});"
                " nothing was stored",
                sending=sending,
                receiving=receiving,
                trigger=trigger,
                error=_ERR_APPLICATION,
            )

    def _handle(self, payload: bytes, peer: str, touched: set[int]) -> str:
        origin = f"mllp:{peer}"
        text = payload.decode("utf-8", errors="replace")
        control_id, sending, receiving, trigger = _guess_header(text)
        if len(payload) > self.max_bytes:
            return build_ack(
                "AR",
                control_id=control_id,
                text=f"message larger than {self.max_bytes} bytes",
                sending=sending,
                receiving=receiving,
                trigger=trigger,
            )
        try:
            message = parse_message(
                decode_text(payload, origin), origin=origin, pseudonym=self.pseudonym, tz=self.tz
            )
        except Hl7FormatError as exc:
            reason = exc.message.removeprefix(f"{origin}: ").removeprefix(f"{origin}#")
            return build_ack(
                "AR",
                control_id=control_id,
                text=reason,
                sending=sending,
                receiving=receiving,
                trigger=trigger,
            )
        try:
            with session_scope(self.factory) as session:
                report = store_unit(
                    session,
                    message.unit,
                    source=SOURCE,
                    cipher=self.cipher,
                    agent=audit.Agent("hl7-listener", client_addr=peer.rsplit(":", 1)[0]),
                )
        except Exception as exc:
            # Nothing was committed. The database unavailable (down, a deadlock, a
            # serialization failure): AE, the sender should resend later. Anything else
            # comes from this message's content, so a resend would fail again: AR.
            # Only the error's class is logged (its text may quote patient data).
            transient = isinstance(exc, OperationalError | InterfaceError)
            logger.error(
                "hl7 message not stored",
                extra={"control_id": message.control_id, "error": error_kind(exc)},
            )
            return build_ack(
                "AE" if transient else "AR",
                control_id=message.control_id,
                text="storage error; nothing was stored, resend later"
                if transient
                else f"message could not be stored ({error_kind(exc)}); nothing was stored",
                sending=message.sending,
                receiving=message.receiving,
                trigger=message.message_type.split("^")[1],
                version=message.version,
                error=_ERR_APPLICATION,
            )
        observe_ingest(report)  # committed: count it (the worker endpoint's /metrics)
        touched.update(report.touched_encounters)
        note = f"stored {report.stored}, duplicates {report.duplicates}"
        if report.quarantined:
            reasons = ", ".join(f"{k} {v}" for k, v in report.reasons.most_common(3))
            note += f", quarantined {report.quarantined} ({reasons})"
        logger.info(
            "hl7 message stored",
            extra={"control_id": message.control_id, "run_id": report.run_id},
        )
        return build_ack(
            "AA",
            control_id=message.control_id,
            text=note,
            sending=message.sending,
            receiving=message.receiving,
            trigger=message.message_type.split("^")[1],
            version=message.version,
        )


class _Connection(socketserver.BaseRequestHandler):
    server: MllpServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(self.server.idle_timeout_s)
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        buffer = b""
        limit = self.server.handler.max_bytes + 16
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, OSError):
                return
            if not chunk:
                return
            buffer += chunk
            while True:
                start = buffer.find(START)
                end = buffer.find(END, start + 1) if start >= 0 else -1
                if start < 0 or end < 0:
                    break
                payload, buffer = buffer[start + 1 : end], buffer[end + 2 :]
                touched: set[int] = set()
                ack = self.server.handler.handle(payload, peer, touched)
                try:
                    sock.sendall(START + ack.encode() + END)
                finally:  # after the ACK; committed data is rescored even if it was lost
                    if touched and self.server.scorer is not None:
                        self.server.scorer.touched(touched)
            if len(buffer) > limit:
                ack = self.server.handler.handle(buffer[buffer.find(START) + 1 :], peer)
                sock.sendall(START + ack.encode() + END)
                return  # framing lost: close rather than guess where the next one starts


class MllpServer(socketserver.ThreadingTCPServer):
    """Threaded MLLP server: one thread per connection, messages in order per connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: MessageHandler,
        *,
        idle_timeout_s: float = 300,
        scorer: StreamScorer | None = None,
    ) -> None:
        self.handler = handler
        self.idle_timeout_s = idle_timeout_s
        # Rescores the stays of stored messages (run its start_background); None: store only.
        self.scorer = scorer
        # Beaten by serve_forever's loop (every poll, 0.5 s): the worker endpoint's
        # /healthz fails when the accepting loop is stuck.
        self.heartbeat = Heartbeat()
        super().__init__(address, _Connection)

    def service_actions(self) -> None:
        """Called by ``serve_forever`` at every turn of its loop."""
        self.heartbeat.beat()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start_background(self) -> threading.Thread:
        """Serve in a daemon thread (tests, embedding); stop with ``shutdown()``."""
        thread = threading.Thread(target=self.serve_forever, name="mllp", daemon=True)
        thread.start()
        return thread


def send_messages(host: str, port: int, messages: list[str], *, timeout_s: float = 10) -> list[str]:
    """A minimal MLLP client: send each message, wait for its ACK (tools and tests)."""
    acks: list[str] = []
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        for message in messages:
            sock.sendall(START + message.encode() + END)
            acks.append(_read_frame(sock))
    return acks


def _read_frame(sock: socket.socket) -> str:
    buffer = b""
    while END not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the ACK")
        buffer += chunk
    return buffer[buffer.find(START) + 1 : buffer.find(END)].decode()
