"""The test fixtures' own isolation: xdist workers never share a Redis
database number (nor a template database: its name holds the worker)."""
from __future__ import annotations

from tests.conftest import redis_dbs


def test_each_xdist_worker_gets_its_own_redis_databases():
    for workers in (1, 2, 3, 4, 15):
        taken = [set(redis_dbs(f"gw{i}", workers)) for i in range(workers)]
        assert all(taken), workers
        assert sum(len(t) for t in taken) == len(set().union(*taken)), workers
        assert set().union(*taken) <= set(range(1, 16)), workers
    assert list(redis_dbs("main", 1)) == list(range(1, 16))
