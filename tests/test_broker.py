"""The embedded broker carries what the protocol needs: QoS 1, retained messages, last will."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from curbwatch.broker import EmbeddedBroker


def client(name: str, broker: EmbeddedBroker, will: tuple[str, bytes] | None = None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
    if will:
        c.will_set(will[0], will[1], qos=1, retain=True)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def test_qos1_retained_and_last_will() -> None:
    with EmbeddedBroker() as broker:
        got: dict[str, bytes] = {}
        seen = threading.Event()

        def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
            got[message.topic] = message.payload
            if len(got) == 2:
                seen.set()

        edge = client("edge", broker, will=("curbwatch/v1/e1/status", b"offline"))
        edge.publish("curbwatch/v1/e1/status", b"online", qos=1, retain=True).wait_for_publish(5)
        edge.publish("curbwatch/v1/e1/event", b"{}", qos=1).wait_for_publish(5)
        # The edge dies without DISCONNECT: the broker publishes its will.
        edge._sock_close()
        edge.loop_stop()

        server = client("server", broker)
        server.on_message = on_message
        subscribed = threading.Event()
        server.on_subscribe = lambda *_: subscribed.set()
        server.subscribe([("curbwatch/v1/+/status", 1), ("curbwatch/v1/+/event", 1)])
        assert subscribed.wait(5)
        edge2 = client("edge2", broker)
        edge2.publish("curbwatch/v1/e1/event", b'{"n": 2}', qos=1).wait_for_publish(5)
        assert seen.wait(10)
        assert got["curbwatch/v1/e1/event"] == b'{"n": 2}'
        assert got["curbwatch/v1/e1/status"] in (b"online", b"offline")  # retained copy, then the will
        server.loop_stop()
        edge2.loop_stop()
