"""Every write in Signoff: typed, keyword-only, atomic functions that audit in the same transaction."""
