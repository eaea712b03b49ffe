"""JSON-lines files that survive interruption: records cut short by a kill are skipped, and truncation
(on resume, back to the last checkpoint) rewrites the file atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from famus.atomic import atomic_write_text


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if isinstance(rec, dict):
            out.append((line, rec))
    return out


def truncate_jsonl(path: str | os.PathLike[str], key: str, last: int) -> list[dict[str, Any]]:
    """Keep the records whose integer ``key`` is ``<= last`` (e.g. ``epoch``, ``step``); returns them.

    A missing file stays missing (and gives ``[]``); the rewrite is atomic and keeps each kept line as written.
    """
    path = Path(path)
    if not path.exists():
        return []
    kept = [(line, r) for line, r in _records(path) if isinstance(r.get(key), int) and r[key] <= last]
    atomic_write_text(path, "".join(line + "\n" for line, _ in kept))
    return [r for _, r in kept]
