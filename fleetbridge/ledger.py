"""Exactly-once events across a kill: the broker's own record of what it accepted.

The bridge keeps each event in its outbox until the broker acknowledges it. A kill in the instant
between the broker taking an event and the bridge reading the PUBACK would leave the event in the
outbox, to be sent again after the restart: a duplicate. The ledger closes that gap. It is a second
MQTT connection with a persistent session (``clean_session`` false, client id ``<client_id>-ledger``)
subscribed to the bridge's own event topics, so the broker hands it every event it accepted, and
hands again, after a restart, every one it had not seen the ledger acknowledge. The ledger removes
each from the outbox *before* acknowledging it (paho sends the PUBACK after ``on_message`` returns).

``sync()`` sends a marker to the ledger itself and waits for it: once it is back, every event the
broker accepted before has been seen, and the outbox holds exactly what the broker never took. The
link calls it before the first event of every connection. When the broker keeps no session for the
ledger (first start, a broker restarted without persistence) or the ledger cannot subscribe (an
ACL), nothing tells what was accepted earlier: what is left in the outbox is sent (at least once).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import aiomqtt

from .config import MqttConfig
from .mqtt import broker_problem, client_options, reconnect_forever

_LOGGER = logging.getLogger(__name__)

SYNC_TIMEOUT = 10.0  # seconds a sync may take before events go out without it

Seen = Callable[[str, bytes], None]  # topic, payload of an event the broker accepted


class EventLedger:
    """The ledger connection; ``run()`` keeps it up, ``sync()`` proves it current."""

    def __init__(self, cfg: MqttConfig, *, events: str, marker: str, on_seen: Seen) -> None:
        self.cfg = cfg
        self.events = events  # topic filter of the bridge's events
        self.marker = marker
        self.on_seen = on_seen
        self.status = "connecting"
        self._client: aiomqtt.Client | None = None
        self._waiting: dict[bytes, asyncio.Future[None]] = {}
        self._ready = asyncio.Event()  # subscribed on this connection

    async def run(self) -> None:
        def failed(err: aiomqtt.MqttError) -> None:
            if self.status != "offline":
                _LOGGER.debug("Event ledger: %s", broker_problem(self.cfg, err))
            self.status = "offline"

        def ended() -> None:
            self._client = None
            self._ready.clear()

        await reconnect_forever(self._session, failed, ended)

    async def _session(self) -> None:
        cfg = self.cfg
        client = aiomqtt.Client(identifier=f"{cfg.client_id}-ledger", clean_session=False, **client_options(cfg))
        paho = client._client  # noqa: SLF001 - the ack must wait for the store: paho's own callbacks
        connected = paho.on_connect
        present = [False]

        def on_connect(paho_client: Any, userdata: Any, flags: Any, *rest: Any) -> None:
            present[0] = bool(getattr(flags, "session_present", False))
            connected(paho_client, userdata, flags, *rest)

        paho.on_connect = on_connect
        paho.on_message = self._on_message
        async with client:
            self._client = client
            granted = await client.subscribe([(self.events, 1), (self.marker, 1)])
            if any(_refused(code) for code in granted or ()):
                self.status = "refused: the broker does not let the bridge subscribe to its own events"
                _LOGGER.warning("Event ledger %s; events are delivered at least once", self.status)
            else:
                self.status = "ok"
                self._ready.set()
                if not present[0]:
                    _LOGGER.info("Event ledger: new broker session; events sent before it may repeat once")
            async for _ in client.messages:  # ends (MqttError) when the connection drops
                pass

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        """Runs on the loop, inside paho, before it acknowledges the message."""
        try:
            if message.topic == self.marker:
                waiter = self._waiting.pop(bytes(message.payload), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            else:
                self.on_seen(message.topic, bytes(message.payload))
        except Exception:  # never into paho: a failed delete only means the event may repeat
            _LOGGER.exception("Event ledger could not record an event")

    async def sync(self, timeout: float = SYNC_TIMEOUT) -> bool:
        """Wait until every event the broker accepted so far has reached the ledger (and left the
        outbox). False when that could not be shown within ``timeout``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        if self.status.startswith("refused"):
            return False
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
            client = self._client
            if client is None:
                return False
            token = uuid.uuid4().hex.encode()
            waiter = self._waiting[token] = loop.create_future()
            await client.publish(self.marker, token, qos=1, timeout=max(0.1, end - loop.time()))
            await asyncio.wait_for(waiter, max(0.1, end - loop.time()))
            return True
        except (asyncio.TimeoutError, aiomqtt.MqttError):
            return False
        finally:
            self._waiting.clear()


def _refused(code: Any) -> bool:
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80
