from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.export.builders import build_tiny_bundle, build_tiny_student


def _root(factory: pytest.TempPathFactory) -> Path:
    # KARDLITE_TEST_BUNDLE_ROOT keeps the built student and bundle between local runs (they are rebuilt only
    # when missing); by default everything lives in the session's temp dir.
    env = os.environ.get("KARDLITE_TEST_BUNDLE_ROOT")
    return Path(env) if env else factory.getbasetemp() / "kard-tiny"


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_student(_root(tmp_path_factory) / "student")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session (tests/runtime reuses the same folder); treat as read-only."""
    return build_tiny_bundle(_root(tmp_path_factory))
