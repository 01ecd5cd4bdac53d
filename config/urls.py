from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path

from approvals import health_views

# The admin's own login form would skip two-factor authentication: log in through allauth's instead.
admin.site.login = secure_admin_login(admin.site.login)  # type: ignore[method-assign]

urlpatterns = [
    # For operators (docs/operations.md): outside the approvals namespace, no login.
    path("healthz", health_views.healthz, name="healthz"),
    path("readyz", health_views.readyz, name="readyz"),
    path("metrics", health_views.metrics_view, name="metrics"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("", include("approvals.urls")),
]
