"""`make test-notebooks`: every notebook runs as one test (nbmake) and must finish within LIMIT_S.

nbmake's own --nbmake-timeout bounds each cell; this hook bounds the whole notebook (issue #23: each
notebook runs offline on 2 CPU cores in at most 3 minutes).
"""

from __future__ import annotations

import time

import pytest

LIMIT_S = 180


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    start = time.perf_counter()
    result = yield
    elapsed = time.perf_counter() - start
    if elapsed > LIMIT_S:
        pytest.fail(f"{item.name} ran for {elapsed:.0f} s; a notebook must finish within {LIMIT_S} s")
    return result
