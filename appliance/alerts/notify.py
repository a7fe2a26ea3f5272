"""Alert notifications: a JSON webhook and e-mail (STARTTLS verified), each
failure recorded as an event without its secrets."""
from __future__ import annotations

import json
import logging
import smtplib
import ssl
from email.message import EmailMessage

import requests

from appliance import store

log = logging.getLogger("appliance.alerts")


def _payload(event: str, row: dict) -> dict:
    return {"event": event, "key": row["key"], "severity": row["severity"],
            "status": row["status"], "message": row["message"], "details": row["details"],
            "opened_at": row.get("opened_at"), "resolved_at": row.get("resolved_at"),
            "source": "market-data-appliance"}


def send(rt, event: str, row: dict) -> None:
    """Tell the webhook and the e-mail recipients that ``row`` opened or resolved."""
    cfg = rt.config["alerts"]
    body = _payload(event, row)
    if cfg["webhook"]["url"]:
        try:
            r = requests.post(cfg["webhook"]["url"], data=json.dumps(body, default=str),
                              headers={"Content-Type": "application/json"},
                              timeout=cfg["webhook"]["timeout_seconds"])
            r.raise_for_status()
        except Exception as e:  # noqa: BLE001 - a notifier never blocks the rules
            _notifier_failed(rt, "webhook", e)
    em = cfg["email"]
    if em["smtp_host"] and em["to"]:
        try:
            msg = EmailMessage()
            msg["Subject"] = (f"[{row['severity'].upper()}] {row['key']} "
                              f"{'opened' if event == 'open' else 'resolved'}")
            msg["From"] = em["from"] or "appliance@localhost"
            msg["To"] = ", ".join(em["to"])
            msg.set_content(json.dumps(body, indent=2, default=str))
            with smtplib.SMTP(em["smtp_host"], em["smtp_port"], timeout=10) as s:
                if em["starttls"]:
                    s.starttls(context=smtp_tls_context(em))
                if em["username"]:
                    s.login(em["username"], em["password"])
                s.send_message(msg)
        except Exception as e:  # noqa: BLE001
            _notifier_failed(rt, "email", e)


def smtp_tls_context(em) -> ssl.SSLContext:
    """STARTTLS verifies the server's certificate and name: against the system's
    CAs, or ``alerts.email.ca_file`` for a private CA. ``verify_tls: false``
    (a lab server only) turns the check off."""
    ctx = ssl.create_default_context(cafile=em.get("ca_file") or None)
    if not em.get("verify_tls", True):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _failure_text(which: str, e: Exception) -> str:
    """What went wrong, without the exception's text: a webhook's URL (the
    credential) and an SMTP server's replies must not reach the events."""
    detail = e.__class__.__name__
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is not None:
        detail += f" (HTTP {status})"
    if isinstance(e, ssl.SSLCertVerificationError):
        detail += f" ({e.verify_message})"
    elif isinstance(e, smtplib.SMTPResponseException):
        detail += f" (SMTP {e.smtp_code})"
    return f"{which} notification failed: {detail}"


def _notifier_failed(rt, which: str, e: Exception) -> None:
    text = _failure_text(which, e)
    log.warning("alert %s", text)
    try:
        with rt.conn() as conn:
            store.add_event(conn, "warning", "alert", text[:500])
    except Exception:  # noqa: BLE001
        pass
