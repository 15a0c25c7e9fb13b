"""Under `make test` (ENGINE_TEST_STRICT=1) a test that skips itself because
a server is missing fails; declared skips (@pytest.mark.skip) stay skips."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = '''
import pytest

def test_needs_a_server():
    pytest.skip("PostgreSQL is not listening")

@pytest.mark.skip(reason="known limitation")
def test_declared_skip():
    pass

def test_passes():
    pass
'''


def run(tmp_path: Path, strict: bool) -> str:
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_TEST_STRICT"}
    if strict:
        env["ENGINE_TEST_STRICT"] = "1"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-rfs", str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    return out.stdout


def test_strict_turns_a_run_time_skip_into_a_failure(tmp_path):
    out = run(tmp_path, strict=True)
    assert "1 failed, 1 passed, 1 skipped" in out
    assert "PostgreSQL is not listening" in out


def test_without_strict_it_stays_a_skip(tmp_path):
    assert "1 passed, 2 skipped" in run(tmp_path, strict=False)
