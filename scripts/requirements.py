"""Print the requirements of pyproject.toml's base dependencies and the given extras, one a line.

    python scripts/requirements.py selector      # what `pip install '.[selector]'` needs

The Dockerfiles install these before copying the sources, so editing the code does not
reinstall the dependencies. Self-references (`pcm[selector]` inside `trainer`) are expanded.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    self_ref = re.compile(rf"^{re.escape(project['name'])}\[([^\]]+)\]$")
    out: list[str] = list(project["dependencies"])
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in project["optional-dependencies"]:
            raise SystemExit(f"unknown extra {extra!r}; known: "
                             f"{sorted(project['optional-dependencies'])}")
        seen.add(extra)
        for req in project["optional-dependencies"][extra]:
            match = self_ref.match(req.split(";")[0].strip())
            if match:
                todo.extend(e.strip() for e in match.group(1).split(","))
            elif req not in out:
                out.append(req)
    return out


if __name__ == "__main__":
    print("\n".join(requirements([e for arg in sys.argv[1:] for e in arg.split(",") if e])))
