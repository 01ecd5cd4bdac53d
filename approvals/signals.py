"""Signal receivers: a logout closes the user's open reviewer sockets at once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver
from django.http import HttpRequest

from approvals import realtime


@receiver(user_logged_out)
def close_review_sockets_on_logout(
    sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any
) -> None:
    """A reviewer socket keeps the session it had at connect: tell it to close itself."""
    if user is not None and user.pk is not None:
        realtime.send_on_commit(
            realtime.user_group(user.pk), {"type": "review.closed", "reason": "logged out"}
        )
