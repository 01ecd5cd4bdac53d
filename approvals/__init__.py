"""Signoff's Django app: teams, tokens, held tool calls, rules, the audit log and the reviewer UI."""
