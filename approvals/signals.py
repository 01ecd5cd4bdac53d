"""Signal receivers: a logout, or a deactivation made outside the services, takes effect at once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.http import HttpRequest

from approvals import realtime
from approvals.models import Rule, Team, new_rules_version


@receiver(user_logged_out)
def close_review_sockets_on_logout(
    sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any
) -> None:
    """A reviewer socket keeps the session it had at connect: tell it to close itself."""
    if user is not None and user.pk is not None:
        realtime.send_on_commit(
            realtime.user_group(user.pk), {"type": "review.closed", "reason": "logged out"}
        )


@receiver(pre_save, sender=get_user_model())
def remember_whether_user_was_active(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Note the stored ``is_active`` so that only a real deactivation triggers the offboarding below."""
    update_fields = kwargs.get("update_fields")
    if instance.pk is not None and (update_fields is None or "is_active" in update_fields):
        instance._signoff_was_active = (
            sender.objects.filter(pk=instance.pk).values_list("is_active", flat=True).first()
        )


@receiver(post_save, sender=get_user_model())
def end_access_of_deactivated_user(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """A user saved as inactive (e.g. in Django's admin) loses tokens and open pages at once."""
    if not created and not instance.is_active and getattr(instance, "_signoff_was_active", False):
        from approvals.services.teams import user_access_end

        user_access_end(user=instance)


@receiver(post_save, sender=Rule)
@receiver(post_delete, sender=Rule)
def bump_rules_version(sender: Any, instance: Rule, **kwargs: Any) -> None:
    """Any change to a rule, from anywhere, makes every process rebuild the team's compiled rules."""
    Team.objects.filter(pk=instance.team_id).update(rules_version=new_rules_version())
