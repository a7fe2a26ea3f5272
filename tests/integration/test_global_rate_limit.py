"""One vendor rate limit for every process: three worker processes sharing a
Redis send the limit between them, never three times it; a 429 seen by one
pauses all of them."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import redis

from appliance.providers.ratelimit import GlobalRateLimiter

LIMIT = 12  # requests a minute
TRIES = 8   # each process wants this many right away; 3 x 8 = 24 > LIMIT

# Each process reserves slots without sleeping and counts the ones usable
# within the next 5 s: all of them that the limit lets through at once.
_WORKER = textwrap.dedent("""
    import json, sys
    import redis
    from appliance.providers.http import RateLimiter
    from appliance.providers.ratelimit import GlobalRateLimiter
    url, shared, limit, tries = sys.argv[1], sys.argv[2] == "shared", int(sys.argv[3]), int(sys.argv[4])
    if shared:
        lim = GlobalRateLimiter(redis.Redis.from_url(url), "polygon", "test-key", limit)
        waits = [lim.reserve() for _ in range(tries)]
    else:
        lim = RateLimiter(limit)
        waits = [lim.reserve() - lim.clock() for _ in range(tries)]
    print(json.dumps(waits))
""")


def _run_three(redis_url: str, shared: bool) -> list[float]:
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, redis_url,
                               "shared" if shared else "local", str(LIMIT), str(TRIES)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    waits = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        waits += json.loads(out)
    return waits


def test_three_workers_share_one_limit_instead_of_tripling_it(redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    shared = _run_three(redis_url, shared=True)
    now_shared = sum(1 for w in shared if w < 5)
    # the same three processes with a limiter each: the bug this fixes
    local = _run_three(redis_url, shared=False)
    now_local = sum(1 for w in local if w < 5)
    assert now_local == 3 * TRIES, "the baseline should let every process burst"
    assert now_shared == LIMIT, f"{now_shared} requests allowed at once, the limit is {LIMIT}"
    # the rest wait for the window to pass: never earlier than a minute
    assert min(w for w in shared if w >= 5) >= 60


def test_a_429_seen_by_one_process_pauses_every_process(redis_url):
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    a = GlobalRateLimiter(r, "polygon", "test-key", 600)
    b = GlobalRateLimiter(redis.Redis.from_url(redis_url), "polygon", "test-key", 600)
    assert b.reserve() < 1
    a.pause(30)
    assert b.reserve() >= 29
    # another vendor key has its own limit
    c = GlobalRateLimiter(r, "polygon", "another-key", 600)
    assert c.reserve() < 1


def test_without_redis_the_limit_still_holds_in_this_process():
    dead = redis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2,
                                socket_timeout=0.2)
    lim = GlobalRateLimiter(dead, "polygon", "k", 2)
    waits = [lim.reserve() for _ in range(3)]
    assert waits[0] < 1 and waits[1] < 1 and waits[2] >= 59
