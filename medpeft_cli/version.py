"""`medpeft --version`: what a bug report or a published result needs to name the software.

The same facts every result row records (store/provenance.py): medpeft's version and git commit,
Python, and the versions of the packages that compute results.
"""

from __future__ import annotations

import platform

import medpeft_cli


def version_lines() -> list[str]:
    from medpeft_cli.store.provenance import PACKAGES, git_commit, package_version

    commit = git_commit()
    where = f"git commit {commit}" if commit else "git commit unknown (not a git checkout; containers set MEDPEFT_GIT_COMMIT)"
    packages = ", ".join(f"{name} {package_version(name) or 'not installed'}" for name in PACKAGES)
    return [f"medpeft {medpeft_cli.__version__}", where, f"python {platform.python_version()}, {packages}"]
