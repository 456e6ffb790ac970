"""The layout keeps the architecture: imports point one way, and no package swallows the rest.

- ``kiosk`` (the shared core) imports no service and no tool, and never TensorFlow;
- a service (consumers, frontend, autoscaler, model_server) imports no other service and no
  tool: services meet only through Redis, the bucket and the model server's protocol;
- ``local`` starts services as processes and imports none of them;
- ``evaluation`` reads the consumers' pure processing and model contract, and no other service;
- only the model server imports TensorFlow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "kiosk"
SERVICES = ("consumers", "frontend", "autoscaler", "model_server")
TOOLS = ("local", "evaluation")
PACKAGES = (CORE, *SERVICES, *TOOLS)
ALLOWED = {
    CORE: set(),
    "consumers": set(),
    "frontend": set(),
    "autoscaler": set(),
    "model_server": set(),
    "local": {"evaluation"},  # the demo samples come from the generator
    "evaluation": {"consumers"},  # it measures what the consumers serve
}
TENSORFLOW = {"tensorflow", "keras"}
# The reshaping left the core at 3.8k lines; Redis behind Sentinel (redis_url, sentinel, the
# WAIT for replicas), which every service's Redis client needs, brought it to 4.1k; users and
# costs (who owns a job and may see it, what it used), which the frontend, the consumers and
# the exporter all need, to 4.7k; fair share and the queues' pace (the claim order, positions
# and ETAs, which the queue protocol, the frontend and the CLI all need), to 5.1k.
CORE_MAX_LINES = 5500
MAX_SHARE = 0.25
PROCESSING = "consumers/processing"


def _sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if not p.name.endswith("_pb2.py"))


def _imports(path: Path) -> set[str]:
    """Top-level names of every module the file imports, at any depth (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _lines(package: str) -> int:
    return sum(len(p.read_text().splitlines()) for p in _sources(package))


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_what_the_layout_allows(package: str) -> None:
    forbidden = (set(PACKAGES) - {package, CORE}) - ALLOWED[package]
    if package == CORE:
        forbidden = set(PACKAGES) - {CORE}
    if package != "model_server":
        forbidden |= TENSORFLOW
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & forbidden)
        for path in _sources(package)
        if _imports(path) & forbidden
    }
    assert not wrong, f"{package} imports what it must not: {wrong}"


def test_only_the_model_servers_loader_imports_tensorflow() -> None:
    users = [
        str(path.relative_to(ROOT))
        for path in _sources("model_server")
        if _imports(path) & TENSORFLOW
    ]
    assert users == ["model_server/model.py"]


def test_the_core_stays_small_and_no_other_package_holds_more_than_a_quarter() -> None:
    lines = {package: _lines(package) for package in PACKAGES}
    assert lines[CORE] < CORE_MAX_LINES, lines
    # consumers/processing is pure image maths that evaluation reads too (a library of its
    # own): it counts apart from the consumers' I/O and job types.
    lines[PROCESSING] = _lines(PROCESSING)
    lines["consumers"] -= lines[PROCESSING]
    total = sum(lines.values())
    biggest = max((p for p in lines if p != CORE), key=lines.__getitem__)
    assert lines[biggest] <= MAX_SHARE * total, (biggest, lines)
