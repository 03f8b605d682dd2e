"""The Socket.IO wire of the hub: the JSON codec of its packets, the decoding rules that refuse
what no client of the protocol sends (so nothing fails later with a traceback), and the server
subclass that answers such frames and routes every client event, whatever its name, to the
hub's one entry point. The hub (signaling/hub.py) is the only user.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import socketio

from signaling import protocol as p


class OrjsonCodec:
    """JSON for the hub's packets: orjson saved ~28% server CPU per relayed message
    (bench/signaling.py --variants)."""

    @staticmethod
    def dumps(obj: Any, *args: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(data: str | bytes, *args: Any, **kwargs: Any) -> Any:
        return orjson.loads(data)


class UndecodablePacket(ValueError):
    """A frame the hub will not decode (bad JSON, too deep, binary attachments, not an event
    shape), with what its header said: enough to answer its ack with ``invalid_payload``."""

    def __init__(self, reason: str, *, packet_type: int | None, namespace: str | None,
                 ack_id: int | None, event: str | None = None, attachments: int = 0,
                 binary_frame: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.packet_type = packet_type
        self.namespace = namespace
        self.ack_id = ack_id
        self.event = event
        self.attachments = attachments
        self.binary_frame = binary_frame


def _depth_over(data: Any, limit: int) -> bool:
    """Whether ``data`` nests lists/objects deeper than ``limit`` (without recursing)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return False


def _event_name(encoded: str) -> str | None:
    """The event name of an undecodable EVENT frame, for the log line, if it can be seen."""
    start = encoded.find('["')
    end = encoded.find('"', start + 2) if start != -1 else -1
    return encoded[start + 2:end] if end != -1 and end - start < 80 else None


_CLIENT_PACKETS = frozenset({socketio.packet.CONNECT, socketio.packet.DISCONNECT,
                             socketio.packet.EVENT, socketio.packet.ACK,
                             socketio.packet.BINARY_EVENT, socketio.packet.BINARY_ACK})


class OrjsonPacket(socketio.packet.Packet):  # type: ignore[misc]
    """This hub's packets only: ``AsyncServer(json=...)`` would swap the codec of every
    Socket.IO client and server in the process.

    Decoding refuses, with :class:`UndecodablePacket`, what no client of the protocol sends
    and what would otherwise fail later with a traceback: JSON that orjson refuses (NaN,
    Infinity, 1e400, lone surrogates), nesting deeper than ``p.MAX_DEPTH``, binary attachments
    (the protocol is JSON only), and an event that is not ``[name, ...]``."""

    json = OrjsonCodec

    def decode(self, encoded_packet: str | bytes) -> int:
        if not isinstance(encoded_packet, str):
            raise UndecodablePacket("a binary frame outside a binary packet", packet_type=None,
                                    namespace=None, ack_id=None, binary_frame=True)
        try:
            attachments = int(super().decode(encoded_packet) or 0)
        except (ValueError, TypeError, RecursionError) as err:
            raise UndecodablePacket(
                f"undecodable JSON ({str(err).split(':')[0]})", packet_type=self.packet_type,
                namespace=self.namespace, ack_id=self.id,
                event=_event_name(encoded_packet)) from None
        kind = self.packet_type
        # python-socketio raises on these inside Engine.IO's task (an ERROR and a traceback
        # per frame), and calls an ack's callback with ``*data``, so an ACK without a list of
        # arguments would fail inside the hub's own welcome-ack callback.
        if kind not in _CLIENT_PACKETS or (kind == socketio.packet.ACK
                                           and not isinstance(self.data, list)):
            raise UndecodablePacket("not a packet a client sends", packet_type=kind,
                                    namespace=self.namespace, ack_id=None)
        if kind in (socketio.packet.BINARY_EVENT, socketio.packet.BINARY_ACK):
            raise UndecodablePacket("binary attachments are not accepted", packet_type=kind,
                                    namespace=self.namespace, ack_id=self.id,
                                    attachments=attachments, event=_event_name(encoded_packet))
        # Counting brackets is C-fast; only a frame with many of them is walked.
        if ((encoded_packet.count("[") + encoded_packet.count("{")) > p.MAX_DEPTH
                and _depth_over(self.data, p.MAX_DEPTH)):
            raise UndecodablePacket(f"nested deeper than {p.MAX_DEPTH} levels",
                                    packet_type=kind, namespace=self.namespace, ack_id=self.id,
                                    event=_event_name(encoded_packet))
        if kind == socketio.packet.EVENT and not (
                isinstance(self.data, list) and self.data and isinstance(self.data[0], str)):
            raise UndecodablePacket("an event is a list that starts with its name",
                                    packet_type=kind, namespace=self.namespace, ack_id=self.id)
        return attachments


UndecodableSink = Callable[[str, UndecodablePacket], None]
ClientEvent = Callable[..., Awaitable[Any]]
TransportOpen = Callable[[str, dict[str, Any]], bool]
TransportClosed = Callable[[str], None]


class HubServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server, answering frames :class:`OrjsonPacket` will not decode: an
    event that asked for an ack gets ``invalid_payload``, a CONNECT gets a ``connect_error``
    with that code, and the socket stays usable. Without this the decode error escapes into
    Engine.IO, which logs a traceback per frame and answers nothing."""

    def __init__(self, *args: Any, on_undecodable: UndecodableSink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_undecodable = on_undecodable
        self._skipping: dict[str, int] = {}  # eio sid -> attachments of a refused packet left
        # Set by the hub (see _handle_event_internal and the Engine.IO hooks below).
        self.on_client_event: ClientEvent | None = None
        self.on_transport_open: TransportOpen | None = None
        self.on_transport_closed: TransportClosed | None = None

    async def _handle_event_internal(self, server: Any, sid: str, eio_sid: str,
                                     data: list[Any], namespace: str, id: int | None) -> None:
        """Every client EVENT goes to ``on_client_event``, whatever its name. python-socketio
        resolves it by name in the table of the lifecycle handlers too: an event named
        ``connect`` or ``disconnect`` would call them with arguments the client chose (a
        forged environ, so a forged address), one named ``*`` the catch-all with its
        arguments shifted. Lifecycle handlers are reached only by the server's own CONNECT
        and DISCONNECT handling. (python-socketio 5.x internals: tests/test_harden_connect.py
        fails if a release changes them.)"""
        handler = self.on_client_event
        if handler is None:
            return
        reply = await handler(data[0], sid, *data[1:])
        if id is not None:
            await server._send_packet(eio_sid, self.packet_class(
                socketio.packet.ACK, namespace=namespace, id=id, data=[reply]))

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        """An Engine.IO connection opened (before any namespace is joined); the hub may
        refuse it: Engine.IO then answers 401 and keeps nothing."""
        if self.on_transport_open is not None and not self.on_transport_open(eio_sid, environ):
            return False
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except UndecodablePacket as err:
            await self._refuse(eio_sid, err)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        self._skipping.pop(eio_sid, None)
        try:
            await super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            if self.on_transport_closed is not None:
                self.on_transport_closed(eio_sid)

    async def _refuse(self, eio_sid: str, err: UndecodablePacket) -> None:
        if err.binary_frame and self._skipping.get(eio_sid, 0) > 0:
            # An attachment of the binary packet refused (and counted) already.
            self._skipping[eio_sid] -= 1
            if self._skipping[eio_sid] <= 0:
                del self._skipping[eio_sid]
            return
        if err.attachments > 0:
            self._skipping[eio_sid] = err.attachments
        self._on_undecodable(eio_sid, err)
        namespace = err.namespace or "/"
        message = f"the payload cannot be decoded: {err.reason}"
        if err.packet_type == socketio.packet.CONNECT:
            await self._send_packet(eio_sid, self.packet_class(
                socketio.packet.CONNECT_ERROR, namespace=namespace,
                data={"message": message,
                      "data": {"code": "invalid_payload", "message": message}}))
        elif (err.packet_type in (socketio.packet.EVENT, socketio.packet.BINARY_EVENT)
              and err.ack_id is not None
              and self.manager.sid_from_eio_sid(eio_sid, namespace) is not None):
            await self._send_packet(eio_sid, self.packet_class(
                socketio.packet.ACK, namespace=namespace, id=err.ack_id,
                data=[p.fail("invalid_payload", message)]))
