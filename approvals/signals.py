"""Signal receivers: a logout, or a deactivation made outside the services, takes effect at once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_save
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


@receiver(post_save, sender=get_user_model())
def end_access_of_inactive_user(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """A user saved as inactive (e.g. in Django's admin) loses tokens and open pages at once."""
    if not created and not instance.is_active:
        from approvals.services.teams import user_access_end

        user_access_end(user=instance)
