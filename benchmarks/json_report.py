"""How every benchmark ends: its report printed as JSON, and written to --out when given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def print_report(report: dict, out: Optional[Path]) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
