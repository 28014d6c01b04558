"""Small helpers shared by the workflow scripts' command lines."""

from __future__ import annotations

import json
from typing import Any


def parse_json_object(text: str, option: str) -> dict[str, Any]:
    """Parse a JSON-object command-line option (a config section), naming the option when it is malformed."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"{option}: not valid JSON ({error}): {text[:200]}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{option}: expected a JSON object, got {type(value).__name__}")
    return value
