"""Who may open the app: open on loopback, login elsewhere, refusal without a configured login."""

from __future__ import annotations

import pytest

from skin_core.access import access_decision, configured_providers, is_loopback

AUTH = {"redirect_uri": "https://sde.example.org/oauth2callback",
        "cookie_secret": "a-long-random-secret-of-32-bytes-or-more"}
GOOGLE = {"client_id": "id", "client_secret": "secret",
          "server_metadata_url": "https://accounts.google.com/.well-known/openid-configuration"}


@pytest.mark.parametrize("address,local", [
    ("localhost", True), ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
    ("[::1]", True), (" LOCALHOST ", True),
    ("0.0.0.0", False), ("::", False), ("", False), (None, False), ("192.168.1.20", False),
    ("sde.example.org", False),
])
def test_loopback_addresses(address, local):
    assert is_loopback(address) is local


def test_localhost_needs_no_login_even_without_secrets():
    d = access_decision("localhost", {})
    assert d.allowed and not d.login_required and "no login is needed" in d.reason


@pytest.mark.parametrize("address", ["0.0.0.0", "", None, "10.0.0.5"])
def test_other_addresses_without_auth_are_refused_with_the_fix(address):
    d = access_decision(address, {})
    assert not d.allowed and not d.login_required
    assert "no login is configured" in d.reason and "[auth] section" in d.reason
    assert "--server.address localhost" in d.reason and "secrets.toml" in d.reason
    assert ("every interface" in d.reason) == (not address)


def test_default_provider_in_auth_section_requires_login():
    d = access_decision("0.0.0.0", {"auth": {**AUTH, **GOOGLE}})
    assert d.allowed and d.login_required and d.providers == (None,)


def test_named_providers_are_listed_and_incomplete_ones_ignored():
    secrets = {"auth": {**AUTH, "google": GOOGLE,
                        "okta": {"client_id": "x", "client_secret": "y"}}}
    d = access_decision("0.0.0.0", secrets)
    assert d.allowed and d.providers == ("google",)


def test_incomplete_auth_names_what_is_missing():
    providers, missing = configured_providers({"auth": {"redirect_uri": "https://x/oauth2callback",
                                                        "okta": {"client_id": "x"}}})
    assert providers == ()
    assert "auth.cookie_secret" in missing
    assert "auth.okta.client_secret" in missing and "auth.okta.server_metadata_url" in missing
    d = access_decision("0.0.0.0", {"auth": {"google": GOOGLE}})  # no shared settings
    assert not d.allowed and "auth.redirect_uri" in d.reason and "auth.cookie_secret" in d.reason
    d = access_decision("0.0.0.0", {"auth": {**AUTH, "client_kwargs": {"prompt": "login"}}})
    assert not d.allowed and "a provider (client_id" in d.reason  # options are no provider


def test_configured_login_without_authlib_is_refused():
    d = access_decision("0.0.0.0", {"auth": {**AUTH, **GOOGLE}}, authlib_available=False)
    assert not d.allowed and "Authlib" in d.reason


def _preflight(tmp_path, *args, config=None, secrets=None, env=None):
    import os
    import subprocess
    import sys

    st = tmp_path / ".streamlit"
    st.mkdir(exist_ok=True)
    if config is not None:
        (st / "config.toml").write_text(config)
    if secrets is not None:
        (st / "secrets.toml").write_text(secrets)
    e = {k: v for k, v in os.environ.items() if k != "STREAMLIT_SERVER_ADDRESS"}
    e.update(HOME=str(tmp_path), **(env or {}))
    return subprocess.run([sys.executable, "-m", "skin_core.access", *args], cwd=tmp_path,
                          env=e, capture_output=True, text=True, timeout=60)


def test_preflight_refuses_to_start_beyond_localhost_without_auth(tmp_path):
    local = _preflight(tmp_path, config='[server]\naddress = "localhost"\n')
    assert local.returncode == 0 and not local.stderr
    wide = _preflight(tmp_path, "--server.port", "8600", "--server.address", "0.0.0.0")
    assert wide.returncode == 2 and "no login is configured" in wide.stderr
    by_env = _preflight(tmp_path, env={"STREAMLIT_SERVER_ADDRESS": "10.1.2.3"})
    assert by_env.returncode == 2 and "bound to 10.1.2.3" in by_env.stderr
    (tmp_path / ".streamlit" / "config.toml").write_text("[server]\nheadless = true\n")
    assert "every interface" in _preflight(tmp_path).stderr  # no address: all interfaces


def test_bind_address_resolution(tmp_path, monkeypatch):
    from skin_core.access import bind_address

    monkeypatch.delenv("STREAMLIT_SERVER_ADDRESS", raising=False)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text('[server]\naddress = "localhost"\n')
    assert bind_address([], tmp_path) == "localhost"
    assert bind_address(["--server.address=0.0.0.0"], tmp_path) == "0.0.0.0"
    monkeypatch.setenv("STREAMLIT_SERVER_ADDRESS", "::")
    assert bind_address([], tmp_path) == "::"
    assert bind_address(["--server.address", "127.0.0.1"], tmp_path) == "127.0.0.1"


def test_preflight_reads_the_secrets_file(tmp_path):
    import importlib.util

    secrets = "[auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in {**AUTH, **GOOGLE}.items())
    res = _preflight(tmp_path, "--server.address", "0.0.0.0", secrets=secrets)
    if importlib.util.find_spec("authlib") is None:
        assert res.returncode == 2 and "Authlib" in res.stderr
    else:
        assert res.returncode == 0 and not res.stderr
