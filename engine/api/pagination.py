"""IoTDA list pagination: `limit`, `marker`, `offset` in, `count` and `marker` out.

IoTDA (1.4.8.2 and the other list APIs): records come newest first, in
descending order of an internal record id, the marker (24 hex digits; a
newer record has a larger one). `marker` returns only records older than
it, `offset` then skips that many more, `limit` caps the page. The response
carries `count` (all records matching the filters, ignoring the paging) and
`marker` (that of the page's last record, to pass to the next query).

Here the marker is the store's record sequence number in hex, so it keeps
IoTDA's ordering and format and survives restarts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from engine.api import errors

LIMIT_DEFAULT, LIMIT_MAX = 10, 50
OFFSET_MAX = 500
MARKER_DEFAULT = "f" * 24
_MARKER = re.compile(r"[0-9a-fA-F]{24}")

T = TypeVar("T")


def marker_of(seq: int) -> str:
    return f"{seq:024x}"


@dataclass(frozen=True)
class Page:
    limit: int = LIMIT_DEFAULT
    marker: str = MARKER_DEFAULT
    offset: int = 0

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Page:
        limit = _integer(query.get("limit"), LIMIT_DEFAULT)
        if limit is None or not 1 <= limit <= LIMIT_MAX:
            raise errors.bad_limit()
        marker = query.get("marker") or MARKER_DEFAULT
        if not _MARKER.fullmatch(marker):
            raise errors.bad_marker()
        offset = _integer(query.get("offset"), 0)
        if offset is None or not 0 <= offset <= OFFSET_MAX:
            raise errors.invalid_input("The specified parameter 'offset' is out of range (0-500).")
        return cls(limit, marker.lower(), offset)

    def apply(self, items: Sequence[tuple[int, T]]) -> tuple[list[T], int, str | None]:
        """`items` are (seq, item) pairs matching the filters, in any order.
        Returns the page, the total count and the marker for the next query
        (None when the page is empty)."""
        newest_first = sorted(items, key=lambda pair: pair[0], reverse=True)
        below = int(self.marker, 16)
        older = [pair for pair in newest_first if pair[0] < below]
        page = older[self.offset : self.offset + self.limit]
        next_marker = marker_of(page[-1][0]) if page else None
        return [item for _, item in page], len(items), next_marker


def _integer(text: str | None, default: int) -> int | None:
    if text is None or text == "":
        return default
    if not re.fullmatch(r"[0-9]{1,9}", text):
        return None
    return int(text)
