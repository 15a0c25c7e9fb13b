"""Alibaba Cloud's error shapes and the response envelope of its RPC API.

Two kinds of failure, as Alibaba's API answers them:

- Gateway errors (signature, common parameters, unknown action, rate
  limit): an HTTP 4xx status and `{"RequestId", "Code", "Message"}` (seed
  §2.3); the official SDK raises them as `ServerException`. The seed names
  no codes for them; these are the codes Alibaba's API gateway uses
  (`SignatureDoesNotMatch`, `InvalidTimeStamp.Expired`, …), which the SDK
  recognises (it re-checks its own string-to-sign on `SignatureDoesNotMatch`).
- Business errors of the IoT actions (seed §2.8, `iot.rule.*`,
  `iot.ruleng.*`, `iot.messagebroker.*`, `iot.common.*`): HTTP 200 with
  `{"RequestId", "Success": false, "Code", "ErrorMessage"}`, the envelope
  of every IoT action, which scripts check through `Success`.

A message never contains a secret or a signature.
"""

from __future__ import annotations

import uuid
from typing import Any


def request_id() -> str:
    # Alibaba's look: an upper-case GUID.
    return str(uuid.uuid4()).upper()


class AliyunError(Exception):
    """A business error: HTTP 200, `Success: false`."""

    status = 200

    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message
        super().__init__(f"{code}: {message}")

    def body(self, rid: str) -> dict[str, Any]:
        return {"RequestId": rid, "Success": False, "Code": self.code,
                "ErrorMessage": self.message}


class GatewayError(AliyunError):
    """Refused before the action runs: an HTTP error status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status

    def body(self, rid: str) -> dict[str, Any]:
        return {"RequestId": rid, "Code": self.code, "Message": self.message}


# ------------------------------------------------------------------ gateway


def missing_parameter(name: str) -> GatewayError:
    return GatewayError(400, f"MissingParameter.{name}" if name else "MissingParameter",
                        f"The input parameter \"{name}\" that is mandatory for processing "
                        "this request is not supplied.")


def invalid_parameter(name: str, why: str) -> GatewayError:
    return GatewayError(400, "InvalidParameter", f"The parameter \"{name}\" is invalid: {why}")


def signature_mismatch(text: str) -> GatewayError:
    # Alibaba's message, ending in the server's string to sign (made from the
    # request alone, no secret): the SDK compares it with its own and, when
    # they agree, reports "InvalidAccessKeySecret" rather than a mismatch.
    return GatewayError(400, "SignatureDoesNotMatch",
                        "Specified signature is not matched with our calculation. "
                        f"server string to sign is:{text}")


def unknown_access_key() -> GatewayError:
    return GatewayError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")


def stale_timestamp() -> GatewayError:
    return GatewayError(400, "InvalidTimeStamp.Expired",
                        "Specified time stamp or date value is expired (more than 15 minutes "
                        "from the server's clock).")


def bad_timestamp() -> GatewayError:
    return GatewayError(400, "InvalidTimeStamp.Format",
                        "Specified time stamp or date value is not well formatted "
                        "(expected YYYY-MM-DDThh:mm:ssZ, UTC).")


def nonce_used() -> GatewayError:
    return GatewayError(400, "SignatureNonceUsed",
                        "Specified signature nonce was used already.")


def unsupported_signature(what: str) -> GatewayError:
    return GatewayError(400, "InvalidParameter",
                        f"{what} is not supported (HMAC-SHA1, SignatureVersion 1.0).")


def unknown_action(action: str, known: list[str]) -> GatewayError:
    return GatewayError(400, "UnsupportedOperation",
                        f"The specified action {action!r} is not supported "
                        f"(supported: {', '.join(known)}).")


def unsupported_version(version: str) -> GatewayError:
    return GatewayError(400, "InvalidVersion",
                        f"Specified parameter Version {version!r} is not valid (supported: "
                        "2018-01-20).")


def forbidden_instance(why: str) -> GatewayError:
    return GatewayError(403, "Forbidden.RAM", why)


def throttled() -> GatewayError:
    return GatewayError(429, "Throttling.User", "Request was denied due to user flow control.")


def internal() -> GatewayError:
    return GatewayError(500, "iot.system.SystemException", "A system exception occurred.")


# ------------------------------------------------------------------ the response body

_ITEM = {"Data": "RuleInfo", "RuleActionList": "RuleActionInfo"}  # XML element of a list item


def _xml(parent: Any, name: str, value: Any) -> None:
    from xml.etree import ElementTree

    node = ElementTree.SubElement(parent, name)
    if isinstance(value, dict):
        for key, item in value.items():
            _xml(node, key, item)
    elif isinstance(value, list):
        for item in value:
            _xml(node, _ITEM.get(name, "item"), item)
    elif isinstance(value, bool):
        node.text = "true" if value else "false"
    else:
        node.text = str(value)


def render(payload: dict[str, Any], action: str, fmt: str | None) -> tuple[bytes, str]:
    """The body and its content type: JSON when `Format=JSON` (the SDK always
    asks for it), otherwise XML, the seed's default (§2.3): `<ActionResponse>`
    for an answer of the action, `<Error>` for a gateway error."""
    import orjson

    if (fmt or "XML").upper() == "JSON":
        return orjson.dumps(payload), "application/json"
    from xml.etree import ElementTree

    root_name = "Error" if "Success" not in payload else f"{action or 'Unknown'}Response"
    root = ElementTree.Element(root_name)
    for key, value in payload.items():
        _xml(root, key, value)
    return (b'<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(root),
            "application/xml")
