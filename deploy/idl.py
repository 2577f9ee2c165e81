"""Cyclone DDS IDL types (cyclonedds.idl dataclasses) mirroring ROS 2 messages field for field.

Each ROS message `pkg/msg/Name` becomes an `IdlStruct` named `pkg::msg::dds_::Name_`, the type
name every ROS 2 rmw uses, with the same members in the same order (ROS `string` -> IDL
`string`, `T[]` -> `sequence<T>`, `T[n]` -> `T[n]`, `char` -> `uint8`, `byte` -> `octet`).
Its XCDR1 encoding is therefore byte-for-byte the ROS message's CDR (a test checks this
against rosbags). The transport uses these types only to declare topics (name, type name,
XTypes type information); samples travel as the rosbags CDR bytes, because serializing a
`sequence<uint8>` through a Python list costs ~40 ms per MB.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from rosbags.typesys.base import Nodetype

from .messages import dds_type_name, typestore


def _base_types() -> dict[str, Any]:
    from cyclonedds.idl import types as t

    return {
        "bool": bool,
        "int8": t.int8,
        "uint8": t.uint8,
        "byte": t.byte,
        "char": t.uint8,
        "int16": t.int16,
        "uint16": t.uint16,
        "int32": t.int32,
        "uint32": t.uint32,
        "int64": t.int64,
        "uint64": t.uint64,
        "float32": t.float32,
        "float64": t.float64,
        "string": str,
    }


def _member_type(nodetype: int, detail: Any) -> Any:
    from cyclonedds.idl import types as t

    if nodetype == Nodetype.BASE:
        name, bound = detail
        if name == "string" and bound:
            return t.bounded_str[bound]
        return _base_types()[name]
    if nodetype == Nodetype.NAME:
        return idl_type(detail)
    (sub_nodetype, sub_detail), length = detail
    subtype = _member_type(sub_nodetype, sub_detail)
    if nodetype == Nodetype.ARRAY:
        return t.array[subtype, length]
    if nodetype == Nodetype.SEQUENCE:
        return t.sequence[subtype, length] if length else t.sequence[subtype]
    raise ValueError(f"unsupported ROS field kind {nodetype}")


@cache
def idl_type(msgtype: str) -> type:
    """The cyclonedds `IdlStruct` class of a ROS message type (built once, then cached)."""
    from cyclonedds.idl import make_idl_struct

    _, fields = typestore().fielddefs[msgtype]
    members = {name: _member_type(nodetype, detail) for name, (nodetype, detail) in fields}
    class_name = msgtype.rsplit("/", 1)[1] + "_"
    return make_idl_struct(class_name, dds_type_name(msgtype), members)


def to_idl(message: Any, msgtype: str | None = None) -> Any:
    """A rosbags message object -> the equivalent `IdlStruct` instance (slow for big arrays;
    for tests and tools, not the hot path)."""
    msgtype = msgtype or message.__msgtype__
    _, fields = typestore().fielddefs[msgtype]
    values = {}
    for name, (nodetype, detail) in fields:
        values[name] = _value(getattr(message, name), nodetype, detail)
    return idl_type(msgtype)(**values)


def _value(value: Any, nodetype: int, detail: Any) -> Any:
    if nodetype == Nodetype.BASE:
        return value
    if nodetype == Nodetype.NAME:
        return to_idl(value, detail)
    (sub_nodetype, sub_detail), _ = detail
    if sub_nodetype == Nodetype.BASE and sub_detail[0] != "string":
        return [v.item() if hasattr(v, "item") else v for v in value]
    return [_value(v, sub_nodetype, sub_detail) for v in value]
