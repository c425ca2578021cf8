"""The sender's socket I/O (``fleetbridge.mqtt._Wire``: coalesced sends, buffered reads, cheap PUBACKs,
QoS 1 publishes without paho's bookkeeping) against a real mosquitto: order and completeness with a
window in flight, short sends and EAGAIN, a connection reset in the middle of a write, TLS, and the
plain path when paho's internals differ; offline: the exact bytes, and PUBACKs taken from the buffer."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
from pathlib import Path
from typing import Any

import pytest

from fleetbridge import mqtt
from fleetbridge.config import MqttConfig
from fleetbridge.mqtt import WINDOW, MqttLink

from .test_tls import MQTT_PASSWORD, MQTT_USER, pki, tls_broker  # noqa: F401 - fixtures used below

WIRED = ("_sock_send", "_sock_recv", "loop_read", "_handle_pubackcomp")


class Received:
    """What the link itself receives on its subscriptions (incoming PUBLISH interleaved with PUBACKs)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        self.messages.append((topic, payload))


async def _start(cfg: MqttConfig, subscriptions: list[str] | None = None,
                 on_message: Any = None) -> tuple[MqttLink, asyncio.Task[None]]:
    link = MqttLink(cfg, will_topic=f"{cfg.client_id}/state", subscriptions=subscriptions or [],
                    on_message=on_message or (lambda *a: None))
    task = asyncio.create_task(link.run())
    await asyncio.wait_for(link.connected.wait(), 10)
    return link, task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.1 s (not on every message: it may decode them all)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _paho(link: MqttLink) -> Any:
    assert link._client is not None
    return link._client._client


async def _wired(link: MqttLink) -> Any:
    """The link's paho client, once the sender has put the wire on it."""
    await _until(lambda: link._client is not None and all(n in vars(_paho(link)) for n in WIRED), 5,
                 "the wire on the paho client")
    return _paho(link)


def _sequences(messages: list[tuple[Any, ...]], prefix: str) -> dict[str, list[int]]:
    """Per topic under ``prefix``: the ``seq`` of each message, in arrival order."""
    out: dict[str, list[int]] = {}
    for topic, payload, *_ in messages:
        if topic.startswith(prefix):
            out.setdefault(topic, []).append(json.loads(payload)["seq"])
    return out


def _stream(link: MqttLink, prefix: str, n: int, topics: int, pad: int = 200) -> None:
    filler = "x" * pad
    for i in range(n):
        link.publish(f"{prefix}{i % topics}", json.dumps({"seq": i, "pad": filler}).encode())


@pytest.mark.parametrize("qos", [1, 0])
async def test_every_message_arrives_in_order_per_topic_with_a_window_in_flight(
        broker: Any, unique: str, recorder_factory: Any, qos: int) -> None:
    prefix, n, topics = f"mw{unique}/t", 6000, 25
    rec = await recorder_factory(broker.port, [f"mw{unique}/#"])
    own = Received()
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, client_id=f"mw-{unique}", qos=qos)
    link, task = await _start(cfg, [f"mw{unique}/#"], own)
    try:
        paho = await _wired(link)
        await asyncio.sleep(0.2)  # the will's "online" is out
        through_paho: list[str] = []
        plain_publish = paho.publish
        paho.publish = lambda topic, *a, **kw: (through_paho.append(topic), plain_publish(topic, *a, **kw))[1]
        _stream(link, prefix, n, topics)
        for i in range(500):  # the retained lane as well
            link.set_retained(f"mw{unique}/r{i}", json.dumps({"seq": i}).encode())
        expected = {f"{prefix}{k}": list(range(k, n, topics)) for k in range(topics)}
        await _until(lambda: _sequences(rec.messages, prefix) == expected, 60, "every message, in order, once")
        await _until(lambda: sum(t.startswith(f"mw{unique}/r") for t in rec.latest) == 500, 15,
                     "every retained topic")
        # the link read its own messages back through the buffered reads, between its PUBACKs
        await _until(lambda: _sequences(own.messages, prefix) == expected, 30, "the link's own copies")
        await _until(lambda: link.stats["published"] >= n + 500 + 1, 10, "every publish counted")
        assert link.stats["published"] == n + 500 + 1  # + the will's "online"
        # QoS 1 goes through the wire's own publish, QoS 0 through paho's
        assert len(through_paho) == (0 if qos else n + 500)
        assert not paho._out_messages
    finally:
        await _stop(task)


class ChoppySocket:
    """A real socket that sends at most a few hundred bytes at a time, refuses every third send
    (EAGAIN), reads in small pieces, and (``reset_after``) drops the connection in mid-write."""

    def __init__(self, sock: socket.socket, reset_after: int | None = None) -> None:
        self._sock = sock
        self._rng = random.Random(7)
        self.reset_after = reset_after
        self.calls = self.sent = 0
        self.offered: list[int] = []
        self.short = 0

    def send(self, data: bytes) -> int:
        self.calls += 1
        if self.calls % 3 == 0:
            raise BlockingIOError(11, "try again")
        self.offered.append(len(data))
        n = self._rng.randint(1, 700)
        if self.reset_after is not None and self.sent + n >= self.reset_after:
            self._sock.send(data[:max(1, self.reset_after - self.sent)])  # a packet cut in two
            self._sock.shutdown(socket.SHUT_RDWR)
            raise ConnectionResetError(104, "connection reset (test)")
        sent = self._sock.send(data[:n])
        self.sent += sent
        self.short += sent < len(data)
        return sent

    def recv(self, bufsize: int) -> bytes:
        return self._sock.recv(min(bufsize, self._rng.choice((1, 2, 3, 5, 64, 700))))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


async def test_short_sends_eagain_and_small_reads_keep_the_stream_intact(
        broker: Any, unique: str, recorder_factory: Any) -> None:
    prefix, n, topics = f"mc{unique}/t", 2000, 10
    rec = await recorder_factory(broker.port, [f"mc{unique}/#"])
    own = Received()
    link, task = await _start(MqttConfig(host="127.0.0.1", port=broker.port, client_id=f"mc-{unique}"),
                              [f"mc{unique}/#"], own)
    try:
        paho = await _wired(link)
        await asyncio.sleep(0.2)  # the will's "online" is out: nothing owed on the real socket
        choppy = ChoppySocket(paho._sock)
        paho._sock = choppy
        paho._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # no Nagle: chopped sends would otherwise each wait for the broker's delayed ACK
        paho._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _stream(link, prefix, n, topics, pad=1000)
        expected = {f"{prefix}{k}": list(range(k, n, topics)) for k in range(topics)}
        await _until(lambda: _sequences(rec.messages, prefix) == expected, 60, "every message, in order, once")
        await _until(lambda: _sequences(own.messages, prefix) == expected, 30, "the link's own copies")
        assert link._client is not None and paho is _paho(link)  # one connection throughout
        assert max(choppy.offered) > 2000  # several packets went into one send
        assert choppy.short > 100  # and most sends were short
    finally:
        await _stop(task)


async def test_a_connection_reset_in_mid_write_requeues_and_loses_nothing(
        broker: Any, unique: str, recorder_factory: Any) -> None:
    prefix, n, topics = f"md{unique}/t", 4000, 40
    rec = await recorder_factory(broker.port, [f"md{unique}/#"])
    link, task = await _start(MqttConfig(host="127.0.0.1", port=broker.port, client_id=f"md-{unique}"))
    try:
        paho = await _wired(link)
        await asyncio.sleep(0.2)
        choppy = ChoppySocket(paho._sock, reset_after=150_000)
        paho._sock = choppy
        _stream(link, prefix, n, topics, pad=300)
        for i in range(300):
            link.set_retained(f"md{unique}/r{i}", json.dumps({"seq": i, "v": 1}).encode())
        for i in range(300):
            link.set_retained(f"md{unique}/r{i}", json.dumps({"seq": i, "v": 2}).encode())
        await _until(lambda: link.stats["connects"] >= 2, 20, "the reconnect")
        assert choppy.sent < 150_000 + 700  # the reset did happen in the middle of the stream
        await _until(
            lambda: {s for seqs in _sequences(rec.messages, prefix).values() for s in seqs} == set(range(n)),
            60, "every transient message at least once")
        await _until(
            lambda: all(json.loads(rec.latest.get(f"md{unique}/r{i}", b"{}")).get("v") == 2 for i in range(300)),
            30, "every retained topic's latest value")
        await _until(lambda: not link.pending, 10, "an empty queue")
    finally:
        await _stop(task)


async def test_tls_link_with_the_wire_and_small_send_buffer(tls_broker: int, pki: dict[str, Path],  # noqa: F811
                                                            unique: str) -> None:
    prefix, n, topics = f"mt{unique}/t", 1500, 15
    own = Received()
    cfg = MqttConfig(host="127.0.0.1", port=tls_broker, tls=True, ca_file=str(pki["ca"]), username=MQTT_USER,
                     password=MQTT_PASSWORD, client_id=f"mt-{unique}")
    link, task = await _start(cfg, [f"mt{unique}/#"], own)
    try:
        paho = await _wired(link)
        assert hasattr(paho._sock, "pending")  # an ssl.SSLSocket
        paho._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        _stream(link, prefix, n, topics, pad=3000)
        expected = {f"{prefix}{k}": list(range(k, n, topics)) for k in range(topics)}
        await _until(lambda: _sequences(own.messages, prefix) == expected, 60, "every message over TLS, in order")
        await _until(lambda: link.stats["published"] >= n + 1, 10, "every publish acknowledged")
    finally:
        await _stop(task)


async def test_missing_paho_internals_fall_back_to_the_plain_path(
        broker: Any, unique: str, recorder_factory: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fleetbridge.mqtt")
    monkeypatch.setattr(mqtt._Wire, "NEEDS", (*mqtt._Wire.NEEDS, "_a_name_paho_never_had"))
    prefix, n = f"mf{unique}/t", 3 * WINDOW + 5
    rec = await recorder_factory(broker.port, [f"mf{unique}/#"])
    link, task = await _start(MqttConfig(host="127.0.0.1", port=broker.port, client_id=f"mf-{unique}"))
    try:
        _stream(link, prefix, n, 1)
        await _until(lambda: _sequences(rec.messages, prefix) == {f"{prefix}0": list(range(n))}, 15,
                     "every message on the plain path")
        assert not any(name in vars(_paho(link)) for name in WIRED)
        assert any("plain socket I/O" in r.getMessage() for r in caplog.records)
    finally:
        await _stop(task)


class FakeSock:
    """What paho's own ``_sock_send``/``_sock_recv`` call: accepts at most ``limits`` bytes per send
    (0: EAGAIN) and serves ``incoming`` in reads of at most ``chunk`` bytes."""

    def __init__(self, limits: list[int], incoming: bytes = b"", chunk: int = 1 << 20) -> None:
        self.limits = limits
        self.wire = bytearray()
        self.sends: list[int] = []
        self.incoming = bytearray(incoming)
        self.chunk = chunk
        self.recvs = 0

    def send(self, data: bytes) -> int:
        self.sends.append(len(data))
        limit = self.limits.pop(0) if self.limits else len(data)
        if limit == 0:
            raise BlockingIOError(11, "try again")
        n = min(limit, len(data))
        self.wire += data[:n]
        return n

    def close(self) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def recv(self, bufsize: int) -> bytes:
        self.recvs += 1
        if not self.incoming:
            raise BlockingIOError(11, "try again")
        n = min(bufsize, self.chunk, len(self.incoming))
        out = bytes(self.incoming[:n])
        del self.incoming[:n]
        return out


def _offline_paho(sock: FakeSock) -> Any:
    import paho.mqtt.client as paho_mqtt

    paho = paho_mqtt.Client(paho_mqtt.CallbackAPIVersion.VERSION2)
    paho.max_inflight_messages_set(0)  # every QoS 1 message goes out (no PUBACKs come here)
    paho._sock = sock
    paho._state = paho_mqtt._ConnectionState.MQTT_CS_CONNECTED
    return paho


@pytest.mark.parametrize("seed", range(8))
def test_coalesced_sends_put_every_byte_on_the_wire_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    plan = [(f"t/{i % 7}", bytes([i % 251]) * rng.choice((0, 10, 300, 3000, 20000)), i % 2, rng.random() < 0.3)
            for i in range(300)]
    sock = FakeSock([rng.choice((0, 1, 3, 40, 333, 5000, 1 << 20)) for _ in range(400)])
    paho, reference = _offline_paho(sock), _offline_paho(FakeSock([]))  # reference: plain paho, no limits
    wire = mqtt._Wire.attach(paho)
    assert wire is not None
    done: list[int] = []
    paho.on_publish = lambda c, u, mid, *rest: done.append(mid)
    for client in (paho, reference):
        for topic, payload, qos, kick in plan:  # paho writes from publish() itself (no event loop)
            assert client.publish(topic, payload, qos=qos).rc == 0
            if kick:
                client.loop_write()
        while client.want_write():
            client.loop_write()
    # the bytes on the wire are exactly plain paho's, each once and in order, through short sends
    # and EAGAIN; several packets went out in one send; each QoS 0 message completed once
    assert bytes(sock.wire) == bytes(reference._sock.wire)
    assert max(sock.sends) > 20000 and len(sock.sends) < len(reference._sock.sends) + 400
    assert done == [i + 1 for i in range(0, 300, 2)]
    assert wire.credit == 0


def test_credit_and_read_buffer_belong_to_one_socket() -> None:
    old = FakeSock([], incoming=b"\xd0\x00" * 3)
    paho = _offline_paho(old)
    wire = mqtt._Wire.attach(paho)
    assert wire is not None
    assert paho._sock_recv(1) == b"\xd0" and wire.rpos < len(wire.rbuf)  # one read, the rest buffered
    wire.credit, wire.wsock = 7, old  # bytes owed to the old connection
    new = FakeSock([], incoming=b"\xd0\x00")
    paho._sock = new
    assert paho._sock_send(b"abc") == 3 and bytes(new.wire) == b"abc"  # a real send, not credit
    assert wire.credit == 0
    assert paho._sock_recv(2) == b"\xd0\x00" and new.recvs == 1  # the new socket's bytes, not old ones


def test_loop_read_drains_what_the_buffer_holds() -> None:
    sock = FakeSock([], incoming=b"\xd0\x00" * 50)  # fifty PINGRESPs arrive in one read
    paho = _offline_paho(sock)
    wire = mqtt._Wire.attach(paho)
    assert wire is not None
    paho._ping_t = 1.0
    assert paho.loop_read() == 0  # paho's own loop_read reads one packet per call when nothing waits
    assert wire.rpos == len(wire.rbuf) == 100 and paho._ping_t == 0
    assert sock.recvs <= 2  # one read of all fifty (and one EAGAIN)


def test_nothing_is_sent_after_a_disconnect() -> None:
    sock = FakeSock([0, 0])  # two sends refused (EAGAIN): all three packets wait together
    paho = _offline_paho(sock)
    assert mqtt._Wire.attach(paho) is not None
    paho.publish("t/a", b"before", qos=1)
    paho.disconnect()
    paho.publish("t/b", b"after", qos=1)
    while paho._sock is not None and paho.want_write():
        paho.loop_write()
    assert bytes(sock.wire).endswith(b"before\xe0\x00")  # DISCONNECT last, "after" never sent


@pytest.mark.parametrize("retain", [True, False])
def test_wire_publish_writes_the_bytes_paho_would(retain: bool) -> None:
    # payload sizes on each side of the 1-, 2- and 3-byte remaining-length boundaries
    sizes = (0, 1, 100, 127 - 12, 128 - 12, 16383 - 12, 16384 - 12, 70_000, 2_097_151 - 12, 2_097_152 - 12)
    plan = [(f"fleetbridge/acc/dev{i}/{'x' * (i * 7 % 50)}state", bytes([i % 251]) * size)
            for i, size in enumerate(sizes)]
    sock, ref_sock = FakeSock([]), FakeSock([])
    paho, reference = _offline_paho(sock), _offline_paho(ref_sock)
    wire = mqtt._Wire.attach(paho)
    assert wire is not None and wire.fast
    mids = [wire.publish(topic, payload, retain) for topic, payload in plan]
    ref_mids = [reference.publish(topic, payload, qos=1, retain=retain).mid for topic, payload in plan]
    for client in (paho, reference):
        while client.want_write():
            client.loop_write()
    assert mids == ref_mids == list(range(1, len(plan) + 1))  # paho's own packet ids
    assert bytes(sock.wire) == bytes(ref_sock.wire)
    assert not paho._out_messages  # paho keeps no record of them
    with pytest.raises(ValueError):
        wire.publish("fleetbridge/+/state", b"{}", retain)
    paho._sock = None
    assert wire.publish("fleetbridge/a/state", b"{}", retain) is None  # not connected


def test_pubacks_in_the_buffer_go_to_on_ack_and_the_rest_to_paho() -> None:
    def puback(mid: int) -> bytes:
        return bytes((0x40, 2, mid >> 8, mid & 0xFF))

    ours = list(range(1, 40)) + [300, 301]
    incoming = (b"".join(puback(m) for m in ours[:20]) + b"\xd0\x00"  # a PINGRESP in between
                + b"".join(puback(m) for m in ours[20:39]) + puback(9000)  # 9000: paho's own
                + b"".join(puback(m) for m in ours[39:]))
    sock = FakeSock([], incoming=incoming)
    paho = _offline_paho(sock)
    wire = mqtt._Wire.attach(paho)
    assert wire is not None
    acked: list[int] = []
    wire.on_ack = lambda mid: mid in ours and not acked.append(mid)
    paho._last_mid = 8999
    info = paho.publish("t/paho", b"x", qos=1)  # a message paho itself waits for
    assert info.mid == 9000
    done: list[int] = []
    paho.on_publish = lambda c, u, mid, *rest: done.append(mid)
    paho._ping_t = 1.0
    handled: list[int] = []
    plain_handle = paho._packet_handle
    paho._packet_handle = lambda: (handled.append(paho._in_packet["command"]), plain_handle())[1]
    while sock.incoming or wire.rpos < len(wire.rbuf):
        assert paho.loop_read() == 0
    assert acked == ours  # every one of ours once, in order
    assert len(handled) <= 5  # paho parsed the PINGRESP, its own PUBACK and a first one per read only
    assert done == [9000] and not paho._out_messages  # paho's own PUBACK took paho's path
    assert paho._ping_t == 0  # the PINGRESP was handled by paho
    assert sock.recvs <= 3


def test_wire_publish_is_not_used_on_mqtt5() -> None:
    import paho.mqtt.client as paho_mqtt

    paho = paho_mqtt.Client(paho_mqtt.CallbackAPIVersion.VERSION2, protocol=paho_mqtt.MQTTv5)
    wire = mqtt._Wire.attach(paho)
    assert wire is not None and not wire.fast
