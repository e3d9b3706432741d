"""What a result bundle holds and how it is read safely.

    X.tar.gz
      MANIFEST.json                    format, version, who/when/what, the run keys, and the sha256 and
                                       size of every other member
      runs/<run_key>/spec.json         the run's resolved spec: its key is recomputed from it
      runs/<run_key>/result.json       the store row (metrics, provenance)
      runs/<run_key>/metrics.json      per-epoch history, val/test metrics
      runs/<run_key>/predictions_test.csv   per-sample labels, predictions, probabilities
      runs/<run_key>/train.log, ...    the run directory's other small files
      runs/<run_key>/adapter/, *.safetensors   trained weights, only with --with-weights

A bundle comes from outside: it is read member by member, never extracted as a whole. A member must
be a regular file whose name is MANIFEST.json or runs/<key>/<name>[/<name>...] made of safe parts
(letters, digits, '_', '.', '-', not starting with '.'); anything else (links, devices, absolute or
'..' paths, a name twice) is a problem of the bundle.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpeft_cli.errors import UserError
from medpeft_cli.hashing import file_sha256 as sha256_file

FORMAT = "medpeft-bundle"
VERSION = 1
MANIFEST = "MANIFEST.json"
RUNS = "runs"
SPEC, RESULT, METRICS, PREDICTIONS = "spec.json", "result.json", "metrics.json", "predictions_test.csv"
REQUIRED = (SPEC, RESULT, METRICS, PREDICTIONS)
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
WEIGHT_DIRS = ("adapter",)
MAX_DEPTH = 6  # runs/<key>/a/b/c/d
READ_LIMIT = 512 * 1024 * 1024  # bytes of one member kept in memory to be checked (json, csv, logs)
KEPT = (SPEC, RESULT, METRICS, PREDICTIONS)  # the members verification reads; the others are only hashed

_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def is_weights(relative: str) -> bool:
    """Whether a run directory's file (path relative to it, '/'-separated) is trained weights."""
    return relative.split("/")[0] in WEIGHT_DIRS or relative.endswith(WEIGHT_SUFFIXES)


def run_of(name: str) -> str | None:
    """The run key of a member name runs/<key>/..., or None."""
    parts = name.split("/")
    return parts[1] if len(parts) >= 3 and parts[0] == RUNS else None


def check_name(name: str) -> str | None:
    """Why a member name is not allowed, or None."""
    if name == MANIFEST:
        return None
    parts = name.split("/")
    if parts[0] != RUNS or len(parts) < 3 or len(parts) > MAX_DEPTH:
        return f"entry {name!r} is outside runs/<run_key>/"
    if not all(_SAFE.fullmatch(p) for p in parts):
        return f"entry {name!r} has an unsafe name"
    return None



@dataclass
class Member:
    name: str
    size: int
    sha256: str
    data: bytes | None = None  # kept for the files verification reads (KEPT)


@dataclass
class Contents:
    """A bundle read member by member: the manifest, each member's checksum, and the problems found."""

    path: Path
    sha256: str
    manifest: dict[str, Any] | None = None
    members: dict[str, Member] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # of the bundle as a whole
    run_problems: dict[str, list[str]] = field(default_factory=dict)  # run key -> problems of its members

    def flag(self, name: str, problem: str) -> None:
        key = run_of(name)
        if key is None:
            self.problems.append(problem)
        else:
            self.run_problems.setdefault(key, []).append(problem)


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Member:
    fh = tar.extractfile(info)
    digest, kept, size = hashlib.sha256(), [], 0
    keep = info.name.rsplit("/", 1)[-1] in KEPT or info.name == MANIFEST
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        digest.update(chunk)
        size += len(chunk)
        if keep and size <= READ_LIMIT:
            kept.append(chunk)
    return Member(info.name, size, digest.hexdigest(), b"".join(kept) if keep and size <= READ_LIMIT else None)


def read_bundle(path: Path) -> Contents:
    """Every member's checksum (and the text of the files verification reads); never writes anything."""
    import json

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no bundle at {path}; pass the .tar.gz that `medpeft bundle create` wrote")
    contents = Contents(path, sha256_file(path))
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                why = check_name(info.name)
                if why is None and not info.isreg():
                    why = f"entry {info.name!r} is not a regular file (links and devices are not allowed)"
                if why is None and info.name in contents.members:
                    why = f"entry {info.name!r} appears twice" + (f" (duplicate run {run_of(info.name)})" if run_of(info.name) else "")
                if why is not None:
                    contents.flag(info.name, why)
                    continue
                contents.members[info.name] = _read_member(tar, info)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{path} is not a readable .tar.gz bundle ({exc}); ask the submitter for the file `medpeft bundle create` wrote") from None
    manifest = contents.members.get(MANIFEST)
    if manifest is None or manifest.data is None:
        contents.problems.append(f"no {MANIFEST}: not a medpeft bundle")
        return contents
    try:
        data = json.loads(manifest.data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        contents.problems.append(f"{MANIFEST} is not valid JSON ({exc})")
        return contents
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict) or not isinstance(data.get("runs"), list):
        contents.problems.append(f"{MANIFEST} is not a {FORMAT} manifest (format, runs, files)")
    elif data.get("version") != VERSION:
        contents.problems.append(f"{MANIFEST} is version {data.get('version')!r}; this medpeft reads version {VERSION}: update medpeft")
    else:
        contents.manifest = data
    return contents
