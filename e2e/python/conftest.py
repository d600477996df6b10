"""pytest fixtures for the Python end-to-end tests (helpers live in support.py)."""

import pytest

from support import start_server


@pytest.fixture(scope="module")
def server():
    srv = start_server()
    yield srv
    srv.stop()
