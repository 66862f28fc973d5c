"""Fixtures of the monitor tests (helpers are in ``traffic.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.monitor.traffic import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r
