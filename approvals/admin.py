"""Django admin: read-mostly views for operators. Changes go through the services and the app's pages."""

from django.contrib import admin

from approvals.models import AuditEvent, BridgeToken, Membership, Rule, Team, ToolCall


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "mode", "default_deadline_seconds", "created_at")
    search_fields = ("name", "slug")


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("team", "user", "role", "created_at")
    list_filter = ("role", "team")


@admin.register(BridgeToken)
class BridgeTokenAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "prefix",
        "team",
        "user",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    list_filter = ("team",)
    readonly_fields = ("prefix", "secret_hash", "last_used_at", "last_used_ip", "revoked_at")


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    list_display = ("team", "effect", "server", "tool", "enabled", "created_by", "created_at")
    list_filter = ("team", "effect", "enabled")


@admin.register(ToolCall)
class ToolCallAdmin(admin.ModelAdmin):
    list_display = ("created_at", "team", "server", "tool", "state", "requester", "decided_by")
    list_filter = ("team", "state")
    readonly_fields = [f.name for f in ToolCall._meta.fields]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "team", "kind", "actor", "call")
    list_filter = ("kind", "team")

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
