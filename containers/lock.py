"""Write containers/requirements.lock: exact versions of medpeft's runtime dependency closure.

Run it in an environment where `pip install -e .` succeeded and the tests pass:

    .venv/bin/python containers/lock.py > containers/requirements.lock

It starts from the dependencies in pyproject.toml (no extras) and walks the installed distributions,
so the lock holds exactly the versions that were tested; a dependency that is not installed is named
on stderr (install it, run the tests, then lock). The Dockerfile installs the lock, then medpeft itself with
--no-deps, then runs `pip check`, so a lock that misses a dependency fails the image build.
Markers are evaluated for this interpreter and for the image's Python (3.12, Ubuntu 24.04).
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

IMAGE_PYTHON = ("3.12", "3.12.3")


def _environments(extras: frozenset[str]) -> list[dict[str, str]]:
    here = default_environment()
    image = {**here, "python_version": IMAGE_PYTHON[0], "python_full_version": IMAGE_PYTHON[1]}
    return [{**env, "extra": extra} for env in (here, image) for extra in ("", *sorted(extras))]


def project_requirements() -> list[Requirement]:
    """medpeft's runtime requirements, read from pyproject.toml (not from possibly stale install metadata)."""
    import tomllib

    data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    return [Requirement(text) for text in data["project"]["dependencies"]]


def closure() -> dict[str, str]:
    """Canonical name -> installed version of every distribution medpeft needs at run time.

    Extras asked for by a requirement (torch needs `cuda-toolkit[cublas,...]`) are followed too.
    """
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    envs = _environments(frozenset())
    todo = [(r.name, frozenset(r.extras)) for r in project_requirements() if r.marker is None or any(r.marker.evaluate(e) for e in envs)]
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            print(f"lock.py: {name} is not installed here; `pip check` in the image build will name it", file=sys.stderr)
            continue
        found[canonicalize_name(dist.metadata["Name"])] = dist.version
        envs = _environments(extras)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return found


def main() -> None:
    pins = closure()
    print("# Exact versions of medpeft's runtime dependencies, as tested; installed by containers/Dockerfile.")
    print(f"# Written by containers/lock.py on {platform.system()} {platform.machine()}, Python {platform.python_version()}.")
    print("# Regenerate after changing pyproject.toml: .venv/bin/python containers/lock.py > containers/requirements.lock")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
