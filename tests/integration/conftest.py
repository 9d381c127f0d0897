from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.apps import basic


@pytest.fixture(autouse=True)
def _reset_basic_app() -> Iterator[None]:
    basic.reset()
    yield
    basic.reset()
