# Signoff's server image: the web process (Daphne), the Celery worker and Celery beat all run from it, with
# different commands (docker-compose.yml; docs/deploy.md). Members do not need it: the bridge is the `signoff`
# package alone (mcpbridge), installed on their laptops.
#
#   docker build -t signoff .
#   docker run --env-file .env -p 127.0.0.1:8000:8000 signoff            # web (the default command)
#   docker run --env-file .env signoff celery -A config worker --loglevel=INFO
#   docker run --env-file .env signoff python manage.py migrate --noinput
#
# Settings come from the environment only (.env.example); nothing secret is in the image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SIGNOFF_STATE_DIR=/var/lib/signoff \
    SIGNOFF_STATIC_ROOT=/app/staticfiles \
    SIGNOFF_STATIC_MANIFEST=true

# A fixed uid/gid, so that a volume mounted at /var/lib/signoff can be given to it (chown 10001).
RUN groupadd --system --gid 10001 signoff \
    && useradd --system --uid 10001 --gid signoff --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin signoff \
    && mkdir -p /app /var/lib/signoff \
    && chown signoff:signoff /var/lib/signoff

WORKDIR /app
# Only what the server needs (no .venv, .signoff state, tests, docs; .dockerignore keeps .env out too).
COPY pyproject.toml requirements.lock README.md manage.py ./
COPY config ./config
COPY approvals ./approvals
COPY mcpbridge ./mcpbridge
COPY templates ./templates
COPY static ./static
COPY scripts/web.sh scripts/healthcheck.py ./scripts/
# The server's dependencies (the `server` extra), not the `dev` one (pytest, playwright, linters): exactly
# the versions and files requirements.lock pins and hashes (scripts/lock.sh writes it), then Signoff itself
# with nothing more; `pip check` fails the build if the lock no longer satisfies pyproject.toml.
RUN pip install --require-hashes --no-deps -r requirements.lock \
    && pip install --no-deps . \
    && pip check \
    && chmod 0755 scripts/web.sh scripts/healthcheck.py
# Static files, collected once at build: content-hashed and gzipped (SIGNOFF_STATIC_MANIFEST), read-only
# at run time, served by WhiteNoise from every web process. collectstatic reads the settings, hence a
# throw-away key: no real secret belongs in an image.
RUN SECRET_KEY=collectstatic-only SIGNOFF_STATE_DIR=/tmp/signoff-build \
        python manage.py collectstatic --noinput --verbosity 0 \
    && rm -rf /tmp/signoff-build

USER signoff
EXPOSE 8000
# For `docker run`; docker-compose.yml states its own checks per service (worker and beat serve no HTTP).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/app/scripts/healthcheck.py", "/healthz"]
# No ENTRYPOINT: any command runs as given (celery …, python manage.py …). The default is the web process.
CMD ["/app/scripts/web.sh"]
