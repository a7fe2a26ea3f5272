"""A webhook URL's basic-auth password is masked like its path (issue 24, 3)."""
from __future__ import annotations

import pytest

from appliance.config.redaction import MASK, mask_webhook, redact

from .helpers import ADMIN_TOKEN, app_for, secured

HOOK = "https://hookuser:HOOKPASSWORD123@hooks.example/services/T0/B0/xyzzyHOOKSECRET"


@pytest.mark.parametrize("url, shown", [
    (HOOK, f"https://hookuser:{MASK}@hooks.example/{MASK}"),
    ("https://hookuser:pa@ss:wd@hooks.example/x", f"https://hookuser:{MASK}@hooks.example/{MASK}"),
    ("https://TOKENONLY123@hooks.example/x", f"https://{MASK}@hooks.example/{MASK}"),
    ("https://hooks.example:8443/services/x", f"https://hooks.example:8443/{MASK}"),
    ("https://hooks.example", f"https://hooks.example/{MASK}"),
])
def test_mask_webhook_hides_the_userinfo_password_and_the_path(url, shown):
    assert mask_webhook(url) == shown


def test_the_masked_config_shows_no_webhook_password(config_factory):
    app, rt = app_for(config_factory(server=secured(), alerts={"webhook": {"url": HOOK}}))
    try:
        c = app.test_client()
        body = c.get("/api/v1/config").get_data(as_text=True)
        assert "HOOKPASSWORD123" not in body and "xyzzyHOOKSECRET" not in body
        assert c.get("/api/v1/config").get_json()["config"]["alerts"]["webhook"]["url"] == \
            f"https://hookuser:{MASK}@hooks.example/{MASK}"
        page = c.get("/config").get_data(as_text=True)
        assert "HOOKPASSWORD123" not in page and ADMIN_TOKEN not in page
        # and a message quoting the password alone loses it
        assert "HOOKPASSWORD123" not in redact("webhook said: bad password HOOKPASSWORD123")
    finally:
        rt.close()
