"""Signoff settings, read from the environment only.

With no environment at all Signoff runs on its embedded default: SQLite in ``.signoff/``, the in-memory
channel layer, a local-memory cache and Celery tasks run in-process. ``DATABASE_URL`` switches to
PostgreSQL; ``REDIS_URL`` switches the channel layer, the cache and the Celery broker to Redis.
"""

from __future__ import annotations

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
    "django.middleware.security.SecurityMiddleware",
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
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE = {
    "expire-due-calls": {"task": "approvals.tasks.expire_due_calls", "schedule": 2.0},
}

# --- Signoff behaviour ----------------------------------------------------------------------------
# Seconds between sweeps for held calls past their deadline, run inside each web process. On by default
# in the embedded setup (no Celery worker there); with Redis, Celery beat sweeps and this is off.
SIGNOFF_INPROCESS_SWEEP_SECONDS = env_float("SIGNOFF_INPROCESS_SWEEP_SECONDS", 0.0 if REDIS_URL else 1.0)
SIGNOFF_DEFAULT_DEADLINE_SECONDS = env_int("SIGNOFF_DEFAULT_DEADLINE_SECONDS", 600)

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

# --- Security -------------------------------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("SIGNOFF_BEHIND_TLS_PROXY") else None
)
SESSION_COOKIE_SECURE = env_bool("SIGNOFF_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- Static files, i18n ---------------------------------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("SIGNOFF_STATIC_ROOT", str(STATE_DIR / "static")))
WHITENOISE_USE_FINDERS = True
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Logging: stderr, one line per event ------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Tokens, keys and passwords that reach a log line (a URL, an exception) are masked on the way out.
    "filters": {"mask_secrets": {"()": "approvals.masking.SecretMaskingFilter"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["mask_secrets"]}
    },
    "root": {"handlers": ["stderr"], "level": env_str("SIGNOFF_LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}, "daphne": {"level": "WARNING"}},
}
