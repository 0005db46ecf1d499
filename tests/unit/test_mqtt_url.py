"""The broker URL: plain or TLS, its options, and clear errors for anything else."""

from __future__ import annotations

import pytest

from vitalcast.errors import ConfigError
from vitalcast.ingest.mqtt import parse_mqtt_url


def test_mqtt_url_options_are_checked() -> None:
    opts = parse_mqtt_url("mqtts://u:p@broker.example:8884?cafile=/etc/ca.pem")
    assert (opts["host"], opts["port"], opts["tls"], opts["cafile"]) == (
        "broker.example",
        8884,
        True,
        "/etc/ca.pem",
    )
    assert parse_mqtt_url("mqtts://broker.example")["port"] == 8883
    assert parse_mqtt_url("mqtt://broker.example")["port"] == 1883
    assert parse_mqtt_url("mqtt://broker.example")["tls"] is False
    with pytest.raises(ConfigError, match="cafile applies to mqtts"):
        parse_mqtt_url("mqtt://broker.example?cafile=/etc/ca.pem")
    with pytest.raises(ConfigError, match="unknown option"):
        parse_mqtt_url("mqtts://broker.example?ca=/etc/ca.pem")
    with pytest.raises(ConfigError, match="expected mqtt://"):
        parse_mqtt_url("ssl://broker.example")
