"""Helpers of the operability tests: the `engine` command as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
ENGINE = [sys.executable, "-m", "engine"]


def engine(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
           cwd: Path | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*ENGINE, *args], capture_output=True, timeout=timeout, input=input,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")
