"""Alibaba rules next to the IoTDA objects of the same store: which project
a request acts on, and `engine import --replace`/`export` leaving them alone."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from tests.api.conftest import AK_A, SK_A, running_api
from tests.api_aliyun.conftest import ENV, REPO, Sdk, stored, write_config


def engine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **ENV})


def test_a_key_of_two_projects_names_one_with_iot_instance_id(tmp_path):
    from aliyunsdkcore.acs_exception.exceptions import ServerException

    config = write_config(tmp_path, f"""\
    shared:
      access_keys: [{{ak: "{AK_A}", sk: "${{PROJ_A_SK}}"}}]
""")
    with running_api(config, ENV) as (url, _):
        sdk = Sdk(url.removeprefix("http://"))
        try:
            sdk.call("ListRule")
            raise AssertionError("a key of two projects must name one")
        except ServerException as err:
            assert err.get_error_code() == "MissingParameter.IotInstanceId"
        rule = sdk.ok("CreateRule", Name="in_shared", Select="*", IotInstanceId="shared")["RuleId"]
        sdk.fails("GetRule", "iot.rule.NotFoundRule", RuleId=rule, IotInstanceId="proj-a")
        assert sdk.ok("GetRule", RuleId=rule, IotInstanceId="shared")["RuleInfo"]["Name"] \
            == "in_shared"
        try:
            sdk.call("ListRule", IotInstanceId="proj-b")
            raise AssertionError("proj-b is not a project of this key")
        except ServerException as err:
            assert err.get_error_code() == "Forbidden.RAM"
    kinds = {(project, kind) for project, kind, _, _ in stored(tmp_path / "config.db")}
    assert kinds == {("shared", "aliyun_rules"), ("shared", "aliyun_ids")}


def test_import_replace_and_export_leave_alibaba_rules_alone(tmp_path):
    config = write_config(tmp_path)
    with running_api(config, ENV) as (url, _):
        sdk = Sdk(url.removeprefix("http://"), AK_A, SK_A)
        rule = sdk.ok("CreateRule", Name="kept_rule", Select="*")["RuleId"]
        rules = tmp_path / "rules.yaml"
        rules.write_text("rules: [{rule_id: r1, subject: {resource: product, event: create}}]\n")
        done = engine("import", str(rules), "--config", str(config), "--project", "proj-a",
                      "--replace")
        assert done.returncode == 0, done.stderr
        exported = yaml.safe_load(engine("export", "--config", str(config), "--project",
                                         "proj-a").stdout)
        assert exported == {"rules": [{"rule_id": "r1", "subject": {"resource": "product",
                                                                    "event": "create"}}]}
        assert sdk.ok("GetRule", RuleId=rule)["RuleInfo"]["Name"] == "kept_rule"


def test_rate_limit_applies_per_access_key(tmp_path):
    from aliyunsdkcore.acs_exception.exceptions import ServerException

    config = write_config(tmp_path, "  limits: {rate: 0.01, burst: 2}\n")
    with running_api(config, ENV) as (url, _):
        sdk = Sdk(url.removeprefix("http://"))
        sdk.ok("ListRule")
        sdk.ok("ListRule")
        try:
            sdk.call("ListRule")
            raise AssertionError("the third request within the burst must be refused")
        except ServerException as err:
            assert (err.get_http_status(), err.get_error_code()) == (429, "Throttling.User")
