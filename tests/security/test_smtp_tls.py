"""Finding 2: STARTTLS verifies the SMTP server's certificate; a private CA
can be named with alerts.email.ca_file. A loopback SMTP server (aiosmtpd)
with a certificate no system CA signed would otherwise get the password."""
from __future__ import annotations

import ssl

import psycopg
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from appliance.alerts import notify
from appliance.runtime.runtime import Runtime

from .helpers import free_port, secured

PASSWORD = "smtp-password-not-for-strangers"
ROW = {"key": "backup_stale", "severity": "warning", "status": "open", "message": "m",
       "details": {}}


@pytest.fixture
def smtp_server(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    seen = {"auth": [], "mail": []}

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            seen["mail"].append(envelope.content)
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        seen["auth"].append(auth_data.password.decode() if isinstance(auth_data.password, bytes)
                            else auth_data.password)
        return AuthResult(success=True)

    port = free_port()
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=ctx,
                     require_starttls=True, authenticator=authenticator, auth_require_tls=True)
    ctl.start()
    try:
        yield port, ca_file, seen
    finally:
        ctl.stop()


def _email(port, **extra) -> dict:
    return {"email": {"smtp_host": "127.0.0.1", "smtp_port": port, "starttls": True,
                      "username": "appliance", "password": PASSWORD, "from": "a@example.org",
                      "to": ["ops@example.org"], **extra}}


def _notify(cfg_path):
    rt = Runtime.from_path(cfg_path)
    try:
        rt.open()
        notify.send(rt, "open", dict(ROW))
    finally:
        rt.close()


def test_a_self_signed_starttls_server_is_refused(config_factory, database_url, smtp_server):
    port, _ca, seen = smtp_server
    _notify(config_factory(server=secured(), alerts=_email(port)))
    assert seen["auth"] == [] and seen["mail"] == []  # the password never left
    with psycopg.connect(database_url) as conn:
        msgs = [r[0] for r in conn.execute("SELECT message FROM events WHERE kind = 'alert'")]
    assert any("email notification failed: SSLCertVerificationError" in m for m in msgs), msgs
    assert not any(PASSWORD in m for m in msgs)


def test_a_server_signed_by_the_configured_ca_file_is_trusted(config_factory, smtp_server):
    port, ca_file, seen = smtp_server
    _notify(config_factory(server=secured(), alerts=_email(port, ca_file=str(ca_file))))
    assert seen["auth"] == [PASSWORD] and len(seen["mail"]) == 1
