"""Signoff settings, read from the environment only.

With no environment at all Signoff runs on its embedded default: SQLite in ``.signoff/``, the in-memory
channel layer, a local-memory cache and Celery tasks run in-process. ``DATABASE_URL`` switches to
PostgreSQL; ``REDIS_URL`` switches the channel layer, the cache and the Celery broker to Redis.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dj_database_url

from config.env import (
    env_bool,
    env_float,
    env_int,
    env_list,
    env_secret,
    env_str,
    local_secret_key,
)
from config.sso import oidc_providers_from_env

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = Path(env_str("SIGNOFF_STATE_DIR", str(BASE_DIR / ".signoff")))

DEBUG = env_bool("SIGNOFF_DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY") or local_secret_key(STATE_DIR)
# Earlier keys, comma separated, still accepted for what they signed while a new key rolls out.
SECRET_KEY_FALLBACKS = [key.strip() for key in env_secret("SECRET_KEY_FALLBACKS").split(",") if key.strip()]
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# The public address of this server, used in printed bridge configs and links.
SIGNOFF_PUBLIC_URL = env_str("SIGNOFF_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
# Unset, pages build the address from the request instead (commands fall back to the default above).
SIGNOFF_PUBLIC_URL_SET = bool(env_str("SIGNOFF_PUBLIC_URL"))

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    # Installed always (stable migrations); without SIGNOFF_OIDC_* there is no provider, hence no SSO.
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "approvals",
]

MIDDLEWARE = [
    # First: every later middleware's log lines already carry the request id (approvals/logging.py).
    "approvals.logging.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every response (Django 5.2 has none built in; docs/security.md).
    "approvals.security.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "approvals.two_factor.MfaRequiredRedirectMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "approvals.context_processors.current_team",
                "approvals.context_processors.two_factor",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
else:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SIGNOFF_SQLITE_PATH", str(STATE_DIR / "signoff.sqlite3")),
            # Kept open between frames: each websocket frame's database work would otherwise reconnect
            # and re-run the set-up below, which cost more than the frame's own queries.
            "CONN_MAX_AGE": 60,
            "OPTIONS": {
                # Several threads (and the test process) write: wait for the lock instead of failing,
                # take the write lock up front, and let readers proceed during writes.
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, cache, Celery ------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
SIGNOFF_CHANNEL_PREFIX = env_str("SIGNOFF_CHANNEL_PREFIX", "signoff")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 defaults socket_timeout to 5 s, which aborts the layer's blocking BZPOPMIN
                # on idle sockets (channels_redis#422): a blocking read must have no client timeout.
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "prefix": SIGNOFF_CHANNEL_PREFIX,
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": SIGNOFF_CHANNEL_PREFIX,
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = False
else:
    # As the Redis layer: a channel keeps up to 1,000 messages (the default 100 dropped queue updates to
    # reviewers' pages when hundreds of calls were held at once: bench/reviewers.py).
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE = {
    "expire-due-calls": {"task": "approvals.tasks.expire_due_calls", "schedule": 2.0},
    # Payload retention (approvals/services/retention.py); the embedded default's sweeper runs it instead.
    "purge-payloads": {"task": "approvals.tasks.purge_payloads", "schedule": 3600.0},
}

# --- Signoff behaviour ----------------------------------------------------------------------------
# Seconds between sweeps for held calls past their deadline, run inside each web process. On by default
# in the embedded setup (no Celery worker there); with Redis, Celery beat sweeps and this is off.
SIGNOFF_INPROCESS_SWEEP_SECONDS = env_float("SIGNOFF_INPROCESS_SWEEP_SECONDS", 0.0 if REDIS_URL else 1.0)
SIGNOFF_DEFAULT_DEADLINE_SECONDS = env_int("SIGNOFF_DEFAULT_DEADLINE_SECONDS", 600)
# A held call whose bridge disconnected (killed, laptop closed) is cancelled after this many seconds unless a
# bridge of its token reconnects and follows it again. Keep it above the bridges' --reconnect-grace (10 s).
SIGNOFF_DETACHED_CALL_GRACE_SECONDS = env_float("SIGNOFF_DETACHED_CALL_GRACE_SECONDS", 30.0)
# Seconds between payload-retention runs of the in-process sweeper (embedded default; Celery beat runs it
# hourly with Redis). The first run is at start-up.
SIGNOFF_RETENTION_INTERVAL_SECONDS = env_float("SIGNOFF_RETENTION_INTERVAL_SECONDS", 3600.0)

# --- Operators: /metrics, /healthz, /readyz (docs/operations.md) --------------------------------------
# Bearer token a Prometheus scraper sends to /metrics. Unset: /metrics answers loopback addresses only.
SIGNOFF_METRICS_TOKEN = env_secret("SIGNOFF_METRICS_TOKEN")
# signoff_calls_recent counts the calls that arrived in this many hours.
SIGNOFF_METRICS_WINDOW_HOURS = env_int("SIGNOFF_METRICS_WINDOW_HOURS", 24)
# The database aggregates behind /metrics are shared (Django cache) this long by every process's scrape.
SIGNOFF_METRICS_CACHE_SECONDS = env_float("SIGNOFF_METRICS_CACHE_SECONDS", 10.0)
# Notification webhooks may post to loopback, private and link-local addresses (SSRF defence when off: an
# admin's webhook URL must not reach the server's own network, e.g. a cloud metadata service). Default off.
SIGNOFF_WEBHOOK_ALLOW_PRIVATE = env_bool("SIGNOFF_WEBHOOK_ALLOW_PRIVATE", False)

# --- Accounts (django-allauth) --------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_ADAPTER = "approvals.adapters.ClosedSignupAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = env_str("SIGNOFF_EMAIL_VERIFICATION", "mandatory")
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGOUT_ON_GET = False
ACCOUNT_SESSION_REMEMBER = None
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "approvals:queue"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"

# Two-factor authentication: an authenticator app (TOTP), with recovery codes as its fallback. A team may
# require it of its reviewers and admins (Team.require_mfa, enforced in approvals/access.py).
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "Signoff"
# One 30-second step either side: phones whose clocks drift a little still log in.
MFA_TOTP_TOLERANCE = 1

# Optional OpenID Connect single sign-on (config/sso.py). It signs in existing people only: the adapter
# connects a provider account to the user with the same provider-verified email and refuses anyone else.
SOCIALACCOUNT_PROVIDERS = oidc_providers_from_env()
SOCIALACCOUNT_ADAPTER = "approvals.social_adapters.ExistingUsersSocialAccountAdapter"
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False  # matching by email is the adapter's job, without wiping passwords
SOCIALACCOUNT_STORE_TOKENS = False

if env_str("EMAIL_HOST"):
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = env_str("EMAIL_HOST")
    EMAIL_PORT = env_int("EMAIL_PORT", 587)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
    EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
elif env_str("SIGNOFF_EMAIL_DIR"):
    # Each mail as a file in this folder (tests read the links a real server sent).
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = env_str("SIGNOFF_EMAIL_DIR")
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "signoff@localhost")

# Login rate limits (allauth's defaults, spelled out so that nobody turns them off unknowingly): per IP and
# per address, failed logins are refused for a while with "Too many failed login attempts".
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",
    "login_failed": "10/m/ip,5/300s/key",
    "signup": "20/m/ip",
    "reset_password": "20/m/ip,5/m/key",
    "reset_password_from_key": "20/m/ip",
    "confirm_email": "1/180s/key",
    "change_password": "5/m/user",
    "manage_email": "10/m/user",
    "reauthenticate": "10/m/user",
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Security (docs/security.md) -------------------------------------------------------------------
# Served over HTTPS when the public address says so: then HSTS and secure cookies are on by default.
SIGNOFF_HTTPS = SIGNOFF_PUBLIC_URL.startswith("https://")
# Trust X-Forwarded-Proto: https only from a TLS-terminating proxy that sets it (a client could forge it).
SIGNOFF_TRUST_PROXY_TLS_HEADER = env_bool("SIGNOFF_TRUST_PROXY_TLS_HEADER", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if SIGNOFF_TRUST_PROXY_TLS_HEADER else None


# The reverse proxies whose X-Forwarded-For (the client's address) is believed: CIDR networks, comma
# separated; empty: none, every request's address is its TCP peer's. From a peer outside them,
# X-Forwarded-For and X-Forwarded-Proto are dropped before Django or a consumer sees them
# (approvals/proxies.py, docs/deploy.md).
def _network(name: str, text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a network, e.g. 10.0.0.0/8, 172.17.0.1, fd00::1") from None


SIGNOFF_TRUSTED_PROXIES = [
    _network("SIGNOFF_TRUSTED_PROXIES", text) for text in env_list("SIGNOFF_TRUSTED_PROXIES", [])
]
# Redirect http:// to https://. On by default only when Django can tell https requests apart (the proxy's
# header is trusted): otherwise every request would look like http and redirect forever.
SECURE_SSL_REDIRECT = env_bool("SIGNOFF_SSL_REDIRECT", SIGNOFF_HTTPS and SIGNOFF_TRUST_PROXY_TLS_HEADER)
# Probes and scrapers speak plain HTTP inside the network (docs/operations.md).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SIGNOFF_HSTS_SECONDS", 365 * 24 * 3600 if SIGNOFF_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SIGNOFF_HSTS_INCLUDE_SUBDOMAINS", True)
# Joining the browsers' preload list is a manual, slow-to-undo decision for the whole domain: off unless
# asked for, and its deploy-check reminder (security.W021) is silenced then.
SECURE_HSTS_PRELOAD = env_bool("SIGNOFF_HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
SESSION_COOKIE_SECURE = env_bool("SIGNOFF_SECURE_COOKIES", SIGNOFF_HTTPS)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Websocket limits per connection (approvals/security.py). Frames over the size are refused: the bridge's
# with frame_too_large (its call is denied, the socket stays open), a reviewer's by closing the socket.
# Daphne itself closes any socket sending a message over 1 MiB (--websocket-max-message-size), so a bridge
# limit above 1 MiB has no effect without raising Daphne's too (and the protocol's MAX_FRAME_BYTES).
SIGNOFF_WS_BRIDGE_MAX_FRAME_BYTES = env_int("SIGNOFF_WS_BRIDGE_MAX_FRAME_BYTES", 1024 * 1024)
SIGNOFF_WS_REVIEW_MAX_FRAME_BYTES = env_int("SIGNOFF_WS_REVIEW_MAX_FRAME_BYTES", 16 * 1024)
# Messages a second and burst (token bucket); over it: rate_limited; a burst's worth refused in a row: closed.
SIGNOFF_WS_BRIDGE_RATE = env_float("SIGNOFF_WS_BRIDGE_RATE", 200.0)
SIGNOFF_WS_BRIDGE_BURST = env_int("SIGNOFF_WS_BRIDGE_BURST", 400)
SIGNOFF_WS_REVIEW_RATE = env_float("SIGNOFF_WS_REVIEW_RATE", 10.0)
SIGNOFF_WS_REVIEW_BURST = env_int("SIGNOFF_WS_REVIEW_BURST", 20)

# --- Static files, i18n ---------------------------------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("SIGNOFF_STATIC_ROOT", str(STATE_DIR / "static")))
# Production (the Dockerfile sets it): WhiteNoise serves what collectstatic wrote, under content-hashed names
# with a year-long cache and gzip variants made ahead. It needs `collectstatic` after every change to static/,
# hence off by default: `make run` and the tests serve static/ as it is.
SIGNOFF_STATIC_MANIFEST = env_bool("SIGNOFF_STATIC_MANIFEST", False)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if SIGNOFF_STATIC_MANIFEST
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not SIGNOFF_STATIC_MANIFEST
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Logging: stderr, one line per event ------------------------------------------------------------
# text (default): a line for people; json: one JSON object per line for a log collector (docker compose).
SIGNOFF_LOG_FORMAT = env_str("SIGNOFF_LOG_FORMAT", "text").lower()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"signoff": {"()": "approvals.logging.log_formatter", "kind": SIGNOFF_LOG_FORMAT}},
    # Tokens, keys and passwords that reach a log line (a URL, an exception) are masked on the way out; then
    # the request id, call, team and user the line is about are added (approvals/logging.py).
    "filters": {
        "mask_secrets": {"()": "approvals.masking.SecretMaskingFilter"},
        "log_context": {"()": "approvals.logging.LogContextFilter"},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "signoff",
            "filters": ["mask_secrets", "log_context"],
        }
    },
    "root": {"handlers": ["stderr"], "level": env_str("SIGNOFF_LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}, "daphne": {"level": "WARNING"}},
}
