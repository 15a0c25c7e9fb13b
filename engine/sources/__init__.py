"""Sources: one module per input, each implementing `base.Source`.

Importing this package registers every source kind in `SOURCES` (the key of a
`sources:` item -> Source class; `Source.Options` is the model of its
options). A new source is one module here with `@register`, plus its name in
the import below."""

from engine.sources import (  # noqa: F401 - registers them
    amqp,
    device_api,
    file,
    http,
    kafka,
    mqtt,
    simulator,
)
from engine.sources.base import Batch, Source, SourceContext, SourceOptions
from engine.sources.registry import SOURCES, register

__all__ = ["SOURCES", "Batch", "Source", "SourceContext", "SourceOptions", "register"]
