"""Two-factor authentication in a real headless Chromium against a real Daphne.

A person activates an authenticator app (the test plays the app: it reads the secret off the page and
computes the code, RFC 6238), keeps the recovery codes, and signs in with password + code, then with a
recovery code, which is spent after that. A reviewer of a team that requires two-factor is sent to set it up.
Screenshots of the activation page and the code prompt go to ``/tmp/shots/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import PASSWORD, SignoffServer, TeamSetup, browser_login

SHOTS = Path("/tmp/shots")


def totp_now(secret: str) -> str:
    """What the authenticator app shows now; never a code about to roll over (the server allows no drift)."""
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value

    if 30 - time.time() % 30 < 2:
        time.sleep(30 - time.time() % 30 + 0.2)
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30))


async def sign_in_with_password(page: Any, server: SignoffServer, email: str) -> None:
    await page.goto(server.url + "/accounts/login/")
    await page.fill("input[name=login]", email)
    await page.fill("input[name=password]", PASSWORD)
    await page.get_by_role("button", name="Sign In").click()


async def log_out(page: Any, server: SignoffServer) -> None:
    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_url(server.url + "/accounts/login/")


async def test_activate_the_app_then_sign_in_with_a_code_and_with_a_recovery_code(
    signoff: SignoffServer, team: TeamSetup, browser: Any
) -> None:
    from approvals.models import AuditEvent

    SHOTS.mkdir(exist_ok=True)
    user = team.member
    page = await browser_login(browser, signoff, user)

    # Two-factor, from the account area; activating asks for the password again first.
    await page.get_by_role("link", name="Two-factor").click()
    await page.wait_for_url(signoff.url + "/accounts/2fa/")
    await page.get_by_role("link", name="Activate an authenticator app").click()
    await page.wait_for_url(lambda url: "/accounts/reauthenticate/" in url)
    await page.screenshot(path=str(SHOTS / "reauthenticate.png"), full_page=True)
    await page.fill("input[name=password]", PASSWORD)
    await page.locator("main button[type=submit]").click()
    await page.wait_for_url(signoff.url + "/accounts/2fa/totp/activate/")

    qr = page.locator(".mfa-qr img")
    await qr.wait_for()
    assert await qr.evaluate("img => img.complete && img.naturalWidth > 0")  # the QR code did render
    secret = await page.input_value("#authenticator_secret")
    assert len(secret) == 32
    await page.screenshot(path=str(SHOTS / "totp-activate.png"), full_page=True)

    wrong = "000000" if totp_now(secret) != "000000" else "111111"
    await page.fill("input[name=code]", wrong)
    await page.get_by_role("button", name="Activate").click()
    assert "Incorrect code" in await page.locator(".field-error").inner_text()
    secret_after_error = await page.input_value("#authenticator_secret")
    assert secret_after_error == secret  # the same secret until it is activated
    await page.fill("input[name=code]", totp_now(secret))
    await page.get_by_role("button", name="Activate").click()

    # Recovery codes, shown at once.
    await page.wait_for_url(signoff.url + "/accounts/2fa/recovery-codes/")
    codes = [code.strip() for code in await page.locator("#recovery_codes li").all_inner_texts()]
    assert len(codes) == 10 and all(code.isdigit() for code in codes)
    await page.screenshot(path=str(SHOTS / "recovery-codes.png"), full_page=True)
    await log_out(page, signoff)

    # Password, then the code from the app.
    await sign_in_with_password(page, signoff, user.email)
    await page.wait_for_url(signoff.url + "/accounts/2fa/authenticate/")
    await page.locator("input[name=code]").wait_for()
    await page.screenshot(path=str(SHOTS / "mfa-code-prompt.png"), full_page=True)
    await page.fill("input[name=code]", totp_now(secret))
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(lambda url: "/accounts/" not in url)
    assert user.email in await page.locator(".who").inner_text()
    await log_out(page, signoff)

    # Password, then a recovery code: it works once.
    await sign_in_with_password(page, signoff, user.email)
    await page.wait_for_url(signoff.url + "/accounts/2fa/authenticate/")
    await page.fill("input[name=code]", codes[0])
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(lambda url: "/accounts/" not in url)
    await log_out(page, signoff)
    await sign_in_with_password(page, signoff, user.email)
    await page.wait_for_url(signoff.url + "/accounts/2fa/authenticate/")
    await page.fill("input[name=code]", codes[0])
    await page.get_by_role("button", name="Sign in").click()
    assert "Incorrect code" in await page.locator(".field-error").inner_text()
    assert page.url == signoff.url + "/accounts/2fa/authenticate/"
    await page.screenshot(path=str(SHOTS / "mfa-code-spent.png"), full_page=True)
    await page.context.close()

    recorded = list(AuditEvent.objects.filter(actor_id=user.pk, kind__startswith="auth.").order_by("seq"))
    kinds = [event.kind for event in recorded]
    assert kinds[kinds.index("auth.mfa_activated") :] == [
        "auth.mfa_activated",
        "auth.recovery_codes_generated",
        "auth.logout",
        "auth.login",
        "auth.logout",
        "auth.recovery_code_used",
        "auth.login",
        "auth.logout",
        "auth.mfa_failed",  # the spent code
    ]
    logins = [event for event in recorded if event.kind == "auth.login"]
    assert [event.data["methods"] for event in logins[-2:]] == [
        ["password", "mfa:totp"],
        ["password", "mfa:recovery_codes"],
    ]
    assert logins[-1].data["ip"] == "127.0.0.1" and "Chrome" in logins[-1].data["user_agent"]


async def test_a_team_that_requires_two_factor_sends_a_reviewer_to_set_it_up(
    signoff: SignoffServer, team: TeamSetup, browser: Any
) -> None:
    from approvals.models import Team

    SHOTS.mkdir(exist_ok=True)
    Team.objects.filter(pk=team.team.pk).update(require_mfa=True)
    page = await browser_login(browser, signoff, team.reviewer2)  # lands on the queue…
    await page.wait_for_url(signoff.url + "/accounts/2fa/")  # …which sends them here
    flash = await page.locator(".flash").inner_text()
    assert f"{team.team.name} requires two-factor authentication of its reviewers and admins" in flash
    assert team.team.name in await page.locator("#mfa-required h2").inner_text()
    await page.screenshot(path=str(SHOTS / "mfa-required.png"), full_page=True)

    # Their own tokens stay open to them, with a banner that says why the rest is not.
    await page.goto(signoff.url + "/tokens/")
    banner = page.locator(".banner-warn")
    assert "requires two-factor authentication" in await banner.inner_text()
    await banner.get_by_role("link", name="Set up two-factor").click()
    await page.wait_for_url(signoff.url + "/accounts/2fa/")
    await page.get_by_role("link", name="Activate an authenticator app").click()
    await page.wait_for_url(lambda url: "/accounts/reauthenticate/" in url)
    await page.context.close()
