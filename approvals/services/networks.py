"""Network allowlists: the client addresses a team's bridges (or one token's) may connect from.

``Team.allowed_networks`` and ``BridgeToken.allowed_networks`` are lists of CIDR networks (IPv4 and IPv6).
A token's own list, when it has one, replaces its team's; an empty team list allows any address. A bridge
connecting from elsewhere is refused at connect (``BridgeConsumer.connect``, error ``network_refused``,
close 4407), audited (``token.network_refused``) and the team's admins are alerted (kind ``network``).

Only a team admin may give a token networks reaching beyond its team's list: otherwise a member could
undo the team's allowlist for their own token. A token's owner may narrow it (docs/networks.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from django.contrib.auth.models import User
from django.db import transaction

from approvals.access import is_admin
from approvals.models import BridgeToken, Team
from approvals.services.alerts import alert_network_refused
from approvals.services.audit import audit_record

MAX_NETWORKS = 50
"""Most networks one list may hold: a longer list is a job for the proxy or the firewall."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworksInvalid(ValueError):
    """A list of networks that cannot be stored; the message names the entry and why."""


def network_parse(text: str) -> Network:
    """One network: ``10.0.0.0/8``, ``2001:db8::/32``, or a bare address (``/32``, ``/128``).

    Host bits are dropped (``10.1.2.3/8`` is ``10.0.0.0/8``): people write an address of the range.
    """
    entry = text.strip()
    try:
        if not entry or len(entry) > 100 or any(char.isspace() for char in entry):
            raise ValueError
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise NetworksInvalid(
            f"{entry[:60]!r} is not a network: write an address range in CIDR form, e.g. 10.0.0.0/8, "
            "192.168.1.0/24 or 2001:db8::/32, or a single address"
        ) from None
    return network


def networks_validate(entries: Iterable[str]) -> list[str]:
    """The list as stored: each entry parsed and normalised, duplicates dropped, order kept (empty: none).

    Raises :class:`NetworksInvalid` naming the first bad entry, or when there are over ``MAX_NETWORKS``.
    """
    stored: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise NetworksInvalid(f"{str(entry)[:60]!r} is not a network")
        text = str(network_parse(entry))
        if text not in stored:
            stored.append(text)
    if len(stored) > MAX_NETWORKS:
        raise NetworksInvalid(f"At most {MAX_NETWORKS} networks: merge neighbouring ranges into larger ones.")
    return stored


def networks_parse(text: str) -> list[str]:
    """A list typed by a person: one network per line (commas and spaces separate them too)."""
    return networks_validate(part for part in text.replace(",", " ").split() if part)


def networks_text(networks: Sequence[str]) -> str:
    """A list for a textarea: one network per line."""
    return "\n".join(networks)


def address_parse(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address as the server saw it, or None when there is none or it is not an IP address.

    An IPv4-mapped IPv6 address (``::ffff:10.1.2.3``, from a dual-stack socket) is its IPv4 address.
    """
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def address_in(address: str | None, networks: Sequence[str | Network]) -> bool:
    """Is ``address`` in one of ``networks``? False for no address or one that is not an IP address."""
    parsed = address_parse(address)
    if parsed is None:
        return False
    for network in networks:
        net = network if isinstance(network, Network) else ipaddress.ip_network(network, strict=False)
        if parsed.version == net.version and parsed in net:
            return True
    return False


def networks_for(token: BridgeToken) -> list[str]:
    """The networks that apply to the token: its own when it has some, else its team's (empty: any)."""
    return list(token.allowed_networks or token.team.allowed_networks or [])


def network_refusal(token: BridgeToken, address: str | None) -> str | None:
    """Why a bridge with ``token`` may not connect from ``address``, or None when it may.

    A list applies when the token or its team has one; then an unknown address (``None``, a Unix socket) is
    refused too: the server cannot tell where it comes from.
    """
    networks = networks_for(token)
    if not networks or address_in(address, networks):
        return None
    whose = "this token" if token.allowed_networks else f"the team “{token.team.name}”"
    where = address or "an unknown address"
    return (
        f"Signoff refused this bridge: it connects from {where}, outside the networks {whose} may connect "
        f"from ({', '.join(networks[:5])}{', …' if len(networks) > 5 else ''}). Connect from an allowed "
        f"network (VPN, office), or ask the admins of the team “{token.team.name}” to allow this address."
    )


def token_network_refused(*, token: BridgeToken, address: str | None) -> str | None:
    """Check a connecting bridge's address; when refused, audit it, alert the team's admins and return why.

    Audited (``token.network_refused``) and alerted (kind ``network``, one open alert per token and address
    that counts up): a token used from elsewhere may be a leaked one.
    """
    refusal = network_refusal(token, address)
    if refusal is None:
        return None
    with transaction.atomic():
        audit_record(
            kind="token.network_refused",
            team=token.team,
            token=token,
            address=address or "",
            networks=networks_for(token),
        )
        transaction.on_commit(
            lambda: alert_network_refused(token=token, address=address or "unknown"), robust=True
        )
    return refusal


def _beyond_team(networks: Sequence[str], team: Team) -> list[str]:
    """Those of ``networks`` not inside one of the team's (all of them are, when the team has none)."""
    if not team.allowed_networks:
        return []
    team_nets = [ipaddress.ip_network(net, strict=False) for net in team.allowed_networks]
    outside = []
    for text in networks:
        net = ipaddress.ip_network(text, strict=False)
        if not any(net.version == wide.version and net.subnet_of(wide) for wide in team_nets):  # type: ignore[arg-type]
            outside.append(text)
    return outside


def token_networks_change(*, token: BridgeToken, networks: Iterable[str], by: User) -> bool:
    """Set the networks a token may connect from (empty: its team's); audited with the old and new lists.

    Returns False when nothing changed. Raises :class:`NetworksInvalid` for a bad entry, or when someone
    other than a team admin would let the token connect from beyond the team's networks. Bridges already
    connected stay connected; the list applies from their next connect.
    """
    stored = networks_validate(networks)
    with transaction.atomic():
        locked = BridgeToken.objects.select_for_update().select_related("team").get(pk=token.pk)
        outside = _beyond_team(stored, locked.team)
        if outside and not is_admin(by, locked.team):
            raise NetworksInvalid(
                f"{', '.join(outside[:3])} {'is' if len(outside) == 1 else 'are'} outside the team's allowed "
                f"networks ({', '.join(locked.team.allowed_networks[:5])}): only a team admin may allow a "
                "token more than the team."
            )
        before = list(locked.allowed_networks or [])
        if before == stored:
            return False
        BridgeToken.objects.filter(pk=token.pk).update(allowed_networks=stored)
        token.allowed_networks = stored
        audit_record(
            kind="token.networks_changed",
            team=locked.team,
            actor_id=by.pk,
            token=locked,
            name=locked.name,
            before=before,
            networks=stored,
        )
    return True


def team_networks_change(*, team: Team, networks: Iterable[str], by: User) -> bool:
    """Set the networks the team's bridges may connect from (empty: any); audited with the old and new.

    Returns False when nothing changed. Raises :class:`NetworksInvalid` for a bad entry. Tokens with a list
    of their own keep it. Bridges already connected stay connected until they reconnect.
    """
    stored = networks_validate(networks)
    with transaction.atomic():
        locked = Team.objects.select_for_update().get(pk=team.pk)
        before = list(locked.allowed_networks or [])
        if before == stored:
            return False
        locked.allowed_networks = stored
        locked.save(update_fields=["allowed_networks"])
        team.allowed_networks = stored
        audit_record(
            kind="team.networks_changed", team=locked, actor_id=by.pk, before=before, networks=stored
        )
    return True
