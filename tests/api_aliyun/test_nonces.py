"""The nonce window of the signature verifier, on its own clock."""

from __future__ import annotations

import time

import pytest

from engine.api.aliyun import signature
from engine.api.aliyun.errors import GatewayError
from engine.api.aliyun.signature import Verifier, sign, string_to_sign
from engine.config import ApiConfig

API = ApiConfig.model_validate({"projects": {"p": {"access_keys": [{"ak": "AK1", "sk": "s"}]}}})


def signed(nonce: str) -> dict[str, str]:
    params = {"AccessKeyId": "AK1", "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0",
              "SignatureNonce": nonce, "Action": "ListRule", "Version": "2018-01-20",
              "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return {**params, "Signature": sign("s", string_to_sign("GET", params))}


def test_a_nonce_is_refused_within_the_window_and_forgotten_after(monkeypatch):
    verifier, now = Verifier(API), [1000.0]
    monkeypatch.setattr(signature.time, "monotonic", lambda: now[0])
    assert verifier.verify("GET", signed("n1")).projects == {"p"}
    with pytest.raises(GatewayError) as caught:
        verifier.verify("GET", signed("n1"))
    assert caught.value.code == "SignatureNonceUsed"
    now[0] += 2 * signature.WINDOW_SECONDS + 1  # the timestamp check covers what follows
    verifier.verify("GET", signed("n2"))
    assert list(verifier._nonces) == [("AK1", "n2")]  # n1 expired and was dropped


def test_a_full_nonce_table_refuses_rather_than_forgets(monkeypatch):
    verifier = Verifier(API)
    monkeypatch.setattr(signature, "MAX_NONCES", 2)
    verifier.verify("GET", signed("a"))
    verifier.verify("GET", signed("b"))
    with pytest.raises(GatewayError) as caught:
        verifier.verify("GET", signed("c"))
    assert caught.value.code == "Throttling.User"
