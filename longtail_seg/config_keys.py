"""The one check every config section goes through: keys a module does not know fail loudly, naming the allowed
ones, so a typo in config.yaml never silently falls back to a default."""

from __future__ import annotations

from collections.abc import Iterable


def reject_unknown_keys(section: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Raise ``ValueError`` naming ``section``, the unknown keys of ``given`` and the ``allowed`` ones."""
    allowed = sorted(set(allowed))
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; allowed: {allowed}")
