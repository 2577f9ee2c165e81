"""The loopback DDS configuration listens on the loopback interface only, and a configuration
that cannot be applied (a participant was there first) is an error, not a silent fallback."""

from __future__ import annotations

import pytest

from perception.deploy import messages
from perception.deploy.transport import DdsTransport, process_sockets


def test_process_sockets_lists_a_bound_socket_with_its_address():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        (info,) = [i for i in process_sockets() if i.port == port]
    assert (info.protocol, info.address, info.device, info.wildcard) == (
        "udp",
        "127.0.0.1",
        "",
        False,
    )


def test_loopback_transport_has_no_socket_listening_on_every_interface(dds_domain):
    """Cyclone binds its receive sockets (discovery and data unicast) to 0.0.0.0 whatever the
    configured interface; the transport binds them to the `lo` device."""
    before = {s.fd for s in process_sockets()}
    with DdsTransport(dds_domain) as transport:
        transport.subscribe("/lidar/top", messages.POINTCLOUD2)
        created = [s for s in process_sockets() if s.fd not in before]
        assert len([s for s in created if s.protocol == "udp"]) >= 2, created
        wildcard = [s for s in created if s.wildcard]
        assert not wildcard, f"sockets listening on every interface: {wildcard}"
        assert all(s.address == "127.0.0.1" or s.device == "lo" for s in created), created


def test_a_participant_created_before_the_transport_is_an_error(dds_domain):
    from cyclonedds.domain import DomainParticipant

    first = DomainParticipant(dds_domain)  # takes CYCLONEDDS_URI, not the loopback config
    try:
        with pytest.raises(
            RuntimeError,
            match=f"DDS domain {dds_domain}: cannot apply the loopback configuration: a DDS participant",
        ):
            DdsTransport(dds_domain)
    finally:
        first.__del__()


def test_a_second_configuration_for_a_domain_is_an_error(dds_domain):
    other = '<CycloneDDS><Domain id="any"><General><AllowMulticast>false</AllowMulticast></General></Domain></CycloneDDS>'
    with DdsTransport(dds_domain), DdsTransport(dds_domain):  # same configuration: shared
        with pytest.raises(RuntimeError, match="different configuration"):
            DdsTransport(dds_domain, config=other)


def test_a_configuration_cyclone_refuses_is_an_error(dds_domain):
    bad = '<CycloneDDS><Domain id="any"><Internal><NoSuchOption>1</NoSuchOption></Internal></Domain></CycloneDDS>'
    with pytest.raises(RuntimeError, match=f"DDS domain {dds_domain}: .* Cyclone refused it"):
        DdsTransport(dds_domain, config=bad)
