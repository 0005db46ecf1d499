"""A real MQTT publisher for tests and benchmarks (paho-mqtt, QoS 1)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from vitalcast.ingest.mqtt import DeviceStreamConsumer, MqttConfig, parse_mqtt_url, use_tls

# Session Expiry Interval of the consumers tests start (VITALCAST_MQTT_SESSION_EXPIRY_S):
# each test's client id is new, so its session is abandoned when the test ends and should
# leave the shared broker soon (the production default keeps it a day). Two minutes still
# outlast a SIGKILLed consumer's restart on a busy machine, as the restart tests need.
SESSION_EXPIRY_S = 120


def fresh_config(url: str) -> MqttConfig:
    """A consumer configuration of its own on the shared broker: a new client id and
    topic prefix (``<prefix>/<device>/observations``), small quick batches."""
    return MqttConfig(
        **parse_mqtt_url(url),
        client_id=f"vc-{uuid.uuid4().hex[:8]}",
        topic_prefix=f"vc-test-{uuid.uuid4().hex[:8]}/devices",
        batch_size=50,
        batch_wait_s=0.1,
        session_expiry_s=SESSION_EXPIRY_S,
    )


class Publisher:
    """Publishes with QoS 1 and waits until the broker has acknowledged every message."""

    def __init__(self, url: str, client_id: str) -> None:
        opts = parse_mqtt_url(url)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=opts["protocol"]
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        if opts["tls"]:
            use_tls(self.client, opts["cafile"])
        self.client.connect(opts["host"], opts["port"])
        self.client.loop_start()
        self.pending: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.pending.append(self.client.publish(topic, data, qos=1))

    def flush(self, timeout_s: float = 60) -> None:
        for info in self.pending:
            info.wait_for_publish(timeout=timeout_s)
            assert info.is_published(), "broker did not acknowledge a message"
        self.pending.clear()

    def close(self) -> None:
        self.flush()
        self.client.loop_stop()
        self.client.disconnect()


@contextmanager
def consuming(consumer: DeviceStreamConsumer, timeout_s: float = 10) -> Iterator[None]:
    """Run ``consumer`` in a thread while the block runs, entered once the broker granted
    its subscription; then stop it (its loop's clean stop, as the command's)."""
    stop = threading.Event()
    worker = threading.Thread(target=consumer.run, args=(stop,))
    worker.start()
    try:
        assert consumer.subscribed.wait(timeout_s)
        yield
    finally:
        stop.set()
        worker.join(timeout_s)
