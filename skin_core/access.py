"""Who may open the app: no login on localhost, OpenID Connect login everywhere else.

The app serves diagnoses of patients' images, so it must not be open to a network without
authentication. :func:`access_decision` takes the address the Streamlit server binds to
(``server.address``) and the app's secrets (``.streamlit/secrets.toml``) and decides:

- bound to a loopback address (``localhost``, ``127.0.0.0/8``, ``::1``): open, no login;
- bound to any other address (``0.0.0.0``, a host name, a LAN address, or no address at all,
  which Streamlit takes as *every* interface): only with Streamlit's built-in OpenID Connect
  login (``st.login``) configured in the ``[auth]`` section of the secrets, and then every
  visitor must be logged in; otherwise the app refuses to serve anything and says why.

The module is plain Python (no Streamlit import): ``pages/_ui.py`` reads the option and the
secrets and enforces the decision in the app; ``python -m skin_core.access [streamlit args]``
(:func:`main`) makes the same decision from the files before the server starts, so a launcher
can refuse to start at all. See the README's *Access* section for ``secrets.toml``.

Example
-------
>>> access_decision("localhost", {}).allowed
True
>>> d = access_decision("0.0.0.0", {})
>>> d.allowed, d.reason[:47]
(False, 'The app is bound to 0.0.0.0, which other machin')
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Settings every OIDC provider needs (in ``[auth]`` or in ``[auth.<provider>]``).
PROVIDER_KEYS: tuple[str, ...] = ("client_id", "client_secret", "server_metadata_url")
#: Settings shared by every provider, in ``[auth]`` itself.
SHARED_KEYS: tuple[str, ...] = ("redirect_uri", "cookie_secret")

#: Mappings inside ``[auth]`` that are options of the default provider, not providers.
_NOT_PROVIDERS = frozenset({"client_kwargs"})
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                          "ip6-loopback"})


@dataclass(frozen=True)
class AccessDecision:
    """Whether the app may serve, and whether visitors must log in.

    Attributes
    ----------
    allowed: the app may serve pages at all.
    login_required: every visitor must be logged in (``st.user.is_logged_in``) first.
    providers: the configured provider names for ``st.login(name)``; ``(None,)`` for a
        provider configured directly in ``[auth]``. Empty when no login is configured.
    reason: one sentence: why the app refuses, or why no login is needed / which applies.
    """

    allowed: bool
    login_required: bool
    providers: tuple[str | None, ...] = ()
    reason: str = ""


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` (Streamlit's ``server.address``) only accepts local connections.

    ``None`` or an empty address means every interface (Streamlit's default): not loopback.
    """
    if address is None:
        return False
    a = str(address).strip().strip("[]").lower()
    if not a:
        return False
    if a in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(a).is_loopback
    except ValueError:
        return False  # a host name other than localhost: reachable from elsewhere


def _complete(section: Mapping[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The ``keys`` missing (or empty) in ``section``."""
    return [k for k in keys if not str(section.get(k) or "").strip()]


def configured_providers(secrets: Mapping[str, Any] | None) -> tuple[tuple[str | None, ...],
                                                                    list[str]]:
    """The complete OIDC providers of ``secrets["auth"]`` and what is missing otherwise.

    Returns
    -------
    (providers, missing)
        ``providers``: ``None`` for a provider given directly in ``[auth]`` and the name of
        every ``[auth.<name>]`` section with :data:`PROVIDER_KEYS`; empty when the shared
        :data:`SHARED_KEYS` are missing. ``missing``: the settings lacking, as
        ``auth.<key>`` / ``auth.<name>.<key>``, for the refusal message.
    """
    auth = (secrets or {}).get("auth")
    if not isinstance(auth, Mapping):
        return (), ["[auth] section"]
    missing = [f"auth.{k}" for k in _complete(auth, SHARED_KEYS)]
    providers: list[str | None] = []
    partial: list[str] = []
    if not _complete(auth, PROVIDER_KEYS):
        providers.append(None)
    elif any(k in auth for k in PROVIDER_KEYS):
        partial += [f"auth.{k}" for k in _complete(auth, PROVIDER_KEYS)]
    for name, section in auth.items():
        if isinstance(section, Mapping) and name not in _NOT_PROVIDERS:
            lacking = _complete(section, PROVIDER_KEYS)
            if lacking:
                partial += [f"auth.{name}.{k}" for k in lacking]
            else:
                providers.append(str(name))
    if not providers:
        missing += partial or [f"a provider ({', '.join(PROVIDER_KEYS)})"]
    return (tuple(providers) if not _complete(auth, SHARED_KEYS) else ()), missing


def access_decision(address: str | None, secrets: Mapping[str, Any] | None, *,
                    authlib_available: bool = True) -> AccessDecision:
    """Decide whether the app may serve on ``address`` with these ``secrets``.

    Parameters
    ----------
    address:
        Streamlit's ``server.address`` (``st.get_option("server.address")``: the
        ``--server.address`` flag, ``STREAMLIT_SERVER_ADDRESS`` or ``.streamlit/config.toml``).
    secrets:
        The app's secrets as a plain mapping (``st.secrets.to_dict()``; ``{}`` when there is
        no ``secrets.toml``).
    authlib_available:
        Whether ``Authlib`` (which ``st.login`` needs) is installed.

    Returns
    -------
    AccessDecision
        On loopback: allowed, no login. Elsewhere: allowed with ``login_required`` when the
        ``[auth]`` section is complete and Authlib is installed; refused otherwise, with a
        ``reason`` that names what is missing and how to fix it.
    """
    if is_loopback(address):
        return AccessDecision(True, False, reason=f"The app is bound to {address} (this "
                              "machine only), so no login is needed.")
    where = str(address).strip() if address and str(address).strip() else "every interface"
    providers, missing = configured_providers(secrets)
    fix = ("bind it to localhost (--server.address localhost) or configure Streamlit's login in "
           ".streamlit/secrets.toml (see the README's Access section)")
    if not providers:
        return AccessDecision(
            False, False,
            reason=f"The app is bound to {where}, which other machines can reach, and no login "
            f"is configured (missing {', '.join(missing)}); refusing to serve patient images "
            f"without authentication: {fix}.")
    if not authlib_available:
        return AccessDecision(
            False, False, providers,
            reason=f"The app is bound to {where} and a login is configured, but Authlib, which "
            "Streamlit's login needs, is not installed; install it (pip install "
            "'Authlib>=1.3.2') or bind the app to localhost.")
    return AccessDecision(True, True, providers,
                          reason=f"The app is bound to {where}: every visitor must log in.")


# --------------------------------------------------------------------------------------------
# pre-flight check before `streamlit run` (run.sh)


def _toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def bind_address(argv: Sequence[str], root: str | os.PathLike[str] = ".") -> str | None:
    """The ``server.address`` ``streamlit run ARGV`` would bind to: the flag, else
    ``$STREAMLIT_SERVER_ADDRESS``, else ``ROOT/.streamlit/config.toml``, else ``None`` (every
    interface)."""
    args = list(argv)
    for i, a in enumerate(args):
        if a == "--server.address" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--server.address="):
            return a.split("=", 1)[1]
    if os.environ.get("STREAMLIT_SERVER_ADDRESS") is not None:
        return os.environ["STREAMLIT_SERVER_ADDRESS"]
    server = _toml(Path(root) / ".streamlit" / "config.toml").get("server") or {}
    return server.get("address")


def preflight(argv: Sequence[str], root: str | os.PathLike[str] = ".") -> AccessDecision:
    """:func:`access_decision` for ``streamlit run ARGV`` started in ``root``, from the files
    Streamlit reads (``.streamlit/secrets.toml`` there or in the home folder)."""
    import importlib.util

    secrets: dict[str, Any] = {}
    for path in (Path.home() / ".streamlit" / "secrets.toml",
                 Path(root) / ".streamlit" / "secrets.toml"):
        secrets.update(_toml(path))
    return access_decision(bind_address(argv, root), secrets,
                           authlib_available=importlib.util.find_spec("authlib") is not None)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m skin_core.access [STREAMLIT ARGS...]``: exit 2 with the reason when the app
    would refuse to serve, 0 otherwise (``run.sh`` calls it before ``streamlit run``)."""
    decision = preflight(sys.argv[1:] if argv is None else argv)
    if not decision.allowed:
        print(f"skin-core: {decision.reason}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised by a subprocess test
    raise SystemExit(main())
