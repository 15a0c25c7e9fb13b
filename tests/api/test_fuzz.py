"""Fuzzing with schemathesis against the served OpenAPI document: whatever
it sends (valid and invalid bodies, parameters, ids), the API never answers
5xx. Bounded to about 10 examples per operation (~200 requests)."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from engine.api.app import ROUTES
from engine.api.openapi import document
from tests.api.conftest import TOKEN_A, free_port, running_api

HEADERS = {"X-Auth-Token": TOKEN_A}

# The document the server serves (checked below to be identical), loaded
# without a server so the tests can be generated at collection time.
schema = schemathesis.openapi.from_dict(document(tuple(ROUTES)))


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    config = tmp_path_factory.mktemp("fuzz") / "engine.yaml"
    config.write_text(f"""\
api:
  listen: "127.0.0.1:{free_port()}"
  projects:
    proj-a: {{tokens: ["${{FUZZ_TOKEN}}"]}}
""")
    with running_api(config, {"FUZZ_TOKEN": TOKEN_A}, "--limit", "rate=100000",
                     "--limit", "burst=100000") as (url, output):
        served = requests.get(f"{url}/openapi.json", headers=HEADERS, timeout=10).json()
        assert served == schema.raw_schema
        yield url
    assert not [line for line in output if "Traceback" in line or " ERROR " in line], output


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, base_url):
    if "project_id" in (case.path_parameters or {}):
        case.path_parameters["project_id"] = "proj-a"  # else nearly every case is a plain 401
    response = case.call(base_url=base_url, headers=HEADERS, timeout=10)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error_code", "error_msg"}, body
