"""Dockerfile.consumer and Dockerfile.autoscaler: hadolint, and the basics checked directly (no
Docker engine runs here): multi-stage, non-root, pinned base, a health check that works for each
role, no TensorFlow, and only what each image needs in its build context."""

from __future__ import annotations

import ast
import fnmatch
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiosk.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "consumer": ROOT / "Dockerfile.consumer",
    "autoscaler": ROOT / "Dockerfile.autoscaler",
}
# What each image runs, and the first-party packages it must carry for that.
PACKAGES = {"consumer": {"kiosk", "consumers", "frontend"}, "autoscaler": {"kiosk", "autoscaler"}}
FIRST_PARTY = {"kiosk", "consumers", "frontend", "autoscaler"}
RUNTIME_LOCK = "requirements/runtime.txt"
VENV_PIP = "/opt/venv/bin/pip"
NON_ROOT_UID = "10001"


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int


def parse(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; stage = FROM count."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


@pytest.fixture(params=sorted(DOCKERFILES))
def image(request: pytest.FixtureRequest) -> str:
    return request.param


# ------------------------------------------------------------------------------ hadolint


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if not found:
        pytest.fail("hadolint is missing: it comes with the dev extra (make setup installs it)")
    return found


def test_hadolint_passes_both_dockerfiles():
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_dockerfile_with_the_usual_mistakes(tmp_path):
    """The linter really runs: an unpinned, root, shell-form Dockerfile is refused."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD python -m frontend\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


# ------------------------------------------------------------------------------ the basics


def test_multi_stage_build_copies_only_the_venv_into_the_final_stage(image):
    instructions = parse(DOCKERFILES[image])
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2
    assert froms[0].args.endswith(" AS builder")
    final = final_stage(instructions)
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    assert not [i for i in final if i.keyword in ("ADD",)]


def test_base_images_are_pinned_slim_bookworm_python_311_and_the_same_everywhere():
    bases = set()
    for path in DOCKERFILES.values():
        for i in parse(path):
            if i.keyword == "FROM":
                ref = i.args.split()[0]
                assert ":" in ref and not ref.endswith(":latest"), ref
                tag = ref.split("@")[0].split(":", 1)[1]
                assert re.fullmatch(r"3\.11\.\d+-slim-bookworm", tag), ref
                bases.add(ref)
    assert len(bases) == 1, f"the images drifted apart: {bases}"


def test_final_stage_runs_as_the_non_root_numeric_user(image):
    final = final_stage(parse(DOCKERFILES[image]))
    users = [i.args for i in final if i.keyword == "USER"]
    # Numeric, so Kubernetes' runAsNonRoot can verify it (helm/kiosk runs as 10001).
    assert users == [f"{NON_ROOT_UID}:{NON_ROOT_UID}"]
    useradd = " ".join(i.args for i in final if i.keyword == "RUN")
    assert f"--uid {NON_ROOT_UID}" in useradd and "--no-log-init" in useradd
    keywords = [i.keyword for i in final]
    assert keywords.index("USER") > max(k for k, w in enumerate(keywords) if w in ("RUN", "COPY"))


def test_environment_workdir_and_default_command(image):
    final = final_stage(parse(DOCKERFILES[image]))
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "PATH=/opt/venv/bin:$PATH" in env
    assert [i for i in final if i.keyword == "WORKDIR"]
    (cmd,) = [json.loads(i.args) for i in final if i.keyword == "CMD"]
    assert not [i for i in final if i.keyword == "ENTRYPOINT"]  # the chart sets `command`
    expected = {"consumer": "frontend", "autoscaler": "autoscaler"}[image]
    assert cmd == ["python", "-m", expected]
    module = ROOT / expected / "__main__.py"
    assert module.is_file()


def test_consumer_image_binds_the_frontend_to_all_interfaces():
    env = " ".join(i.args for i in parse(DOCKERFILES["consumer"]) if i.keyword == "ENV")
    assert "KIOSK_HOST=0.0.0.0" in env  # the default 127.0.0.1 is unreachable from outside


def test_each_image_installs_the_runtime_lock_then_kiosk_without_dependencies(image):
    """The runtime lock, hashes checked, in a layer before the sources; then Kiosk alone, built by
    the lock's setuptools, and pip check: a dependency the lock lacks fails the build."""
    instructions = parse(DOCKERFILES[image])
    installs = [
        (n, " ".join(i.args.split())) for n, i in enumerate(instructions) if "pip install" in i.args
    ]
    assert [a.split(" && ")[0] for _, a in installs] == [
        f"{VENV_PIP} install --no-cache-dir --require-hashes -r {RUNTIME_LOCK}",
        f"{VENV_PIP} install --no-cache-dir --no-deps --no-build-isolation .",
    ]
    (lock_at, _), (project_at, project_install) = installs
    copies = {
        i.args.split()[0].rstrip("/"): n
        for n, i in enumerate(instructions)
        if i.keyword == "COPY" and not i.args.startswith("--from")
    }
    assert copies[RUNTIME_LOCK] < lock_at < min(v for k, v in copies.items() if k != RUNTIME_LOCK)
    assert max(copies.values()) < project_at
    assert f"&& {VENV_PIP} check &&" in project_install


def test_no_tensorflow_goes_into_either_image(image):
    text = DOCKERFILES[image].read_text()
    assert "[serve" not in text and not re.search(r"pip install[^\n]*tensorflow", text)
    # The image installs the runtime lock, which has the main dependencies only: TensorFlow
    # must stay in an extra, and out of that lock.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "tensorflow" in d.lower()]
    lock = (ROOT / RUNTIME_LOCK).read_text().lower()
    assert "tensorflow" not in lock and "keras" not in lock
    # ... and the build itself fails if it came in anyway.
    assert "find_spec('tensorflow') is not None" in text


def copied_sources(image: str) -> set[str]:
    sources = set()
    for i in parse(DOCKERFILES[image]):
        if i.keyword == "COPY" and not i.args.startswith("--from"):
            sources |= {s.rstrip("/") for s in i.args.split()[:-1]}
    return sources


def test_each_image_copies_only_its_own_packages(image):
    expected = {RUNTIME_LOCK, "pyproject.toml", "README.md"} | PACKAGES[image]
    assert copied_sources(image) == expected


def first_party_imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names} & FIRST_PARTY
    return found


def test_the_packages_an_image_carries_import_nothing_it_lacks(image):
    """Consumers and frontend must not import autoscaler (and the other way round): an image
    carries only its own packages."""
    for package in PACKAGES[image]:
        missing = first_party_imports(package) - PACKAGES[image]
        assert not missing, f"{package} imports {missing}, which the {image} image does not copy"


def test_the_build_checks_import_what_the_chart_runs(image):
    """The builder stage imports the modules the chart's commands start, so a missing
    dependency fails the build rather than the pod."""
    text = DOCKERFILES[image].read_text()
    chart_modules = {
        "consumer": ["consumers.__main__", "frontend.app"],
        "autoscaler": ["autoscaler.__main__", "kiosk.janitor"],
    }[image]
    for module in chart_modules:
        assert f"import {module}" in text or f", {module}" in text
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file()


# ------------------------------------------------------------------------------ .dockerignore


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; '!' re-includes; a
    pattern matching a folder covers what is inside it; '**/' matches any depth."""
    result = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if pattern.startswith("**/"):
            matched = any(fnmatch.fnmatchcase(p, pattern[3:]) for p in parts)
        else:
            matched = any(fnmatch.fnmatchcase(c, pattern) for c in candidates)
        if matched:
            result = not negate
    return result


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_what_the_images_copy():
    patterns = dockerignore()
    for image in DOCKERFILES:
        for source in copied_sources(image):
            assert not ignored(source, patterns), f"{source} is outside the build context"
    assert not ignored("kiosk/serving/protos/tfserving_pb2.py", patterns)
    assert not ignored("frontend/static/index.html", patterns)
    assert not ignored("autoscaler/rules/kiosk-rules.yaml", patterns)


def test_dockerignore_leaves_out_environments_caches_data_and_models():
    patterns = dockerignore()
    for path in (
        ".venv/bin/python",
        ".cache/pip",
        ".kiosk/bucket/uploads/a.tif",
        ".git/HEAD",
        "tests/test_queue.py",
        "tests/artifacts/x.png",
        "benchmark/results/cluster_sim.json",
        "models/NuclearSegmentation/1/saved_model.pb",
        "samples/cells.tif",
        "kiosk.egg-info/PKG-INFO",
        "kiosk/__pycache__/queue.cpython-311.pyc",
        "helm/kiosk/values.yaml",
        "requirements/all.txt",
        "requirements/build.in",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"


# ------------------------------------------------------------------------------ health checks


def healthcheck(image: str) -> tuple[list[str], str]:
    """The HEALTHCHECK's options and its Python program."""
    (check,) = [i.args for i in parse(DOCKERFILES[image]) if i.keyword == "HEALTHCHECK"]
    options, _, command = check.partition("CMD ")
    argv = json.loads(command)  # exec form: valid JSON, or Docker would run it through a shell
    assert argv[:2] == ["python", "-c"]
    return options.split(), argv[2]


@pytest.fixture
def http_server() -> Iterator[tuple[int, list[str]]]:
    """A server on a free local port that answers 200 and records the paths asked for."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def run_check(image: str, tmp_path: Path, pid1: list[str], env: dict[str, str]) -> int:
    """The image's health check with PID 1's command line as given (a file stands in for
    /proc/1/cmdline) and the container's environment."""
    _, program = healthcheck(image)
    assert "/proc/1/cmdline" in program
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"\0".join(a.encode() for a in pid1) + b"\0")
    program = program.replace("/proc/1/cmdline", str(cmdline))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")}
    result = subprocess.run(
        [sys.executable, "-c", program], env={**clean, **env}, capture_output=True, timeout=30
    )
    return result.returncode


def test_healthcheck_options_are_bounded(image):
    options, _ = healthcheck(image)
    assert {o.split("=")[0] for o in options} >= {"--interval", "--timeout", "--retries"}


def test_consumer_image_checks_the_frontends_health_route(tmp_path, http_server):
    port, seen = http_server
    frontend = ["python", "-m", "frontend"]
    assert run_check("consumer", tmp_path, frontend, {"KIOSK_PORT": str(port)}) == 0
    assert seen == ["/api/health-check"]
    assert run_check("consumer", tmp_path, frontend, {"KIOSK_PORT": str(free_port())}) != 0


def test_consumer_image_checks_a_consumers_metrics_port_when_it_has_one(tmp_path, http_server):
    port, seen = http_server
    consumer = ["python", "-m", "consumers", "segmentation"]
    assert run_check("consumer", tmp_path, consumer, {"KIOSK_METRICS_PORT": str(port)}) == 0
    assert seen == ["/metrics"]
    assert run_check("consumer", tmp_path, consumer, {"KIOSK_METRICS_PORT": str(free_port())}) != 0
    # Metrics off (the default): nothing listens, nothing to probe.
    assert run_check("consumer", tmp_path, consumer, {}) == 0


def test_autoscaler_image_checks_the_exporter_but_not_the_janitor(tmp_path, http_server):
    port, seen = http_server
    autoscaler = ["python", "-m", "autoscaler"]
    assert run_check("autoscaler", tmp_path, autoscaler, {"KIOSK_EXPORTER_PORT": str(port)}) == 0
    assert seen == ["/metrics"]
    closed = {"KIOSK_EXPORTER_PORT": str(free_port())}
    assert run_check("autoscaler", tmp_path, autoscaler, closed) != 0
    janitor = ["python", "-m", "kiosk.janitor"]
    assert run_check("autoscaler", tmp_path, janitor, closed) == 0
