"""Both transports satisfy the one `Transport` protocol the node, the replay and the tools are
written against: every method, with the same parameters (names, kinds, defaults)."""

from __future__ import annotations

import inspect

import pytest

from perception.deploy.transport import (
    DdsTransport,
    InProcessTransport,
    Publisher,
    Subscription,
    Transport,
    _DdsPublisher,
    _DdsSubscription,
    _InProcessPublisher,
    _InProcessSubscription,
)


def _methods(protocol) -> list[str]:
    return [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]


def _params(fn) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(
    ("protocol", "cls"),
    [
        (Transport, InProcessTransport),
        (Transport, DdsTransport),
        (Publisher, _InProcessPublisher),
        (Publisher, _DdsPublisher),
        (Subscription, _InProcessSubscription),
        (Subscription, _DdsSubscription),
    ],
)
def test_transport_classes_match_the_protocol(protocol, cls):
    methods = _methods(protocol)
    assert methods, protocol
    for name in methods:
        assert hasattr(cls, name), f"{cls.__name__} lacks {name}"
        assert _params(getattr(cls, name)) == _params(getattr(protocol, name)), (cls, name)


def test_in_process_transport_is_a_transport():
    with InProcessTransport() as transport:
        assert isinstance(transport, Transport)
        sub = transport.subscribe("/a", "std_msgs/msg/Empty")
        assert sub.topic == "/a"
