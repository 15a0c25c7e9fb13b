"""Entry points: what the `engine` commands run, assembled from the layers
below - the worker (`engine.runtime`), the management API (`engine.api`) and
the configuration.

- `main`: a worker as a process (event loop, signals, status)
- `managed`: `engine run` with an `api:` section (worker + API in one loop)
- `replay`, `demo`: `engine replay` and `engine demo`

Nothing below this package imports it; `engine.cli` parses the command line
and calls these.
"""
