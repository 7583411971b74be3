"""Check that every module in library/ has complete documentation, as ansible-doc reads it.

A module passes when ansible-doc loads it and it has a short_description, a description, an
author and examples. Every option and suboption needs a description and a type, and every
RETURN value a description and a `returned` field.

Run from the repository root:  python tools/check_module_docs.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LIBRARY = REPO / "library"


def option_problems(options: dict[str, Any], where: str) -> list[str]:
    """List the options (and their suboptions) that lack a description or a type."""
    problems = []
    for name, option in (options or {}).items():
        if not option.get("description"):
            problems.append(f"{where} option {name} has no description")
        if not option.get("type"):
            problems.append(f"{where} option {name} has no type")
        problems += option_problems(option.get("suboptions") or {}, f"{where} option {name}:")
    return problems


def module_problems(name: str, entry: dict[str, Any]) -> list[str]:
    """List what is missing from one module's documentation."""
    doc = entry.get("doc") or {}
    problems = [f"{name}: no {field}" for field in ("short_description", "description", "author") if not doc.get(field)]
    problems += option_problems(doc.get("options") or {}, name + ":")
    if not (entry.get("examples") or "").strip():
        problems.append(f"{name}: no EXAMPLES")
    returns = entry.get("return") or {}
    if not returns:
        problems.append(f"{name}: no RETURN")
    for key, value in returns.items():
        if not value.get("description"):
            problems.append(f"{name}: return value {key} has no description")
        if not value.get("returned"):
            problems.append(f"{name}: return value {key} does not say when it is returned")
    return problems


def main() -> int:
    modules = sorted(path.stem for path in LIBRARY.glob("*.py") if not path.name.startswith("_"))
    if not modules:
        print(f"no modules found in {LIBRARY}", file=sys.stderr)
        return 1

    completed = subprocess.run(
        ["ansible-doc", "-M", str(LIBRARY), "-t", "module", "--json", *modules],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        print(f"ansible-doc failed with status {completed.returncode}:\n{completed.stderr}", file=sys.stderr)
        return 1
    documented = json.loads(completed.stdout)

    problems = []
    for name in modules:
        if name not in documented:
            problems.append(f"{name}: ansible-doc could not load its documentation")
            continue
        problems += module_problems(name, documented[name])

    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"module docs: {len(modules)} modules checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
