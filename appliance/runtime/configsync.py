"""Which config runs: one rule for every process and every command.

- **A cold start takes the file.** A long-running process (web worker, RQ
  worker, scheduler) that starts while no other process of the appliance is
  alive, and ``appliance up`` itself, validate ``appliance.yaml`` and publish
  it: it becomes the *boot* config and the *running* config.
- **A process started while others run joins them**: it takes the running
  config from Redis (not the file, which may hold an edit not yet reloaded).
- **A reload is validated where it runs.** The file's text is proposed as a
  candidate; every live process loads it in its own environment (its process
  environment with ``appliance.env`` over it) and answers. Only when every one
  accepts is it published; each swaps it in and confirms, and the reload
  reports success after the last confirmation. One refusal, or a process that
  does not answer, refuses the reload and nothing changes.
- **Restart-only keys** (``config.RESTART_KEYS``) keep their boot values in
  every process until the next cold start; a reload that changes one says so
  ("restart required since ...").
- **One-shot commands** use the running config while the appliance runs (and
  say so when the file differs), the file when it does not, or with
  ``--use-file``.

Every long-running process keeps a registration in Redis
(``appliance:proc:<role>:<host>:<pid>``, a few seconds' expiry renewed by a
watcher thread) that says which config version it runs; that set is what "the
appliance is running" means.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import redis

from appliance.config.diff import diff_configs
from appliance.config.env import appliance_env
from appliance.config.loader import Config, load_config, variable_values
from appliance.core.errors import ConfigError
from appliance.runtime import replica
from appliance.runtime.runtime import K_CONFIG_VERSION, K_RESTART_SINCE

log = logging.getLogger("appliance.configsync")

K_PROC = "appliance:proc:"
K_CANDIDATES = "appliance:config:candidates"  # ids of the candidates being validated
K_CANDIDATE = "appliance:config:candidate:"  # + id: hash {sealed, path}
K_ACK = "appliance:config:ack:"
PROC_TTL_S = 5
WATCH_INTERVAL_S = 0.25
ANSWER_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------- registrations

@dataclass
class Peer:
    ident: str
    role: str
    path: str
    version: int


def live(rt, path=None) -> dict[str, Peer]:
    """The live processes of the appliance running ``path`` (default: this
    runtime's config file), by ident."""
    want = str(path if path is not None else rt.config_path)
    out = {}
    r = rt.redis
    keys = list(r.scan_iter(K_PROC + "*", count=200))
    for key, raw in zip(keys, r.mget(keys) if keys else [], strict=False):
        if raw is None:
            continue
        try:
            d = json.loads(raw)
        except ValueError:
            continue
        if d.get("path") == want:
            ident = key.decode()[len(K_PROC):]
            out[ident] = Peer(ident, d.get("role", "?"), d["path"], int(d.get("version", 0)))
    return out


def forget_host(rt) -> int:
    """Drop the registrations of this host's processes for this config (the
    supervisor, once it stopped them all); the number dropped."""
    host = socket.gethostname()
    gone = [K_PROC + i for i, p in live(rt).items() if i.split(":")[1:2] == [host]]
    return rt.redis.delete(*gone) if gone else 0


def running(rt) -> bool:
    """Whether any process of the appliance is alive (False when Redis is down)."""
    try:
        return bool(live(rt))
    except redis.RedisError:
        return False


class Watcher:
    """This process's registration and its answers to candidates: a daemon
    thread (a greenlet under gevent) that also swaps in a new running config
    as soon as it is published, so that an idle process confirms at once."""

    def __init__(self, rt, role: str):
        self.rt = rt
        self.role = role
        self.ident = f"{role}:{socket.gethostname()}:{os.getpid()}"
        self.stop = threading.Event()
        self._answered: set[str] = set()
        self._thread: threading.Thread | None = None

    def start(self) -> Watcher:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            self.rt.redis.delete(K_PROC + self.ident)
        except redis.RedisError:
            pass

    def _body(self) -> str:
        return json.dumps({"role": self.role, "path": str(self.rt.config_path),
                           "version": self.rt.config_version(), "at": time.time()})

    def beat(self) -> None:
        self.rt.redis.set(K_PROC + self.ident, self._body(), ex=PROC_TTL_S)

    def _run(self) -> None:
        while not self.stop.wait(WATCH_INTERVAL_S):
            try:
                self.turn()
            except redis.RedisError:
                continue
            except Exception:  # the watcher must outlive one bad turn
                log.exception("config watcher")

    def turn(self) -> None:
        """One look: the registration renewed, the published version and the
        pending candidates read, in one round trip (in a web worker this runs
        four times a second beside the requests, so it stays one wake-up);
        a new version is swapped in and a new candidate answered."""
        pipe = self.rt.redis.pipeline(transaction=False)
        pipe.set(K_PROC + self.ident, self._body(), ex=PROC_TTL_S)
        pipe.get(K_CONFIG_VERSION)
        pipe.smembers(K_CANDIDATES)
        _, version, candidates = pipe.execute()
        if version is not None and int(version) != self.rt.config_version():
            self.rt.refresh_config()
            self.beat()  # the version it runs now, at once (a reload waits for it)
        if {c.decode() for c in candidates} - self._answered:
            self.answer(candidates)

    def answer(self, candidates=None) -> None:
        """Validate the pending candidates, if any, in this process's environment."""
        r = self.rt.redis
        for raw in r.smembers(K_CANDIDATES) if candidates is None else candidates:
            cid = raw.decode()
            if cid in self._answered:
                continue
            self._answered.add(cid)
            cand = r.hgetall(K_CANDIDATE + cid)
            if not cand or cand.get(b"path", b"").decode() != str(self.rt.config_path):
                continue
            r.hset(K_ACK + cid, self.ident,
                   json.dumps(validate(self.rt, cand[b"sealed"], salt=cid)))
            r.expire(K_ACK + cid, 120)


def digest(salt: str, value: str | None) -> str | None:
    """A variable's value as the processes compare it (never the value: the
    answers pass through Redis), salted by the candidate's id."""
    return None if value is None else hashlib.sha256(f"{salt}\0{value}".encode()).hexdigest()


def validate(rt, sealed: bytes, salt: str = "") -> dict:
    """A candidate checked as this process would run it: ``{"ok": True,
    "diff", "symbols", "vars"}`` or ``{"ok": False, "errors"}``; ``vars``:
    each ``${VAR}`` of the candidate -> ``digest`` of its value here."""
    try:
        text = rt.unseal(sealed)
        new = load_config(rt.config_path, text=text)
    except ConfigError as e:
        return {"ok": False, "errors": e.errors}
    except Exception as e:  # noqa: BLE001 - e.g. another data_dir's sealing key
        from cryptography.fernet import InvalidToken
        if isinstance(e, InvalidToken):
            return {"ok": False, "errors": [
                f"{rt.config_path}: the new config was sealed with another key than this "
                f"process's {rt.current_config().data_dir}/config.key: run the command with "
                f"the appliance's own data_dir (the same config file and user)"]}
        return {"ok": False, "errors": [f"{rt.config_path}: cannot open the candidate: "
                                        f"{e.__class__.__name__}: {e}"]}
    why = read_url_refusal(rt, new)
    if why:
        return {"ok": False, "errors": [why]}
    env = appliance_env(rt.config_path)
    return {"ok": True, "diff": diff_configs(rt.current_config(), new),
            "symbols": [[s.symbol, s.since.isoformat(), s.active, list(s.timeframes)]
                        for s in new.symbols],
            "vars": {n: digest(salt, v) for n, v in variable_values(text, env).items()}}


def read_url_refusal(rt, new: Config) -> str | None:
    """A new ``database.read_url`` must be a standby of this primary
    (``replica.verify``): the reason it is not, as a config error, or None."""
    url = new["database"].get("read_url") or ""
    if not url or url == (rt.current_config()["database"].get("read_url") or ""):
        return None
    why = replica.verify(url, rt.endpoints.database_url)
    return None if why is None else (f"{new.path}: at $.database.read_url: refused as a "
                                     f"replica of this database: {why}")


# --------------------------------------------------------------------------- proposing

def propose(rt, text: str) -> str:
    """Make ``text`` a candidate every live process validates; its id. Each
    candidate has its own id, so that a check and a reload at the same time
    do not take each other's answers."""
    cid = uuid.uuid4().hex
    pipe = rt.redis.pipeline()
    pipe.hset(K_CANDIDATE + cid, mapping={"sealed": rt.seal(text),
                                          "path": str(rt.config_path)})
    pipe.expire(K_CANDIDATE + cid, 300)
    pipe.sadd(K_CANDIDATES, cid)
    pipe.execute()
    return cid


def collect(rt, cid: str, peers: dict[str, Peer], timeout: float = ANSWER_TIMEOUT_S
            ) -> tuple[dict[str, dict], list[str]]:
    """The answers of ``peers`` to candidate ``cid``, and the idents that gave
    none within ``timeout`` (a process that went away meanwhile is not waited for)."""
    deadline = time.monotonic() + timeout
    waiting = set(peers)
    answers: dict[str, dict] = {}
    while True:
        got = rt.redis.hgetall(K_ACK + cid)
        for k, v in got.items():
            ident = k.decode()
            if ident in waiting:
                answers[ident] = json.loads(v)
                waiting.discard(ident)
        if waiting:
            alive = set(live(rt))
            waiting &= alive
        if not waiting or time.monotonic() > deadline:
            return answers, sorted(waiting)
        time.sleep(0.05)


def withdraw(rt, cid: str) -> None:
    pipe = rt.redis.pipeline()
    pipe.srem(K_CANDIDATES, cid)
    pipe.delete(K_CANDIDATE + cid)
    pipe.execute()


def confirmations(rt, peers: dict[str, Peer], version: int,
                  timeout: float = ANSWER_TIMEOUT_S) -> list[str]:
    """Wait until every peer still alive runs ``version``; the idents that do not."""
    deadline = time.monotonic() + timeout
    while True:
        now = live(rt)
        behind = sorted(i for i in peers if i in now and now[i].version < version)
        if not behind or time.monotonic() > deadline:
            return behind
        time.sleep(0.05)


def restart_since(rt) -> float | None:
    try:
        v = rt.redis.get(K_RESTART_SINCE)
    except redis.RedisError:
        return None
    return float(v) if v else None


def mark_restart_required(rt) -> float:
    rt.redis.set(K_RESTART_SINCE, str(time.time()), nx=True)
    return restart_since(rt) or time.time()


# --------------------------------------------------------------------------- starting

def start_service(rt, file_cfg: Config | None, *, join: bool = False) -> str:
    """How a long-running process takes its config: joins the running
    appliance (``join``, or when other processes are alive), else starts it
    cold from the file. Returns "joined" or "booted"."""
    if join or running(rt):
        rt.adopt_running_config()
        return "joined"
    if file_cfg is None:
        raise ConfigError([f"{rt.config_path}: the appliance is not running and the file "
                           f"does not validate; fix it and start again"])
    rt.publish_config(file_cfg, boot=True)
    return "booted"


def file_differs(rt, file_cfg: Config | None) -> bool:
    """Whether appliance.yaml differs from the config the appliance runs."""
    return file_cfg is None or file_cfg.sha256 != rt.current_config().sha256


def shell_warnings(text: str, salt: str, answers: dict[str, dict], caller_env) -> list[str]:
    """The variables of ``text`` the caller's shell sets (VAR or VAR_FILE)
    to a value the running processes do not have (they have none and use the
    default, or another one): a value exported only in the operator's shell
    does not reach the appliance, and the command says so."""
    if not caller_env:
        return []
    mine = variable_values(text, {k: v for k, v in caller_env.items()})
    out = []
    for name, value in mine.items():
        if name not in caller_env and name + "_FILE" not in caller_env:
            continue
        theirs = {a.get("vars", {}).get(name, "?") for a in answers.values()}
        if theirs != {digest(salt, value)}:
            how = ("do not have it and use the default" if theirs == {None}
                   else "have another value")
            out.append(f"warning: {name} is set in your shell, but the appliance's processes "
                       f"{how}; your shell's value is not used: put it in appliance.env "
                       f"(beside appliance.yaml) or use {name}_FILE, then reload again")
    return out


def hints(errors: list[str], caller_env) -> list[str]:
    """For a refusal by the running processes: the variables the caller has
    in its shell but the appliance's processes do not."""
    out = []
    for name in sorted({m for e in errors
                        for m in re.findall(r"\b(?:variable |set )([A-Z_][A-Z0-9_]*)", e)}):
        if name in caller_env or name + "_FILE" in caller_env:
            out.append(f"{name} is set in your shell but not in the appliance's environment: "
                       f"put it in appliance.env (beside appliance.yaml) or use {name}_FILE")
    return out
