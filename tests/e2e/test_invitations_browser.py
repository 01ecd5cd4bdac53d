"""Invitations and password reset in a real headless Chromium against a real Daphne, reading the mails the
server wrote to ``SIGNOFF_EMAIL_DIR``: an admin invites on the Members page, the invited person signs up
through the mailed link and lands in the team; the link then no longer works; a password is reset by the
mailed link.

Screenshots go to /tmp/shots/ (and test-artifacts/).
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import secrets
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import anyio

from approvals.models import Invitation, Membership
from tests.e2e.conftest import ARTIFACTS, PASSWORD, SignoffServer, TeamSetup, browser_login

SHOTS = Path("/tmp/shots")
MAIL_DIR = Path(os.environ["SIGNOFF_EMAIL_DIR"])
NEW_PASSWORD = "a brand new passphrase 1729"


def _messages() -> list[EmailMessage]:
    """Every mail the servers sent: the file backend writes each, then a line of 79 dashes."""
    found = []
    for path in sorted(MAIL_DIR.glob("*.log")) if MAIL_DIR.exists() else []:
        for chunk in path.read_bytes().split(b"\n" + b"-" * 79 + b"\n"):
            if chunk.strip():
                found.append(email.message_from_bytes(chunk, policy=email.policy.default))
    return found  # type: ignore[return-value]


async def mail_to(address: str, subject_part: str, timeout: float = 10.0) -> str:
    """The body of the newest mail to ``address`` whose subject has ``subject_part``."""
    with anyio.fail_after(timeout):
        while True:
            for message in reversed(_messages()):
                if message["To"] == address and subject_part in message["Subject"]:
                    return str(message.get_content())
            await anyio.sleep(0.1)


async def shot(page: Any, name: str) -> None:
    for folder in (SHOTS, ARTIFACTS):
        folder.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(folder / name), full_page=True)


async def test_an_invited_person_signs_up_by_the_mailed_link_and_lands_in_the_team(
    signoff: SignoffServer, team: TeamSetup, browser: Any
) -> None:
    newcomer = f"nina-{secrets.token_hex(3)}@example.com"
    admin = await browser_login(browser, signoff, team.reviewer)  # the team's admin
    await admin.goto(f"{signoff.url}/members/?team={team.team.slug}")
    invite = admin.locator("#invite form")
    await invite.locator("input[name=email]").fill(newcomer)
    await invite.locator("select[name=role]").select_option("reviewer")
    await invite.locator("select[name=valid_for_days]").select_option("3")
    await invite.get_by_role("button", name="Send invitation").click()
    await admin.wait_for_selector(".flash-success")
    assert f"Invitation emailed to {newcomer}" in await admin.text_content(".flash")
    row = admin.locator(f'#invitations tr[data-invitation="{newcomer}"]')
    assert "Reviewer" in await row.text_content()
    await shot(admin, "members-invite.png")

    body = await mail_to(newcomer, "invited you to")
    assert f"{team.reviewer.email} invited you" in body and team.team.name in body and "as reviewer" in body
    match = re.search(rf"{re.escape(signoff.url)}/invite/[A-Za-z0-9_-]+/", body)
    assert match, body
    link = match.group(0)

    # A new person, in a browser of their own.
    context = await browser.new_context()
    page = await context.new_page()
    response = await page.goto(link)
    assert response.status == 200
    assert f"Join {team.team.name} on Signoff" in await page.text_content("h1")
    await shot(page, "invitation-page.png")
    await page.get_by_role("link", name="Create your account").click()
    await page.wait_for_url(f"{signoff.url}/accounts/signup/")
    address = page.locator("input[name=email]")
    assert await address.input_value() == newcomer
    assert await address.get_attribute("readonly") is not None
    await page.fill("input[name=password1]", PASSWORD)
    await page.fill("input[name=password2]", PASSWORD)
    await shot(page, "invitation-signup.png")
    await page.get_by_role("button", name=re.compile("Create account")).click()
    await page.wait_for_url(lambda url: "/accounts/" not in url and "/invite/" not in url)
    await page.wait_for_selector(".flash-success")
    assert f"Welcome to {team.team.name}: you are reviewer." in await page.text_content(".flash")
    assert await page.text_content(".who") == newcomer
    await page.wait_for_selector("#socket-status[data-state=live]")  # a reviewer: the live queue
    await shot(page, "invitation-landed.png")
    membership = Membership.objects.select_related("user").get(team=team.team, user__email=newcomer)
    assert membership.role == "reviewer" and membership.user.username == newcomer
    assert Invitation.objects.get(email=newcomer).accepted_by == membership.user

    # The link worked once: the next browser to open it learns nothing more.
    other = await (await browser.new_context()).new_page()
    response = await other.goto(link)
    assert response.status == 404
    assert await other.text_content("h1") == "This link does not work"
    assert team.team.name not in await other.text_content("main")
    await shot(other, "invitation-used.png")
    # And signup is closed for anyone without an invitation.
    await other.goto(f"{signoff.url}/accounts/signup/")
    assert await other.text_content("h1") == "Accounts are by invitation"


async def test_a_password_is_reset_by_the_mailed_link(
    signoff: SignoffServer, team: TeamSetup, browser: Any
) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{signoff.url}/accounts/login/")
    await page.get_by_role("link", name="Forgot your password?").first.click()
    await page.fill("input[name=email]", team.member.email)
    await page.get_by_role("button", name="Email me a link").click()
    await page.wait_for_selector("text=Check your email")
    body = await mail_to(team.member.email, "Password Reset")
    match = re.search(rf"{re.escape(signoff.url)}/accounts/password/reset/key/\S+/", body)
    assert match, body
    await page.goto(match.group(0))
    await page.wait_for_selector("text=Choose a new password")
    await page.fill("input[name=password1]", NEW_PASSWORD)
    await page.fill("input[name=password2]", NEW_PASSWORD)
    await shot(page, "password-reset-form.png")
    await page.get_by_role("button", name="Set password").click()
    await page.wait_for_selector("text=Password set")

    await page.goto(f"{signoff.url}/accounts/login/")
    await page.fill("input[name=login]", team.member.email)
    await page.fill("input[name=password]", NEW_PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(lambda url: "/accounts/login" not in url)
    assert await page.text_content(".who") == team.member.email
    # The mailed link worked once.
    await page.goto(match.group(0))
    assert await page.text_content("h1") == "This link does not work"


async def test_someone_with_an_account_signs_in_and_joins_with_one_click(
    signoff: SignoffServer, team: TeamSetup, browser: Any
) -> None:
    from approvals.services.invitations import invitation_create, invitation_link
    from tests.e2e.conftest import make_team

    other = make_team()  # its member gets invited to our team as an auditor
    _, secret = invitation_create(team=team.team, email=other.member.email, role="auditor", by=team.reviewer)
    link = invitation_link(secret=secret, base_url=signoff.url)

    # Signed in as somebody else: a clear refusal, and nothing changes.
    wrong = await browser_login(browser, signoff, team.reviewer2)
    response = await wrong.goto(link)
    assert response.status == 403
    assert f"This invitation is for {other.member.email}" in await wrong.text_content("main")
    await shot(wrong, "invitation-wrong-account.png")
    await wrong.get_by_role("button", name="Sign out", exact=True).click()
    await wrong.wait_for_url(link)  # back on the link, signed out: the way to sign in
    assert "You already have a Signoff account" in await wrong.text_content("main")

    page = await (await browser.new_context()).new_page()
    await page.goto(link)
    assert "You already have a Signoff account" in await page.text_content("main")
    await shot(page, "invitation-sign-in.png")
    await page.get_by_role("link", name="Sign in", exact=True).click()
    await page.fill("input[name=login]", other.member.email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(link)
    assert not Membership.objects.filter(team=team.team, user=other.member).exists()
    await page.get_by_role("button", name=f"Join {team.team.name}").click()
    await page.wait_for_selector(".flash-success")
    assert f"Welcome to {team.team.name}: you are auditor." in await page.text_content(".flash")
    assert Membership.objects.get(team=team.team, user=other.member).role == "auditor"
