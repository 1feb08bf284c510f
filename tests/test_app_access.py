"""The app refuses to serve beyond localhost without a login, and asks to log in with one."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"redirect_uri": "https://sde.example.org/oauth2callback",
        "cookie_secret": "0123456789abcdef0123456789abcdef",
        "client_id": "sde", "client_secret": "s3cret",
        "server_metadata_url": "https://idp.example.org/.well-known/openid-configuration"}


@pytest.fixture
def bound(monkeypatch, tmp_path):
    """Run app.py as if started with ``--server.address ADDRESS``; restores the option."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SKIN_CORE_HOME", str(tmp_path))
    monkeypatch.setenv("SKIN_CORE_STATE_DIR", str(tmp_path / "state"))
    before = config.get_option("server.address")

    def make(address: str | None, secrets: dict | None = None, page: str | None = None):
        config.set_option("server.address", address)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        for k, v in (secrets or {}).items():
            at.secrets[k] = v
        at.run()
        if page is not None:
            at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield make
    config.set_option("server.address", before)


def _content(at: AppTest) -> list[str]:
    return [t.value for t in at.title] + [m.label for m in at.metric]


def test_localhost_serves_without_login(bound):
    at = bound("localhost")
    assert "Skin Disease Expert" in _content(at) and not at.error
    assert "Log in" not in [b.label for b in at.button]


@pytest.mark.parametrize("page", [None, "pages/predict.py", "pages/training.py"])
def test_bound_to_every_interface_without_auth_refuses_and_shows_nothing_else(bound, page):
    at = bound("0.0.0.0", page=page)
    assert len(at.error) == 1
    msg = at.error[0].value
    assert msg.startswith("The app is bound to 0.0.0.0, which other machines can reach, and no "
                          "login is configured")
    assert "--server.address localhost" in msg
    assert _content(at) == [] and not at.button and not at.file_uploader


def test_bound_elsewhere_with_auth_asks_to_log_in_first(bound, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import pages._ui as ui

    monkeypatch.setattr(ui, "authlib_installed", lambda: True)  # st.login's dependency
    at = bound("0.0.0.0", secrets={"auth": AUTH}, page="pages/predict.py")
    assert not at.error
    assert [b.label for b in at.button] == ["Log in"]
    assert _content(at) == ["Skin Disease Expert"] and not at.file_uploader
    assert any("Log in to use the app" in i.value for i in at.info)


def test_configured_login_without_authlib_is_refused_and_says_what_to_install(bound,
                                                                              monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import pages._ui as ui

    monkeypatch.setattr(ui, "authlib_installed", lambda: False)
    at = bound("0.0.0.0", secrets={"auth": AUTH})
    assert len(at.error) == 1 and "Authlib" in at.error[0].value and not at.button
