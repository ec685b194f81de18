import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """Built datasets (the embedded glyphs) go to one cache per test session."""
    previous = os.environ.get("METALAB_CACHE")
    os.environ["METALAB_CACHE"] = str(tmp_path_factory.getbasetemp() / "metalab-cache")
    yield
    if previous is None:
        os.environ.pop("METALAB_CACHE", None)
    else:
        os.environ["METALAB_CACHE"] = previous
