def test_health_answers_with_the_seed_fields(client):
    r = client.get("/health")
    body = r.get_json()
    assert r.status_code == 200
    for k in ("status", "timestamp", "scheduler_running", "latest_data", "validation_rate_pct",
              "database", "redis", "config_last_reload_successful"):
        assert k in body
    assert body["database"] == "ok"
    assert body["redis"] == "ok"
    assert body["scheduler_running"] is False
    assert body["status"] == "degraded"


def test_status_reports_the_database_block(client):
    r = client.get("/api/v1/status")
    db = r.get_json()["database"]
    assert db["status"] == "ok"
    assert db["total_records"] == 0
