"""Secret masking (approvals.masking): a corpus of secrets that must be masked, and of ordinary text that
must come out exactly as it went in. Pure functions: no database."""

from __future__ import annotations

import io
import json
import logging

import pytest

from approvals.masking import MASK, SecretMaskingFilter, is_sensitive_key, mask_json, mask_text

SGO = "sgo_1234abcd_Zt6qk2Y3vQ9pL0mN8xR4sW7uE1iO5aD3fG6hJ9kL2"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF0qHk2JY\n"
    "c2VjcmV0IGtleSBtYXRlcmlhbA==\n-----END RSA PRIVATE KEY-----"
)

# (text, what must be gone, what must remain)
POSITIVES = [
    (f"export SIGNOFF_TOKEN={SGO}", SGO[12:], "SIGNOFF_TOKEN=sgo_1234abcd…[masked]"),
    (f"token {SGO} leaked", SGO[12:], "sgo_1234abcd…[masked] leaked"),
    ("sgo_ZZZZ9999abcdefghijklmnop", "abcdefghijklmnop", "sgo_…[masked]"),
    ("aws key AKIAIOSFODNN7EXAMPLE here", "IOSFODNN7EXAMPLE", "AKIA…[masked] here"),
    ("ASIAY34FZKBOKMUTVV7A", "Y34FZKBOKMUTVV7A", "ASIA…[masked]"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI", "= [masked]"),
    ("ghp_16C7e42F292c6912E7710c838347Ae178B4a", "16C7e42F292c", "ghp_…[masked]"),
    ("gho_16C7e42F292c6912E7710c838347Ae178B4a", "16C7e42F292c", "gho_…[masked]"),
    (
        "github_pat_11ABCDEFG0abcdefghijkl_MNOPQRSTUVWXYZabcdef0123456789",
        "11ABCDEFG0",
        "github_pat_…[masked]",
    ),
    ("glpat-xxxxxxxxxxxxxxxxxxxx1234", "xxxxxxxx", "glpat-…[masked]"),
    ("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "AbCdEfGh", "xoxb-…[masked]"),
    ("xoxp-123456789012-abcdefghij", "abcdefghij", "xoxp-…[masked]"),
    (
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "T00000000",
        "https://hooks.slack.com/services/…[masked]",
    ),
    ("OPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwxyz012345", "abcdefghijklmnop", "sk-…[masked]"),
    ("sk-proj-Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789", "Ab3dEfGh", "sk-proj-…[masked]"),
    ("sk-ant-api03-Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789-xyzAA", "Ab3dEfGh", "sk-ant-api03-…[masked]"),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqL", "sk_live_…[masked]"),
    ("key=AIzaSyA1234567890abcdefghijklmnopqrstuv", "SyA1234567890", "AIza…[masked]"),
    ("ya29.a0AfH6SMBx1234567890abcdefghijklmnop", "a0AfH6SMBx", "ya29.…[masked]"),
    ("hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", "abcdefghijklmnop", "hf_…[masked]"),
    ("npm_abcdefghijklmnopqrstuvwxyz0123456789", "abcdefghijklmnop", "npm_…[masked]"),
    (f"id_token: {JWT}", JWT[3:], "eyJ…[masked]"),
    (f"-H 'Authorization: Bearer {JWT}'", JWT[3:], "Bearer eyJ…[masked]"),
    ("Authorization: Bearer 8f14e45fceea167a5a36dedd4bea2543", "8f14e45f", "Authorization: Bearer …[masked]"),
    ("authorization: bearer abcdefghijklmnopqrstuvwx", "abcdefghijkl", "bearer …[masked]"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpw", "Basic …[masked]"),
    ("Authorization: Token 0123456789abcdef0123", "0123456789abcdef", "Token …[masked]"),
    (f"key:\n{PEM}\ndone", "MIIEowIBAAKCAQEA", "-----BEGIN RSA PRIVATE KEY-----…[masked]\ndone"),
    (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA (cut off",
        "b3BlbnNzaC1r",
        "-----BEGIN OPENSSH PRIVATE KEY-----…[masked]",
    ),
    ("DATABASE_URL=postgres://app:s3cr3t-pw@db:5432/signoff", "s3cr3t-pw", "postgres://app:[masked]@db:5432"),
    (
        "git clone https://max:ghx-token-value@git.example.com/repo",
        "ghx-token-value",
        "https://max:[masked]@git",
    ),
    ("redis://:hunter2@cache:6379/0", "hunter2", "redis://:[masked]@cache"),
    ("password=hunter2", "hunter2", "password=[masked]"),
    ("DB_PASSWORD=correcthorse", "correcthorse", "DB_PASSWORD=[masked]"),
    ("mysql --user=root --password=Tr0ub4dor&3", "Tr0ub4dor", "--password=[masked]"),
    ("login --password hunter22 --user max", "hunter22", "--password [masked] --user max"),
    (
        "https://api.example.com/v1/items?access_token=abc123xyz&page=2",
        "abc123xyz",
        "access_token=[masked]&page=2",
    ),
    (
        '{"password": "correct horse battery staple", "user": "max"}',
        "horse",
        '"password": "[masked]", "user"',
    ),
    ("client_secret: 'Xy9$long-secret'", "Xy9$", "client_secret: '[masked]'"),
    ("password: changeme\nuser: max", "changeme", "password: [masked]\nuser: max"),
    ("Your password: hunter2 (expires soon)", "hunter2", "password: [masked] (expires"),
    ("X-Api-Key: 0a1b2c3d4e5f", "0a1b2c3d4e5f", "X-Api-Key: [masked]"),
    ("note: secret=abc later", "secret=abc", "note: secret=[masked] later"),
]

# Ordinary text, arguments and results that must come out unchanged.
NEGATIVES = [
    "",
    "/srv/project/README.md",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "SELECT id, name FROM users WHERE created_at > '2025-01-01' ORDER BY id LIMIT 10;",
    "max_tokens=1024 temperature=0.2 token_count: 57 tokens: 12",
    "Enter your password: it must be at least twelve characters long.",
    "Reset your password: click the link in the mail we sent.",
    "The token bucket refills at 10 tokens per second; token_type: bearer",
    "the bearer instrument is payable to whoever holds it",
    "Token authentication is configured in settings.py",
    "Basic information about the project",
    "see https://user@example.com:8080/path and http://localhost:8000/history/?page=2",
    "https://example.com/search?q=password+reset&lang=en",
    "git@github.com:signoff/signoff.git",
    "commit 8f14e45fceea167a5a36dedd4bea2543 (HEAD -> main)",
    "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    "uuid 5f0c6d1e-3b7a-4c2d-9e8f-0a1b2c3d4e5f",
    "task-management-system-for-everyone and sk-learn and risk-assessment-tool",
    "skip_tokens_in_prefix and ask-questions-early-and-often-please",
    "bypass: true, passes: 3, compass: north, tokenizer: bpe",
    "password_hash: pbkdf2_sha256$600000$…",
    "AKIA is the prefix of AWS access key ids",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUD\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "def authenticate(token: str) -> bool:\n    return token == expected",
    "PWD=/home/max HOME=/home/max SHELL=/bin/bash LANG=C.UTF-8",
    "sgo_ is the prefix of Signoff's bridge tokens",
    "Le café coûte 2 € ; 日本語のテキスト; emoji 🎉",
    "rm -rf /tmp/build && make test",
    "password: null, token: None, secret: true",
    "ghp_ is GitHub's prefix; eyJ starts base64 JSON",
    "The API key rotation is documented on the wiki.",
]


@pytest.mark.parametrize(("text", "gone", "kept"), POSITIVES, ids=[p[2][:30] for p in POSITIVES])
def test_secrets_are_masked(text: str, gone: str, kept: str) -> None:
    shown = mask_text(text)
    assert gone not in shown
    assert kept in shown
    assert MASK in shown


@pytest.mark.parametrize("text", NEGATIVES)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert mask_text(text) == text


@pytest.mark.parametrize("text", [p[0] for p in POSITIVES] + NEGATIVES)
def test_masking_is_idempotent(text: str) -> None:
    once = mask_text(text)
    assert mask_text(once) == once


def test_the_signoff_prefix_is_kept_the_secret_part_is_not() -> None:
    assert mask_text(SGO) == "sgo_1234abcd…[masked]"


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "Password",
        "db_password",
        "DB_PASSWORD",
        "passwd",
        "pass",
        "passphrase",
        "secret",
        "client_secret",
        "clientSecret",
        "clientsecret",
        "token",
        "access_token",
        "accessToken",
        "refresh-token",
        "X-Auth-Token",
        "api_key",
        "apiKey",
        "API_KEY",
        "apikey",
        "x-api-key",
        "aws_secret_access_key",
        "private_key",
        "privateKey",
        "authorization",
        "Proxy-Authorization",
        "auth",
        "basic_auth",
        "credentials",
        "cookie",
        "Set-Cookie",
        "session_id",
        "sessionId",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_sensitive_key(name)


@pytest.mark.parametrize(
    "name",
    [
        "max_tokens",
        "maxTokens",
        "token_count",
        "tokens",
        "token_type",
        "tokenizer",
        "path",
        "key",
        "cache_key",
        "keyboard",
        "bypass",
        "compass",
        "passes",
        "password_hash",
        "passwordless",
        "author",
        "auth_method",
        "secretary",
        "pwd",
        "PWD",
        "session",
        "",
    ],
)
def test_ordinary_names(name: str) -> None:
    assert not is_sensitive_key(name)


def test_json_values_under_secret_names_are_masked_whatever_they_look_like() -> None:
    arguments = {
        "path": "/srv/project/.env",
        "password": "x",
        "apiKey": 123456,
        "token": SGO,
        "headers": {"Authorization": f"Bearer {JWT}", "Accept": "application/json"},
        "auth": {"user": "max", "pass": "p", "retries": 3},
        "max_tokens": 500,
        "secret": None,
        "api_key": "",
        "enabled": True,
        "notes": ["see ghp_16C7e42F292c6912E7710c838347Ae178B4a", "plain"],
        "env": "AWS_SECRET_ACCESS_KEY=abc/def+ghi",
    }
    original = json.loads(json.dumps(arguments))
    assert mask_json(arguments) == {
        "path": "/srv/project/.env",
        "password": MASK,
        "apiKey": MASK,
        "token": "sgo_1234abcd…[masked]",
        "headers": {"Authorization": "Bearer …[masked]", "Accept": "application/json"},
        "auth": {"user": MASK, "pass": MASK, "retries": MASK},
        "max_tokens": 500,
        "secret": None,
        "api_key": "",
        "enabled": True,
        "notes": ["see ghp_…[masked]", "plain"],
        "env": "AWS_SECRET_ACCESS_KEY=[masked]",
    }
    assert arguments == original  # the input is not changed
    assert mask_json(mask_json(arguments)) == mask_json(arguments)


def test_json_keys_are_masked_and_kept_apart() -> None:
    other = SGO.replace("Zt6q", "Ab1c")
    shown = mask_json({SGO: 1, other: 2, "plain": {"nested": [{"token": "abc"}]}})
    assert shown == {
        "sgo_1234abcd…[masked]": 1,
        "sgo_1234abcd…[masked] (2)": 2,
        "plain": {"nested": [{"token": MASK}]},
    }


def test_ordinary_json_is_unchanged() -> None:
    arguments = {"path": "/srv/a.txt", "query": "SELECT 1", "max_tokens": 10, "items": [1, 2.5, None, True]}
    assert mask_json(arguments) == arguments


def test_the_log_filter_masks_messages_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretMaskingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("signoff.test.masking")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("bridge connected with %s from %s", SGO, "10.0.0.1")
        logger.warning("plain %s message", "ordinary")
        try:
            raise ValueError(f"bad url postgres://app:s3cr3t@db/x and {JWT}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "bridge connected with sgo_1234abcd…[masked] from 10.0.0.1" in text
    assert "plain ordinary message" in text
    assert "postgres://app:[masked]@db/x" in text and "Traceback" in text
    assert SGO[12:] not in text and "s3cr3t" not in text and JWT[3:] not in text


def test_the_log_filter_leaves_a_record_without_secrets_as_it_was() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s and %d", ("a", 1), None)
    assert SecretMaskingFilter().filter(record)
    assert (record.msg, record.args) == ("%s and %d", ("a", 1))


def test_the_log_filter_survives_a_broken_format_string() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s and %s", ("only one",), None)
    assert SecretMaskingFilter().filter(record)


def test_settings_install_the_filter_on_every_handler() -> None:
    from django.conf import settings

    filters = settings.LOGGING["filters"]
    name = next(
        key for key, spec in filters.items() if spec.get("()") == "approvals.masking.SecretMaskingFilter"
    )
    assert all(name in handler.get("filters", []) for handler in settings.LOGGING["handlers"].values())
