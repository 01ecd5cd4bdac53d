"""Optional single sign-on with one OpenID Connect provider, configured from the environment.

``SIGNOFF_OIDC_SERVER_URL``, ``SIGNOFF_OIDC_CLIENT_ID`` and ``SIGNOFF_OIDC_CLIENT_SECRET`` (or
``SIGNOFF_OIDC_CLIENT_SECRET_FILE``) turn it on; ``SIGNOFF_OIDC_PROVIDER_ID`` names it in the callback
address (``/accounts/oidc/<id>/login/callback/``, to register at the provider) and ``SIGNOFF_OIDC_NAME`` on
the login page's button. With none of them set there is no provider, hence no button and no sign-up through
SSO. Kept apart from ``settings.py`` so that it can be tested without reloading the settings.
"""

from __future__ import annotations

import re
from typing import Any

from config.env import env_secret, env_str

DEFAULT_PROVIDER_ID = "sso"
DEFAULT_NAME = "SSO"
# The provider id is a URL path segment of the callback address the provider redirects to.
PROVIDER_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def oidc_providers_from_env() -> dict[str, Any]:
    """``SOCIALACCOUNT_PROVIDERS`` for the configured OpenID Connect provider, or ``{}`` when none is.

    A half-done configuration is an error naming what is missing, rather than a login page that silently
    lacks its SSO button.
    """
    server_url = env_str("SIGNOFF_OIDC_SERVER_URL").rstrip("/")
    client_id = env_str("SIGNOFF_OIDC_CLIENT_ID")
    secret = env_secret("SIGNOFF_OIDC_CLIENT_SECRET")
    given = {
        "SIGNOFF_OIDC_SERVER_URL": server_url,
        "SIGNOFF_OIDC_CLIENT_ID": client_id,
        "SIGNOFF_OIDC_CLIENT_SECRET": secret,
    }
    if not any(given.values()):
        return {}
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ValueError(f"OpenID Connect sign-in is half configured: set {', '.join(missing)} too")
    if not server_url.startswith(("https://", "http://")):
        raise ValueError(f"SIGNOFF_OIDC_SERVER_URL must be an http(s) address, got {server_url!r}")
    provider_id = env_str("SIGNOFF_OIDC_PROVIDER_ID", DEFAULT_PROVIDER_ID)
    if not PROVIDER_ID_PATTERN.fullmatch(provider_id):
        raise ValueError(
            "SIGNOFF_OIDC_PROVIDER_ID must be lower-case letters, digits, '-' or '_' (it is part of the "
            f"callback address), got {provider_id!r}"
        )
    app = {
        "provider_id": provider_id,
        "name": env_str("SIGNOFF_OIDC_NAME", DEFAULT_NAME),
        "client_id": client_id,
        "secret": secret,
        # The discovery document is read from <server_url>/.well-known/openid-configuration.
        "settings": {"server_url": server_url},
    }
    # PKCE costs nothing and protects the code exchange even for confidential clients.
    return {"openid_connect": {"OAUTH_PKCE_ENABLED": True, "APPS": [app]}}
