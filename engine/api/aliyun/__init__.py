"""Alibaba Cloud IoT Platform's rules-engine API (2018-01-20), served at `/`
of the management API's listener next to the IoTDA paths (docs/api-alibaba.md).

- `signature`: the HMAC-SHA1 RPC signature, timestamp window, nonce replay check
- `errors`: Alibaba's error codes, response envelope and its JSON/XML rendering
- `operations`: CreateRule ... UpdateRule on the API store
- `mapping`: the stored kinds, and the engine rules and actions they run as
- `handler`: the aiohttp handler tying them together
"""

from engine.api.aliyun.handler import make_handler
from engine.api.aliyun.mapping import KINDS, engine_items
from engine.api.aliyun.signature import Verifier

__all__ = ["KINDS", "Verifier", "engine_items", "make_handler"]
