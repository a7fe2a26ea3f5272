"""A replica is verified before it serves: ``database.read_url`` must be a
standby of this primary (in recovery, the same system identifier, the
migrations present); else /health says why, never ``ok``, and the reads go to
the primary without an error."""
from __future__ import annotations

import pytest

from appliance.runtime import replica
from appliance.runtime.runtime import Runtime
from tests.conftest import write_config

AUTH = {"Authorization": "Bearer test-admin-token-0123456789"}


@pytest.fixture
def wrong_replica_app(tmp_path, database_url, redis_url, empty_db):
    from appliance.web import create_app
    path = write_config(tmp_path / "appliance.yaml", database_url, redis_url,
                        database={"url": database_url, "read_url": empty_db})
    rt = Runtime.from_path(path)
    rt.open()
    app = create_app(runtime=rt)
    app.config["TESTING"] = True
    yield app
    rt.close()


def test_verify_names_why_a_database_is_not_a_standby_of_this_primary(database_url, empty_db):
    why = replica.verify(empty_db, database_url)
    assert why is not None and "not a standby" in why, why
    why = replica.verify(database_url, database_url)  # the primary itself
    assert why is not None and "not a standby" in why, why


def test_a_read_url_that_is_not_a_standby_is_refused_and_health_says_why(
        wrong_replica_app):
    from appliance.ingest.backfill import run_backfill
    from appliance.jobs import runs
    c = wrong_replica_app.test_client()
    rt = wrong_replica_app.config["RUNTIME"]
    assert runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                        params={})["status"] == "ok"
    h = c.get("/health").get_json()
    rep = h["replica"]
    assert rep["state"] == "refused" and rep["serving_reads"] is False, rep
    assert "not a standby" in rep["reason"]
    assert h["status"] != "healthy"
    assert any("not a standby" in r for r in h["reasons"]), h["reasons"]
    for url in ("/api/v1/symbols", "/api/v1/gaps", "/symbols/AAPL"):
        r = c.get(url, headers=AUTH)
        assert r.status_code == 200, (url, r.status_code, r.get_data(as_text=True)[:300])


def test_a_read_that_fails_on_the_replica_is_answered_by_the_primary(wrong_replica_app):
    """The replica passed its last check but fails the read itself (here: it
    lacks the appliance's tables): the request is answered from the primary,
    not a 500, and the replica is marked down until the next check."""
    import time

    from appliance.ingest.backfill import run_backfill
    from appliance.jobs import runs
    rt = wrong_replica_app.config["RUNTIME"]
    assert runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                        params={})["status"] == "ok"
    c = wrong_replica_app.test_client()
    for url in ("/api/v1/symbols", "/api/v1/gaps", "/symbols/AAPL", "/symbols"):
        # as if it had just been verified: the read is tried on it
        rt.replica._state = replica.ReplicaState(True, "ok", 0.0, True, None, time.monotonic())
        r = c.get(url, headers=AUTH)
        assert r.status_code == 200, (url, r.status_code, r.get_data(as_text=True)[:300])
        assert rt.replica._state.state == "down"
    assert c.get("/api/v1/symbols", headers=AUTH).get_json()["count"] >= 2


def test_a_reload_to_a_read_url_that_is_not_a_standby_is_refused_naming_why(
        config_factory, runtime, empty_db, database_url):
    from appliance.jobs.reload import reload_config
    assert reload_config(runtime, source="startup")["ok"]
    config_factory(database={"url": database_url, "read_url": empty_db})
    res = reload_config(runtime, source="cli")
    assert res["ok"] is False and res["status"] == 422, res
    assert "at $.database.read_url: refused as a replica of this database" in res["errors"][0]
    assert "not a standby" in res["errors"][0]
    assert not runtime.config["database"]["read_url"]  # nothing changed
