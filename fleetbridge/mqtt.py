"""The MQTT side: one connection, a bounded window of publishes in flight, reconnect with backoff.

The link keeps the *desired* retained content of every topic it owns. Publishing is asynchronous:
callers set what a topic should hold, the sender drains what changed. After a reconnect everything
retained is sent again, so no change made while the broker was away is lost (only the latest value
of a topic matters). Discovery topics are first compared with what the broker retains.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from itertools import count
from typing import Any

import aiomqtt

from .config import MqttConfig

_LOGGER = logging.getLogger(__name__)

WINDOW = 32  # publishes in flight (mqtt-facts.md: 20-50 keeps QoS 1 fast; never near 65,535)
RECONCILE_QUIET = 0.5  # seconds without a retained discovery message that ends the comparison
RECONCILE_MAX = 10.0
BACKOFF = (1.0, 60.0)

PACK_OVER = 1024  # retained payloads larger than this are kept compressed (discovery: 2-36 KB, ~6:1)
LOW_WATER = 1000  # messages waiting: below this a poll may go on (back-pressure, see wait_for_room)

MessageHandler = Callable[[str, bytes, bool], Awaitable[None] | None]  # topic, payload, retained
Done = Callable[[], None] | None
Wanted = Callable[[], bool] | None  # asked just before an acknowledged message is (re)sent


def _ack_now(sock: socket.socket | None) -> None:
    """Acknowledge what the broker sent at once (Linux TCP_QUICKACK; the kernel drops the mode by
    itself, so it is set again after each read). Otherwise the kernel may delay the TCP ACK of a
    PUBACK up to 40 ms, and a broker without ``set_tcp_nodelay`` holds its next small packet (a
    command) until that ACK comes (Nagle): the 40-60 ms outliers of the command latency."""
    if sock is not None and _QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except (OSError, AttributeError, TypeError):  # a TLS or test socket that will not take it
            pass


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

WIRE_SEND_MAX = 16384  # bytes one coalesced send() may carry (a window of states: ~10 KB)
WIRE_RECV = 16384  # bytes one buffered recv() asks for
_DISCONNECT = 0xE0  # MQTT packet type


class _Wire:
    """Cheaper socket I/O for one paho client (issue #9): the same bytes in fewer system calls.

    Under aiomqtt paho writes every queued packet with its own ``send()`` and reads every PUBACK
    with three ``recv()`` calls (type, length, packet id: 1 + 1 + 2 bytes), and builds a
    ReasonCode and a Properties object for each PUBACK even on MQTT 3.1.1. About 4 system calls and
    two throw-away objects per QoS 1 message (benchmarks/bare.py, ``"mode": "wire"``). Three
    overrides on the paho *instance*, each transparent to the rest of paho, which stays the owner of
    the connection, the packet queue, PUBACK matching, keepalive and TLS:

    - ``_sock_send``: the first packet's send carries the bytes of the packets queued behind it too
      (up to ``WIRE_SEND_MAX``); what went out beyond the first packet is kept as *credit*, and
      paho's own loop then "sends" those packets from the credit without a system call, completing
      them (QoS 0 ``on_publish``, DISCONNECT) exactly as before. A short send leaves no credit: paho
      re-queues the rest of the first packet as usual. A retry after EAGAIN or SSLWantWriteError
      starts with the same bytes and is never shorter (the queue only grows at its tail), which is
      what OpenSSL requires of a repeated write.
    - ``_sock_recv`` + ``loop_read``: one ``recv(WIRE_RECV)`` feeds paho's small reads from a
      buffer; ``loop_read`` goes on while the buffer holds bytes, so nothing waits there for a
      socket readiness that will not come.
    - ``_handle_pubackcomp``: an MQTT 3.1.1 PUBACK (2 bytes: the packet id) goes straight to paho's
      ``_do_on_publish`` with one shared success ReasonCode/Properties pair; anything else (MQTT 5,
      PUBCOMP) takes paho's own path.

    And one addition, ``publish``: a QoS 1 PUBLISH (MQTT 3.1.1) built here and queued on paho's
    packet queue, without paho's per-message bookkeeping (an MQTTMessage, an MQTTMessageInfo, its
    in-flight table and the re-scan of that table after every PUBACK): about 14 of the 22 us paho
    spends per message. Its packet id comes from paho's own generator, its PUBACK goes to
    ``on_ack`` (also straight from the read buffer, four bytes at a time, while the next packets
    there are such PUBACKs). Its owner resends what was not acknowledged on the next connection,
    as the bridge's sender does anyway.

    Credit and buffer belong to one socket: after a reconnect (a new socket) both are dropped.
    ``attach`` returns None, and the plain path is used, when a paho internal it relies on is
    missing (a paho release that renamed it)."""

    NEEDS = ("_sock", "_sock_send", "_sock_recv", "_out_packet", "_in_packet", "_protocol",
             "_out_messages", "_out_message_mutex", "_do_on_publish", "_handle_pubackcomp", "_easy_log",
             "loop_read", "_mid_generate", "_call_socket_register_write", "_last_bytes_received",
             "_pack_remaining_length")

    def __init__(self, paho: Any) -> None:
        from paho.mqtt.client import MQTT_LOG_DEBUG, MQTTv5
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.reasoncodes import ReasonCode

        self.paho = paho
        self.puback = (ReasonCode(PacketTypes.PUBACK), Properties(PacketTypes.PUBACK))
        self.v5, self.debug = MQTTv5, MQTT_LOG_DEBUG
        self.plain_send = paho._sock_send  # bound methods of the class: paho's exception mapping
        self.plain_recv = paho._sock_recv
        self.plain_loop_read = paho.loop_read
        self.plain_puback = paho._handle_pubackcomp
        self.wsock: object = None  # the socket the credit belongs to
        self.credit = 0  # bytes of the packets queued next that a coalesced send already wrote
        self.rsock: object = None  # the socket the read buffer belongs to
        self.rbuf = b""
        self.rpos = 0
        # the packet id of a PUBACK -> True when it was one of ``publish``'s (then consumed)
        self.on_ack: Callable[[int], bool] | None = None

    @classmethod
    def attach(cls, paho: Any) -> _Wire | None:
        missing = [name for name in cls.NEEDS if not hasattr(paho, name)]
        if missing or not isinstance(getattr(paho, "_out_packet", None), deque) or any(
                name in vars(paho) for name in ("_sock_send", "_sock_recv", "loop_read")):
            _LOGGER.debug("paho internals %s not as expected: plain socket I/O", missing or "overridden")
            return None
        if getattr(paho, "_transport", "tcp") == "websockets":  # its wrapper frames each send()
            return None
        try:
            wire = cls(paho)
        except (ImportError, AttributeError, TypeError, ValueError) as err:  # paho moved a piece
            _LOGGER.debug("paho internals changed (%s): plain socket I/O", err)
            return None
        paho._sock_send = wire.send
        paho._sock_recv = wire.recv
        paho.loop_read = wire.loop_read
        paho._handle_pubackcomp = wire.handle_pubackcomp
        return wire

    def detach(self) -> None:
        """Back to paho's own methods, unless bytes are owed (credit or buffer): then the overrides
        stay with this client, which is discarded after its session anyway."""
        sock = self.paho._sock
        if (self.credit and self.wsock is sock) or (self.rpos < len(self.rbuf) and self.rsock is sock):
            return
        for name in ("_sock_send", "_sock_recv", "loop_read", "_handle_pubackcomp"):
            vars(self.paho).pop(name, None)

    def send(self, buf: bytes | bytearray) -> int:
        sock = self.paho._sock
        if self.credit:
            if sock is self.wsock:
                n = min(self.credit, len(buf))
                self.credit -= n
                return n
            self.credit = 0  # a new connection: the old one's credit means nothing
        data: bytes | bytearray = buf
        queued = self.paho._out_packet
        if queued and buf and buf[0] & 0xF0 != _DISCONNECT:
            parts, size = [buf], len(buf)
            for pkt in queued:  # paho's _OutPacket dicts, in the order paho will pop them
                if size >= WIRE_SEND_MAX:
                    break
                part = pkt["packet"][pkt["pos"]:] if pkt["pos"] else pkt["packet"]
                parts.append(part)
                size += len(part)
                if pkt["command"] & 0xF0 == _DISCONNECT:  # nothing after a DISCONNECT
                    break
            if len(parts) > 1:
                data = b"".join(parts)
        sent = self.plain_send(data)  # raises BlockingIOError (EAGAIN, SSL want) like paho's own
        first = min(sent, len(buf))
        self.credit, self.wsock = sent - first, sock
        return first

    def recv(self, bufsize: int) -> bytes:
        if self.rpos < len(self.rbuf):
            if self.rsock is self.paho._sock:
                start, self.rpos = self.rpos, min(self.rpos + bufsize, len(self.rbuf))
                return self.rbuf[start:self.rpos]
            self.rbuf, self.rpos = b"", 0  # a new connection
        data = self.plain_recv(max(bufsize, WIRE_RECV))
        _ack_now(self.paho._sock)  # every read acknowledged at once: see _ack_now
        if len(data) <= bufsize:
            return data
        self.rbuf, self.rpos, self.rsock = data, bufsize, self.paho._sock
        return data[:bufsize]

    def loop_read(self, max_packets: int = 1) -> Any:
        rc = self.plain_loop_read(max_packets)
        while rc == 0 and self.rpos < len(self.rbuf) and self.rsock is self.paho._sock:
            if self.on_ack is not None and not self.paho._in_packet["command"] and self._acks():
                continue
            rc = self.plain_loop_read(max_packets)  # each round consumes buffered bytes
        return rc

    def _acks(self) -> bool:
        """Consume the buffered PUBACKs of ``publish``'s messages that come next, between packets
        (paho's reader holds no partial one); True when the buffer was used up by them."""
        buf, pos, end, ack = self.rbuf, self.rpos, len(self.rbuf), self.on_ack
        assert ack is not None
        while pos + 4 <= end and buf[pos] == 0x40 and buf[pos + 1] == 2 and ack(buf[pos + 2] << 8 | buf[pos + 3]):
            pos += 4
        if pos != self.rpos:
            self.rpos = pos
            self.paho._last_bytes_received = time.monotonic()  # paho's keepalive clock
        return pos >= end

    def publish(self, topic: str, payload: bytes, retain: bool) -> int | None:
        """Queue one QoS 1 PUBLISH; return its packet id (None: not connected). MQTT 3.1.1 only:
        the caller checks ``fast``."""
        paho = self.paho
        if paho._sock is None:
            return None
        name = topic.encode()
        # paho's publish() checks, inline (its _raise_for_invalid_topic call costs 0.6 us a message)
        if not name or b"+" in name or b"#" in name or len(name) > 65535:
            raise ValueError(f"invalid topic to publish: {topic!r}")
        mid = paho._mid_generate()
        header = paho._pack_remaining_length(bytearray(b"\x33" if retain else b"\x32"), len(name) + len(payload) + 4)
        packet = b"".join((header, len(name).to_bytes(2, "big"), name, mid.to_bytes(2, "big"), payload))
        paho._out_packet.append({"command": 0x30, "mid": mid, "qos": 1, "pos": 0, "to_process": len(packet),
                                 "packet": packet, "info": None})
        paho._call_socket_register_write()
        return mid

    @property
    def fast(self) -> bool:
        """Whether ``publish`` may be used: an MQTT 3.1.1 (or 3.1) connection."""
        return self.paho._protocol != self.v5

    def handle_pubackcomp(self, cmd: str) -> Any:
        paho = self.paho
        packet = paho._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2 or paho._protocol == self.v5:
            return self.plain_puback(cmd)
        mid = packet[0] << 8 | packet[1]
        paho._easy_log(self.debug, "Received PUBACK (Mid: %d)", mid)  # as paho logs it
        if self.on_ack is not None and self.on_ack(mid):
            return 0
        with paho._out_message_mutex:
            if mid in paho._out_messages:
                return paho._do_on_publish(mid, *self.puback)
        return 0  # MQTT_ERR_SUCCESS: an id paho no longer waits for, as paho ignores it


def client_options(cfg: MqttConfig) -> dict[str, object]:
    """The aiomqtt.Client arguments every connection of the bridge shares."""
    return {"hostname": cfg.host, "port": cfg.port, "username": cfg.username, "password": cfg.password,
            "keepalive": cfg.keepalive, "tls_context": tls_context(cfg), "timeout": 30}


async def reconnect_forever(session: Callable[[], Awaitable[None]], failed: Callable[[aiomqtt.MqttError], None],
                            ended: Callable[[], None]) -> None:
    """Run ``session`` again and again, with capped exponential backoff and jitter after each end,
    until cancelled; ``failed`` hears of each broker error, ``ended`` runs after every session."""
    delay = BACKOFF[0]
    while True:
        try:
            await session()
            delay = BACKOFF[0]
        except aiomqtt.MqttError as err:
            failed(err)
        finally:
            ended()
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, BACKOFF[1])


class _Packed(bytes):
    """A retained payload kept zlib-compressed in memory."""


def _pack(data: bytes) -> bytes:
    return _Packed(zlib.compress(data, 1)) if len(data) > PACK_OVER else data


def _unpack(stored: bytes) -> bytes:
    return zlib.decompress(stored) if type(stored) is _Packed else stored


def broker_problem(cfg: MqttConfig, err: Exception) -> str:
    """One readable line for a broker failure, with what to do."""
    text = str(err)
    lowered = text.lower()
    where = f"MQTT broker {cfg.host}:{cfg.port}"
    if "not authori" in lowered or "bad user" in lowered or "password" in lowered:
        return f"{where} refused the login ({text}): check mqtt.username and mqtt.password"
    if "refused" in lowered or "errno 111" in lowered:
        return f"{where} refused the connection: is the broker running, and are mqtt.host/mqtt.port right?"
    if "certificate" in lowered or "ssl" in lowered:
        return f"{where}: TLS failed ({text}): check mqtt.ca_file (or the broker's certificate)"
    if "name or service" in lowered or "nodename" in lowered:
        return f"{where}: unknown host: check mqtt.host"
    return f"{where} unavailable ({text})"


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    if not cfg.tls:
        return None
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.certfile:
        ctx.load_cert_chain(cfg.certfile, cfg.keyfile)
    if cfg.tls_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class MqttLink:
    """Desired retained state, a transient queue, and the task that keeps the broker in step."""

    def __init__(self, cfg: MqttConfig, *, will_topic: str, subscriptions: list[str],
                 on_message: MessageHandler, on_connect: Callable[[], None] | None = None,
                 discovery_filters: list[str] | None = None,
                 owns_discovery: Callable[[str, bytes], bool] | None = None) -> None:
        self.cfg = cfg
        self.will_topic = will_topic
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_connect = on_connect
        self.discovery_filters = discovery_filters or []
        self.owns_discovery = owns_discovery
        self.retained: dict[str, bytes] = {}  # topic -> desired payload (large ones packed)
        # topics to send, in order, each once: OrderedDict, whose popitem(last=False) is O(1) (taking a
        # plain dict's first key skips every slot deleted before it: 5-12 us a message at 10-40k)
        self._dirty_discovery: OrderedDict[str, None] = OrderedDict()  # first: entities before messages
        self._dirty: OrderedDict[str, None] = OrderedDict()
        self._transient: deque[tuple[str, bytes, int, Done]] = deque()
        # acknowledged messages (stored events): one at a time, so that a crash can repeat at most the
        # one in flight; a window of them when an event ledger tells after a crash which ones the
        # broker took (``acked_barrier``, ``acked_window``)
        self._acked: deque[tuple[str, bytes, int, Callable[[], None], Wanted]] = deque()
        self._acked_wake = asyncio.Event()
        # awaited on every connection before its first acknowledged message (the event ledger's sync)
        self.acked_barrier: Callable[[], Awaitable[object]] | None = None
        self.acked_window = 1
        self._acked_out: dict[int, tuple[str, bytes, int, Callable[[], None], Wanted]] = {}  # in flight
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # set when the backlog falls to LOW_WATER
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.stats = {"published": 0, "connects": 0}
        self._discovery_topics: set[str] = set()

    # -- what callers use ---------------------------------------------------------------------
    def set_retained(self, topic: str, payload: bytes | str, *, discovery: bool = False, force: bool = False) -> None:
        """Make ``topic`` hold ``payload`` (retained). Empty payload clears the topic."""
        data = _pack(payload.encode() if isinstance(payload, str) else payload)
        if discovery:
            self._discovery_topics.add(topic)
        old = self.retained.get(topic)
        if not force and old == data and type(old) is type(data):
            return
        self.retained[topic] = data
        self._mark(topic)

    def payload(self, topic: str) -> bytes | None:
        """What ``topic`` should hold, or None if the link does not own it."""
        stored = self.retained.get(topic)
        return None if stored is None else _unpack(stored)

    def _mark(self, topic: str) -> None:
        (self._dirty_discovery if topic in self._discovery_topics else self._dirty)[topic] = None
        self._wake.set()

    def clear(self, topic: str) -> None:
        self.set_retained(topic, b"")

    def publish(self, topic: str, payload: bytes | str, qos: int | None = None,
                on_done: Callable[[], None] | None = None, wanted: Wanted = None) -> None:
        """Queue a non-retained message; ``on_done`` runs once the broker acknowledged it. Such a
        message is dropped unsent if ``wanted`` says False when its turn (or a resend) comes."""
        data = payload.encode() if isinstance(payload, str) else payload
        qos = self.cfg.qos if qos is None else qos
        if on_done is None:
            self._transient.append((topic, data, qos, None))
            self._wake.set()
        else:
            self._acked.append((topic, data, max(qos, 1), on_done, wanted))
            self._acked_wake.set()

    def republish(self, predicate: Callable[[str], bool]) -> None:
        """Send again every retained topic matching ``predicate`` (after Home Assistant's birth)."""
        for topic in self.retained:
            if predicate(topic):
                self._mark(topic)
        self._wake.set()

    # -- the connection -------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, reconnect with capped backoff and jitter, forever (until cancelled)."""
        failing = False

        def failed(err: aiomqtt.MqttError) -> None:
            nonlocal failing
            if self.connected.is_set() or not failing:  # once per outage, not once per attempt
                _LOGGER.warning("%s; retrying with backoff", broker_problem(self.cfg, err))
            else:
                _LOGGER.debug("%s", broker_problem(self.cfg, err))
            failing = True

        def ended() -> None:
            self.connected.clear()
            self._client = None

        await reconnect_forever(self._session, failed, ended)

    async def _session(self) -> None:
        cfg = self.cfg
        client = aiomqtt.Client(
            identifier=cfg.client_id, will=aiomqtt.Will(self.will_topic, b"offline", qos=1, retain=True),
            max_inflight_messages=WINDOW, **client_options(cfg))
        client.pending_calls_threshold = WINDOW * 4
        async with client:
            self._client = client
            self.stats["connects"] += 1
            _LOGGER.info("Connected to MQTT broker %s:%s", cfg.host, cfg.port)
            self.set_retained(self.will_topic, b"online", force=True)
            await self._reconcile(client)
            for topic in list(self.retained):
                if topic not in self._discovery_topics:
                    self._dirty[topic] = None
            for sub in self.subscriptions:
                await client.subscribe(sub, qos=1)
            self.connected.set()
            if self.on_connect:
                self.on_connect()
            sender = asyncio.gather(self._sender(client), self._acked_sender(client))
            try:
                async for message in client.messages:
                    try:
                        result = self.on_message(str(message.topic), bytes(message.payload or b""),
                                                 bool(message.retain))
                        if asyncio.iscoroutine(result):
                            await result
                    except Exception:  # a bad message must never take the link down
                        _LOGGER.exception("Error handling MQTT message on %s", message.topic)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)

    async def _reconcile(self, client: aiomqtt.Client) -> None:
        """Compare our discovery with what the broker retains: skip equal, clear stale ones."""
        if not self.discovery_filters:
            self._dirty_discovery.update(dict.fromkeys(self._discovery_topics))
            return
        seen: dict[str, bytes] = {}
        for flt in self.discovery_filters:
            await client.subscribe(flt, qos=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONCILE_MAX
        messages = client.messages.__aiter__()
        while loop.time() < deadline:
            try:
                message = await asyncio.wait_for(messages.__anext__(), RECONCILE_QUIET)
            except asyncio.TimeoutError:
                break
            if message.retain:
                seen[str(message.topic)] = _pack(bytes(message.payload or b""))
        for flt in self.discovery_filters:
            await client.unsubscribe(flt)
        stale = 0
        for topic, payload in seen.items():
            if topic in self.retained:
                continue
            if payload and self.owns_discovery and self.owns_discovery(topic, _unpack(payload)):
                self.retained[topic] = b""
                self._discovery_topics.add(topic)
                stale += 1
        changed = 0
        for topic in self._discovery_topics:
            if seen.get(topic, b"") != self.retained.get(topic):
                self._dirty_discovery[topic] = None
                changed += 1
            else:
                self._dirty_discovery.pop(topic, None)
        _LOGGER.info("Discovery: %d retained on the broker, %d to publish, %d stale to clear",
                     len(seen), changed, stale)

    async def _acked_sender(self, client: aiomqtt.Client) -> None:
        """Send acknowledged messages in order, at most ``acked_window`` unacknowledged; ``on_done``
        after each PUBACK. Those unacknowledged when the connection ends go first on the next one."""
        barrier = self.acked_barrier
        inflight = self._acked_out = {}  # by send order
        free = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def send(seq: int) -> None:
            topic, payload, qos, on_done, _ = inflight[seq]
            try:
                await client.publish(topic, payload, qos=qos, retain=False)
            except aiomqtt.MqttError:  # the session ends; the message stays for the next one
                return
            del inflight[seq]
            self.stats["published"] += 1
            on_done()
            free.set()

        try:
            for seq in count():
                while not self._acked:
                    self._acked_wake.clear()
                    await self._acked_wake.wait()
                if barrier is not None:  # once per connection, before anything is (re)sent
                    await barrier()
                    barrier = None
                while len(inflight) >= self.acked_window:
                    free.clear()
                    await free.wait()
                entry = self._acked.popleft()
                if entry[4] is not None and not entry[4]():
                    continue
                inflight[seq] = entry
                task = asyncio.create_task(send(seq))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            self._acked.extendleft(inflight[seq] for seq in sorted(inflight, reverse=True))
            inflight.clear()

    async def _sender(self, client: aiomqtt.Client) -> None:
        """Keep up to ``WINDOW`` publishes in flight, discovery first, then transient messages, then
        retained ones. Publishes go straight to paho (aiomqtt drives its socket on this loop), with
        the window counted down by paho's ``on_publish``: no task, event or timer per message."""
        paho = client._client  # noqa: SLF001 - aiomqtt exposes no non-awaiting publish
        inflight: dict[int, tuple[str, bytes, int, bool, Done]] = {}
        free = asyncio.Event()
        chained = paho.on_publish  # aiomqtt's own, for the awaited publishes of the acked lane

        def acked(mid: int) -> bool:
            entry = inflight.pop(mid, None)
            if entry is None:
                return False
            self._sent(entry[0], entry[1], entry[3], entry[4])
            free.set()
            if not inflight:
                _ack_now(paho.socket())
            return True

        def on_publish(paho_client, userdata, mid, *rest) -> None:
            if not acked(mid):
                chained(paho_client, userdata, mid, *rest)

        paho.on_publish = on_publish
        wire = _Wire.attach(paho)  # fewer system calls per message; None: paho's plain path
        fast = wire is not None and wire.fast  # QoS 1 without paho's per-message bookkeeping
        if fast:
            wire.on_ack = acked
        try:
            while True:
                while not (self._dirty_discovery or self._dirty or self._transient):
                    self._wake.clear()
                    await self._wake.wait()
                while len(inflight) >= WINDOW:
                    free.clear()
                    await free.wait()
                entry = self._next()
                if entry is None:
                    continue
                topic, payload, qos, retain, on_done = entry
                if fast and qos == 1:
                    mid = wire.publish(topic, payload, retain)  # type: ignore[union-attr]
                    info = None
                else:
                    info = paho.publish(topic, payload, qos, retain)
                    mid = info.mid if info.rc == 0 else None
                if mid is None:  # not connected: aiomqtt ends the session; keep the message
                    self._requeue(entry)
                    await asyncio.sleep(0.1)
                elif info is not None and info.is_published():
                    self._sent(topic, payload, retain, on_done)
                else:
                    inflight[mid] = entry
                if self.backlog <= LOW_WATER:
                    self._room.set()
        finally:
            paho.on_publish = chained
            if wire is not None:
                wire.on_ack = None
                wire.detach()
            for entry in inflight.values():  # unacknowledged: send again on the next connection
                self._requeue(entry)

    def _next(self) -> tuple[str, bytes, int, bool, Done] | None:
        dirty = self._dirty_discovery or (None if self._transient else self._dirty)
        if dirty:
            topic = dirty.popitem(last=False)[0]
            return topic, _unpack(self.retained.get(topic, b"")), self.cfg.qos, True, None
        if self._transient:
            topic, payload, qos, on_done = self._transient.popleft()
            return topic, payload, qos, False, on_done
        return None

    def _sent(self, topic: str, payload: bytes, retain: bool, on_done: Done) -> None:
        self.stats["published"] += 1
        if on_done:
            on_done()
        if retain and not payload and self.retained.get(topic) == b"":
            # a cleared topic is forgotten once the broker has it
            del self.retained[topic]
            self._discovery_topics.discard(topic)

    def _requeue(self, entry: tuple[str, bytes, int, bool, Done]) -> None:
        topic, payload, qos, retain, on_done = entry
        if retain:
            self._mark(topic)
        else:
            self._transient.appendleft((topic, payload, qos, on_done))

    async def wait_for_room(self, deadline: float) -> None:
        """Back-pressure for producers: wait until at most ``LOW_WATER`` messages are waiting, or the
        loop time ``deadline``. No wait while disconnected (the backlog then only coalesces)."""
        loop = asyncio.get_running_loop()
        while self.connected.is_set() and self.backlog > LOW_WATER and loop.time() < deadline:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                return

    @property
    def backlog(self) -> int:
        """Messages waiting in the fast lanes (retained and transient)."""
        return len(self._dirty_discovery) + len(self._dirty) + len(self._transient)

    @property
    def pending(self) -> int:
        """Messages waiting to be sent."""
        return (len(self._dirty_discovery) + len(self._dirty) + len(self._transient) + len(self._acked)
                + len(self._acked_out))

    async def flush(self, timeout: float = 5.0, *, discovery_only: bool = False) -> bool:
        """Wait until nothing (or no discovery) is left to send, or ``timeout``. True when drained.
        Waiting for discovery also ends when the link is down (nothing goes out then)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout

        def left() -> bool:
            return bool(self._dirty_discovery) if discovery_only else bool(self.pending)

        def wait_on() -> bool:
            if discovery_only:
                return left() and self.connected.is_set()
            return left() or not self.connected.is_set()

        while wait_on() and loop.time() < end:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        return not left()

    async def publish_offline_and_close(self) -> None:
        """Clean shutdown: publish ``offline`` on the will topic and disconnect."""
        client = self._client
        if client is None:
            return
        self.retained[self.will_topic] = b"offline"
        try:
            await self.flush(3.0)
            await client.publish(self.will_topic, b"offline", qos=1, retain=True, timeout=3)
        except (aiomqtt.MqttError, asyncio.TimeoutError):
            pass
