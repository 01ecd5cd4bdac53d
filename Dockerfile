# Signoff's server image: Daphne (web), Celery worker and beat all run from it (see docker-compose.yml).
# The bridge does not need it: members install only `signoff` (mcpbridge) on their laptops.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SIGNOFF_STATE_DIR=/var/lib/signoff \
    SIGNOFF_STATIC_ROOT=/app/staticfiles

RUN groupadd --system signoff \
    && useradd --system --gid signoff --home-dir /app --no-create-home --shell /usr/sbin/nologin signoff \
    && mkdir -p /app /var/lib/signoff \
    && chown signoff:signoff /var/lib/signoff

WORKDIR /app
# Only what the server needs: no .venv, no .signoff state, no tests.
COPY pyproject.toml README.md manage.py ./
COPY config ./config
COPY approvals ./approvals
COPY mcpbridge ./mcpbridge
COPY templates ./templates
COPY static ./static
RUN pip install '.[server]'
# A throw-away key: collectstatic needs settings, and no real secret belongs in an image.
RUN SECRET_KEY=collectstatic-only SIGNOFF_STATE_DIR=/tmp/signoff-build \
        python manage.py collectstatic --noinput --verbosity 0 \
    && rm -rf /tmp/signoff-build

USER signoff
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "config.asgi:application"]
