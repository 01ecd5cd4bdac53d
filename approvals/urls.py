from django.urls import path

from approvals import (
    alert_views,
    audit_views,
    inventory_views,
    invitation_views,
    limits_views,
    notification_views,
    rules_views,
    views,
)

app_name = "approvals"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("history/", views.history, name="history"),
    path("calls/<str:call_id>/decide/", views.decide, name="decide"),
    path("calls/<str:call_id>/result/", views.decide_result, name="decide_result"),
    path("calls/<str:call_id>/", audit_views.call_detail, name="call_detail"),
    path("audit/", audit_views.audit, name="audit"),
    path("audit/export/", audit_views.audit_export, name="audit_export"),
    path("alerts/", alert_views.alerts, name="alerts"),
    path("alerts/<int:alert_id>/acknowledge/", alert_views.alert_acknowledge_view, name="alert_acknowledge"),
    path("alerts/acknowledge-all/", alert_views.alerts_acknowledge_all_view, name="alerts_acknowledge_all"),
    path("inventory/", inventory_views.inventory, name="inventory"),
    path("inventory/<int:upstream_id>/", inventory_views.inventory_server, name="inventory_server"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke_view, name="token_revoke"),
    path("tokens/<int:token_id>/networks/", views.token_networks_view, name="token_networks"),
    path("members/", views.members, name="members"),
    path("settings/", views.team_settings, name="team_settings"),
    path("members/<int:membership_id>/role/", views.member_role, name="member_role"),
    path("members/<int:membership_id>/remove/", views.member_remove_view, name="member_remove"),
    path("members/invitations/", invitation_views.invitation_create_view, name="invitation_create"),
    path(
        "members/invitations/<int:invitation_id>/revoke/",
        invitation_views.invitation_revoke_view,
        name="invitation_revoke",
    ),
    path("invite/<str:secret>/", invitation_views.invitation_accept_view, name="invitation_accept"),
    path("rules/", rules_views.rules_list, name="rules"),
    path("rules/new/", rules_views.rule_new, name="rule_new"),
    path("rules/dry-run/", rules_views.rules_dry_run, name="rules_dry_run"),
    path("rules/export/", rules_views.rules_export, name="rules_export"),
    path("rules/import/", rules_views.rules_import, name="rules_import"),
    path("rules/<int:rule_id>/", rules_views.rule_detail, name="rule_detail"),
    path("rules/<int:rule_id>/edit/", rules_views.rule_edit, name="rule_edit"),
    path("rules/<int:rule_id>/enabled/", rules_views.rule_enabled, name="rule_enabled"),
    path("rules/<int:rule_id>/delete/", rules_views.rule_delete_view, name="rule_delete"),
    path("limits/", limits_views.limits_list, name="limits"),
    path("limits/new/", limits_views.limit_new, name="limit_new"),
    path("limits/<int:limit_id>/edit/", limits_views.limit_edit, name="limit_edit"),
    path("limits/<int:limit_id>/enabled/", limits_views.limit_enabled, name="limit_enabled"),
    path("limits/<int:limit_id>/delete/", limits_views.limit_delete_view, name="limit_delete"),
    path("notifications/", notification_views.notifications, name="notifications"),
    path(
        "notifications/<int:channel_id>/test/", notification_views.notification_test, name="notification_test"
    ),
    path(
        "notifications/<int:channel_id>/rotate/",
        notification_views.notification_rotate,
        name="notification_rotate",
    ),
    path(
        "notifications/<int:channel_id>/enabled/",
        notification_views.notification_enabled,
        name="notification_enabled",
    ),
    path(
        "notifications/<int:channel_id>/delete/",
        notification_views.notification_delete,
        name="notification_delete",
    ),
]
