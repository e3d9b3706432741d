"""Run configuration: pydantic models, YAML + `--set` overrides, and the run key.

A `RunSpec` says everything that determines a run's result. `run_key()` hashes its normalised form
(method options and learning rate filled with their defaults) together with PROTOCOL_VERSION, so the
same experiment gets the same key on every machine, and a change of the training protocol gets new keys.
This module must stay free of torch imports: the CLI builds specs before deciding to train.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medpeft_cli.errors import UserError

# Bump when a change of the training or evaluation code could change a result for the same spec.
PROTOCOL_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodSpec(BaseModel):
    """The PEFT method and its options; options are validated by the method's own options model."""

    model_config = ConfigDict(extra="allow")

    name: str = "lora"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainOptions(_Strict):
    epochs: int = Field(5, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1)
    lr: float | None = Field(None, gt=0, description="None = the method's default learning rate")
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    grad_accum_steps: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    eval_batch_size: int = Field(256, ge=1)


class OutputOptions(_Strict):
    """Where results go. Not part of the run key."""

    runs_dir: Path = Path("runs")
    db: Path = Path("results/medpeft.duckdb")
    data_dir: Path | None = None


class RunSpec(_Strict):
    """One run: dataset x backbone x method x data fraction x seed (+ training options)."""

    task: Literal["classification"] = "classification"
    dataset: str = "synthetic-lesions"
    backbone: str = "vit_tiny_patch16_224"
    weights: str = Field(
        "random",
        description="'random' (random init), 'pretrained' (the timm/HF hub default weights) or a path to a local weights file",
    )
    image_size: int = Field(64, ge=8, le=4096)
    method: MethodSpec = Field(default_factory=MethodSpec)
    data_fraction: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0)
    train: TrainOptions = Field(default_factory=TrainOptions)
    output: OutputOptions = Field(default_factory=OutputOptions)

    @model_validator(mode="before")
    @classmethod
    def _method_shorthand(cls, data: Any) -> Any:
        # `method: lora` is shorthand for `method: {name: lora}`.
        if isinstance(data, dict) and isinstance(data.get("method"), str):
            data = {**data, "method": {"name": data["method"]}}
        return data

    def key_fields(self) -> dict[str, Any]:
        """The fields that determine the result (everything except output locations)."""
        data = self.model_dump(mode="json", exclude={"output"})
        data["method"] = {"name": self.method.name, **self.method.options}
        return data


def run_key(spec: RunSpec) -> str:
    """Stable 16-hex-digit key of a normalised spec and the protocol version."""
    payload = json.dumps({"protocol_version": PROTOCOL_VERSION, **spec.key_fields()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def format_validation_error(exc: ValidationError, prefix: str = "invalid config") -> str:
    """One line: every problem as `field.path: message (got value)`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling; `medpeft train --help` lists the options)"
        got = err.get("input")
        shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{loc}: {msg}{shown}")
    return f"{prefix}: " + "; ".join(parts)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value parsed as YAML so numbers, bools and lists get their types)."""
    if "=" not in text:
        raise UserError(f"--set {text!r} is not KEY=VALUE; write e.g. --set method.rank=4")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise UserError(f"--set {text!r} has an empty key; write e.g. --set train.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if isinstance(child, str) and part == "method":
            child = {"name": child}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[path[-1]] = value


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}; fix the file and retry") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a YAML mapping of options (e.g. `method: lora`), not a {type(data).__name__}")
    return data


def build_spec(config: Path | None = None, flags: dict[str, Any] | None = None, overrides: list[str] | None = None) -> RunSpec:
    """Defaults < YAML config < command-line flags (dotted keys) < `--set` overrides."""
    data: dict[str, Any] = load_yaml(config) if config else {}
    for dotted, value in (flags or {}).items():
        if value is None:
            continue
        path = dotted.split(".")
        if path == ["method"]:
            current = data.get("method")
            current_name = current.get("name") if isinstance(current, dict) else current
            # A different method on the command line drops the config's options of the old method.
            if current_name != value:
                data["method"] = {"name": value}
            continue
        _set_path(data, path, value)
    for text in overrides or []:
        path, value = parse_override(text)
        _set_path(data, path, value)
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc)) from None
