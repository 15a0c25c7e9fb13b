"""Which action channels this engine implements, and their channel_detail models.

The destination modules own the channel_detail models (`Sink.Config`) and
register their Sink class in `engine.destinations.CHANNELS`; importing
`engine.destinations` registers all of them. This module only looks them up.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model
from pydantic_core import PydanticCustomError

from engine.destinations import CHANNELS

# Channels of IoTDA's data forwarding (seed 1.4.8.6) plus later IoTDA channels
# that only exist inside Huawei Cloud. Any of them that no destination module
# registers is "not supported by this engine" rather than "unknown": the file
# is a valid IoTDA body, this engine just cannot deliver there.
IOTDA_CHANNELS = frozenset(
    {
        "HTTP_FORWARDING",
        "DIS_FORWARDING",
        "OBS_FORWARDING",
        "AMQP_FORWARDING",
        "DMS_KAFKA_FORWARDING",
        "INFLUXDB_FORWARDING",
        "MYSQL_FORWARDING",
        "FUNCTIONGRAPH_FORWARDING",
        "ROMA_FORWARDING",
        "MRS_KAFKA_FORWARDING",
    }
)


def registry() -> Mapping[str, Any]:
    """Channel name -> Sink class, every destination module registered."""
    return CHANNELS


def check_channel(channel: str) -> None:
    if channel in registry():
        return
    if channel in IOTDA_CHANNELS:
        raise PydanticCustomError(
            "channel_unsupported",
            "channel {channel} is not supported by this engine (supported: {supported})",
            {"channel": channel, "supported": ", ".join(sorted(registry()))},
        )
    near = difflib.get_close_matches(channel.upper(), sorted(registry()), n=1, cutoff=0.6)
    raise PydanticCustomError(
        "channel_unknown",
        "unknown channel '{channel}'{hint} (expected one of: {supported})",
        {"channel": channel, "supported": ", ".join(sorted(registry())),
         "hint": f" (did you mean '{near[0]}'?)" if near else ""},
    )


@functools.cache
def _detail_model(channel: str) -> type[BaseModel]:
    # channel_detail holds exactly one key, the channel's detail_key, e.g.
    # {"http_forwarding": {...}}; a wrapper model gives errors that location.
    sink = registry()[channel]
    return create_model(  # type: ignore[call-overload]  # field definitions built at run time
        f"{sink.Config.__name__}ChannelDetail",
        __config__=ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True),
        **{sink.detail_key: (sink.Config, ...)},
    )


def validate_detail(channel: str, detail: dict[str, Any]) -> dict[str, BaseModel]:
    """Validate `channel_detail` for `channel`; raises pydantic's ValidationError."""
    model = _detail_model(channel)
    validated = model.model_validate(detail)
    return {key: getattr(validated, key) for key in type(validated).model_fields}
