"""Sends people whom a team's two-factor requirement refused to the page where they set it up.

Who is refused is decided in ``approvals.access`` (``MfaRequired``); this only turns the refusal of a page
into a detour.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from approvals.access import MfaRequired


class MfaRequiredRedirectMiddleware:
    """A GET refused with ``MfaRequired`` becomes a redirect to the two-factor page, with the reason.

    Other methods keep their 403 (whose page says the same): a form post is not replayed after the detour,
    and a refused write must look refused to whatever sent it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, MfaRequired) and request.method in ("GET", "HEAD"):
            messages.warning(request, str(exception))
            return redirect("mfa_index")
        return None
