"""`medpeft bundle verify`: does every run of a bundle follow from its own files?

For the bundle: a readable tar.gz whose members are all safe plain files, a medpeft manifest, every
member listed there with the same sha256 and size, every listed file present, each run key once.
For each run:

- its files: spec.json, result.json, metrics.json and predictions_test.csv present, unchanged (checksums);
- its key: recomputed from spec.json with medpeft_cli.config.run_key; it must be the directory's name
  and result.json's run_key, and no other run of the bundle may have it;
- its row: result.json describes the spec (spec_json, dataset, backbone, weights, method, seed, data
  fraction, image size) and is a finished classification run of this medpeft's protocol version;
- its metrics: test macro-F1, accuracy, balanced accuracy, AUROC, ECE and per-class F1, recomputed from
  the per-sample predictions (bundle/predictions.py), must equal every stored copy (result.json's
  columns and metrics_json, metrics.json).

Each run gets a verdict: ok, or one line naming what differs. Verification shows that the numbers follow
from the predictions and the key from the spec; it cannot show that the predictions came from the model
(re-run `medpeft eval` on a bundle made --with-weights, or the run itself, for that).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpeft_cli.bundle.layout import MANIFEST, METRICS, PREDICTIONS, REQUIRED, RESULT, RUNS, SPEC, Contents, read_bundle, run_of
from medpeft_cli.bundle import predictions as preds


@dataclass
class RunVerdict:
    key: str
    problems: list[str] = field(default_factory=list)
    row: dict[str, Any] | None = None
    files: dict[str, bytes | None] = field(default_factory=dict)  # relative name -> data (None: only hashed)
    recomputed_key: str | None = None
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        if self.ok:
            return f"ok    {self.key}: {self.summary}"
        return f"FAIL  {self.key}: " + "; ".join(self.problems)


@dataclass
class Verification:
    contents: Contents
    runs: list[RunVerdict]
    problems: list[str]  # of the bundle as a whole

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.runs) and all(r.ok for r in self.runs)

    @property
    def failed(self) -> list[RunVerdict]:
        return [r for r in self.runs if not r.ok]

    def lines(self) -> list[str]:
        return [f"FAIL  bundle: {p}" for p in self.problems] + [r.line() for r in self.runs]

    def first_failure(self) -> str:
        if self.problems:
            return self.problems[0]
        bad = self.failed
        return f"run {bad[0].key}: {'; '.join(bad[0].problems)}" if bad else "it holds no runs"


def _check_manifest(contents: Contents) -> list[str]:
    """Checksums and listing; returns the manifest's run keys (duplicates flagged)."""
    manifest = contents.manifest
    files: dict[str, Any] = manifest["files"]
    for name, entry in files.items():
        rel = name.split("/", 2)[-1]
        member = contents.members.get(name)
        if member is None:
            contents.flag(name, f"{rel} is listed in {MANIFEST} but missing from the bundle")
        elif not isinstance(entry, dict) or entry.get("sha256") != member.sha256 or entry.get("size") != member.size:
            contents.flag(name, f"{rel} differs from its sha256 in {MANIFEST} (changed after the bundle was made)")
    for name in contents.members:
        if name != MANIFEST and name not in files:
            contents.flag(name, f"{name.split('/', 2)[-1]} is not listed in {MANIFEST}")
    keys = [k for k in manifest["runs"] if isinstance(k, str)]
    if len(keys) != len(manifest["runs"]):
        contents.problems.append(f"{MANIFEST} lists a run that is not a run key")
    for key, count in Counter(keys).items():
        if count > 1:
            contents.run_problems.setdefault(key, []).append(f"listed {count} times in {MANIFEST} (duplicate key)")
    return list(dict.fromkeys(keys))


def _load_json(verdict: RunVerdict, name: str) -> Any:
    data = verdict.files.get(name)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        verdict.problems.append(f"{name} is not valid JSON")
        return None


def _check_key(verdict: RunVerdict, spec_data: Any, row: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from medpeft_cli.config import PROTOCOL_VERSION, RunSpec, format_validation_error, run_key
    from medpeft_cli.errors import UserError

    if row.get("backbone_source") == "custom" or '"backbone_code"' in str(row.get("spec_json")):
        verdict.problems.append("a custom backbone's run key includes the sha256 of its source file, which a bundle does not carry: it cannot be verified")
        return
    if row.get("protocol_version") != PROTOCOL_VERSION:
        verdict.problems.append(f"made under protocol version {row.get('protocol_version')!r}; this medpeft verifies version {PROTOCOL_VERSION}")
        return
    try:
        spec = RunSpec.model_validate(spec_data)
        verdict.recomputed_key = run_key(spec)
        key_fields = json.dumps(spec.key_fields(), sort_keys=True)
    except ValidationError as exc:
        verdict.problems.append(f"{SPEC} is not a valid run spec ({format_validation_error(exc, prefix='spec')})")
        return
    except UserError as exc:  # e.g. a custom backbone whose source file (part of the key) is not here
        verdict.problems.append(f"cannot recompute the run key from {SPEC}: {exc}")
        return
    if verdict.recomputed_key != verdict.key:
        verdict.problems.append(f"{SPEC} gives run key {verdict.recomputed_key}, not {verdict.key} (the spec was changed)")
    if row.get("run_key") != verdict.key:
        verdict.problems.append(f"{RESULT} names run {row.get('run_key')!r}")
    if row.get("spec_json") != key_fields:
        verdict.problems.append(f"{RESULT}'s spec_json is not {SPEC}'s")
    placed = {"task": spec.task, "dataset": spec.dataset, "backbone": spec.backbone, "weights": spec.weights, "method": spec.method.name,
              "seed": spec.seed, "data_fraction": spec.data_fraction, "image_size": spec.image_size}  # fmt: skip
    for column, value in placed.items():
        if row.get(column) != value:
            verdict.problems.append(f"{column} is {row.get(column)!r} in {RESULT} but {value!r} in {SPEC}")


def _check_metrics(verdict: RunVerdict, row: dict[str, Any], metrics_file: Any) -> None:
    try:
        probs, labels, chosen = preds.parse(verdict.files[PREDICTIONS].decode("utf-8"), row.get("num_classes"))
    except (preds.BadPredictions, UnicodeDecodeError) as exc:
        verdict.problems.append(str(exc))
        return
    computed = preds.recompute(probs, labels, chosen)
    verdict.problems += preds.mismatches(preds.stored_copies(row, metrics_file or {}), computed)
    verdict.summary = (
        f"{row.get('method')} on {row.get('dataset')} / {row.get('backbone')} (seed {row.get('seed')}, fraction {row.get('data_fraction'):g}): "
        f"key recomputed; test macro-F1 {computed['macro_f1']:.4f} recomputed from {computed['n']} predictions"
    )


def check_run(verdict: RunVerdict) -> None:
    """Every per-run check that the run's files allow (problems are appended, never raised)."""
    missing = [name for name in REQUIRED if name not in verdict.files]
    if missing:
        verdict.problems.append(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
    unread = [name for name in REQUIRED if name in verdict.files and verdict.files[name] is None]
    if unread:
        verdict.problems.append(f"{', '.join(unread)} too large to check")
    row, spec_data, metrics_file = (_load_json(verdict, n) for n in (RESULT, SPEC, METRICS))
    if not isinstance(row, dict):
        if RESULT in verdict.files:
            verdict.problems.append(f"{RESULT} is not a result row")
        return
    verdict.row = row
    if row.get("status") != "ok" or row.get("task") != "classification":
        verdict.problems.append(f"a {row.get('task')} run with status {row.get('status')}: only finished classification runs can be verified")
        return
    if spec_data is not None:
        _check_key(verdict, spec_data, row)
    if verdict.files.get(PREDICTIONS) is not None:
        _check_metrics(verdict, row, metrics_file)


def _duplicate_keys(runs: list[RunVerdict]) -> None:
    """A key claimed by two run directories (as result.json's run_key or as the key its spec gives)."""
    claims: dict[str, list[str]] = {}
    for verdict in runs:
        for key in {verdict.recomputed_key, (verdict.row or {}).get("run_key")} - {None}:
            claims.setdefault(key, []).append(verdict.key)
    for key, owners in claims.items():
        if len(owners) > 1:
            for verdict in runs:
                if verdict.key in owners:
                    others = ", ".join(o for o in owners if o != verdict.key)
                    verdict.problems.append(f"run key {key} is also claimed by {RUNS}/{others} (duplicate key)")


def verify_bundle(path: Path) -> Verification:
    contents = read_bundle(Path(path))
    if contents.manifest is None:  # nothing to check runs against: only what reading found
        return Verification(contents, [RunVerdict(k, list(p)) for k, p in contents.run_problems.items()], contents.problems)
    keys = _check_manifest(contents)
    present = list(dict.fromkeys(k for k in map(run_of, contents.members) if k))
    for key in present:
        if key not in keys:
            contents.run_problems.setdefault(key, []).append(f"has files in the bundle but is not among {MANIFEST}'s runs")
    runs = []
    for key in dict.fromkeys([*keys, *present, *contents.run_problems]):
        verdict = RunVerdict(key, problems=list(contents.run_problems.get(key, [])))
        prefix = f"{RUNS}/{key}/"
        verdict.files = {name[len(prefix):]: m.data for name, m in contents.members.items() if name.startswith(prefix)}
        check_run(verdict)
        runs.append(verdict)
    _duplicate_keys(runs)
    if not runs:
        contents.problems.append("the bundle holds no runs")
    return Verification(contents, runs, contents.problems)
