"""Which ``fhirServer`` a CDS Hooks request may make vitalcast read (SSRF policy)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vitalcast.errors import PreconditionFailed
from vitalcast.serving.cds_fhir import check_fhir_server, parse_networks


def _resolver(*addresses: str) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(
    ("url", "env", "addresses", "why"),
    [
        ("http://ehr.example.org/fhir", "production", ("93.184.216.34",), "https"),
        ("http://127.0.0.1:8699/fhir", "production", (), "https"),
        ("http://localhost:8699/fhir", "production", ("127.0.0.1",), "https"),
        ("https://127.0.0.1/fhir", "production", (), "private, loopback"),
        ("https://localhost/fhir", "production", ("127.0.0.1", "::1"), "private, loopback"),
        ("https://ehr.internal/fhir", "production", ("10.1.2.3",), "private, loopback"),
        ("https://meta.internal/fhir", "production", ("169.254.169.254",), "private"),
        ("https://cgnat.internal/fhir", "production", ("100.64.0.7",), "private"),
        ("https://[::ffff:127.0.0.1]/fhir", "production", (), "private, loopback"),
        ("https://[fe80::1]/fhir", "production", (), "private"),
        # one private answer among public ones is enough to refuse
        ("https://ehr.example.org/fhir", "production", ("93.184.216.34", "10.0.0.5"), "private"),
        ("http://10.0.0.5/fhir", "test", (), "https"),
        ("http://ehr.example.org/fhir", "development", ("93.184.216.34",), "https"),
        ("https://10.0.0.5/fhir", "test", (), "private"),
        ("http://127.0.0.1/fhir", "demo", (), "https"),
        ("https://user:pw@ehr.example.org/fhir", "production", ("93.184.216.34",), "credentials"),
        ("ftp://ehr.example.org/fhir", "production", ("93.184.216.34",), "https base URL"),
        ("https://ehr.example.org/fhir?x=1", "production", ("93.184.216.34",), "without query"),
        ("https://nowhere.example/fhir", "production", (), "could not be resolved"),
    ],
)
def test_refused(url: str, env: str, addresses: tuple[str, ...], why: str) -> None:
    with pytest.raises(PreconditionFailed) as caught:
        check_fhir_server(url, env=env, resolve=_resolver(*addresses))
    assert why in caught.value.message
    assert caught.value.status == 412
    assert "example" not in caught.value.message  # never the URL
    assert "127.0.0.1" not in caught.value.message


def test_public_https_server_is_pinned_to_the_checked_address() -> None:
    target = check_fhir_server(
        "https://EHR.example.org:8443/fhir/r4/",
        env="production",
        resolve=_resolver("93.184.216.34"),
    )
    assert (target.scheme, target.host, target.port, target.base_path, target.address) == (
        "https",
        "ehr.example.org",
        8443,
        "/fhir/r4",
        "93.184.216.34",
    )
    assert target.owns("https://ehr.example.org:8443/fhir/r4/Observation?page=2")
    assert not target.owns("https://ehr.example.org:8443/other/Observation")
    assert not target.owns("https://ehr.example.org:8443/fhir/r4/../../admin")
    assert not target.owns("https://ehr.example.org/fhir/r4/Observation")  # port 443
    assert not target.owns("http://ehr.example.org:8443/fhir/r4/Observation")
    assert not target.owns("https://evil.example:8443/fhir/r4/Observation")
    assert not target.owns("https://u@ehr.example.org:8443/fhir/r4/Observation")


@pytest.mark.parametrize("env", ["development", "test"])
def test_loopback_http_only_in_development_and_test(env: str) -> None:
    target = check_fhir_server(
        "http://localhost:8699/fhir", env=env, resolve=_resolver("127.0.0.1", "::1")
    )
    assert (target.scheme, target.port, target.address) == ("http", 8699, "127.0.0.1")


def test_a_listed_private_network_may_be_read_over_https_and_nothing_else_opens() -> None:
    """A hospital's EHR FHIR server sits on its private network: the operator lists that
    network. Only that network opens, only over https, and a host with one answer
    outside it is still refused."""
    networks = parse_networks(["10.20.0.0/16", "fd12:3456::/32"])
    target = check_fhir_server(
        "https://fhir.ehr.hospital.internal/r4",
        env="production",
        networks=networks,
        resolve=_resolver("10.20.4.5"),
    )
    assert (target.address, target.host) == ("10.20.4.5", "fhir.ehr.hospital.internal")
    assert check_fhir_server(
        "https://[fd12:3456::9]/r4", env="production", networks=networks
    ).address == ("fd12:3456::9")
    for url, addresses, why in (
        ("https://ehr.internal/r4", ("10.21.0.1",), "VITALCAST_CDS_FHIR_NETWORKS"),
        ("https://ehr.internal/r4", ("10.20.0.1", "10.99.0.1"), "private"),
        ("http://ehr.internal/r4", ("10.20.0.1",), "https"),
        ("https://meta.internal/r4", ("169.254.169.254",), "private"),
    ):
        with pytest.raises(PreconditionFailed) as caught:
            check_fhir_server(
                url, env="production", networks=networks, resolve=_resolver(*addresses)
            )
        assert why in caught.value.message


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("10.20.0.0/33", "is not a network"),
        ("ehr.internal", "is not a network"),
        ("127.0.0.0/8", "overlaps loopback"),
        ("0.0.0.0/0", "overlaps loopback"),  # everything, including the metadata service
        ("169.254.169.254/32", "overlaps loopback, link-local"),
        ("::/0", "overlaps loopback"),
        ("fe80::/64", "overlaps loopback, link-local"),
    ],
)
def test_networks_that_must_never_be_contacted_cannot_be_listed(entry: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_networks([entry])


def test_the_setting_is_checked_when_the_configuration_loads() -> None:
    from vitalcast.config import load_settings
    from vitalcast.errors import ConfigError

    assert load_settings(env="test", cds_fhir_networks=["10.20.0.0/16"]).cds_fhir_networks == [
        "10.20.0.0/16"
    ]
    with pytest.raises(ConfigError, match="overlaps loopback"):
        load_settings(env="test", cds_fhir_networks=["169.254.0.0/16"])
