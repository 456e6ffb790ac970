"""The allocator policies: each mallopt call as documented, and nothing where the operator set
glibc's own variables or the C library has no mallopt."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from kiosk import allocator

REPO = Path(__file__).resolve().parent.parent


class _FakeMallopt:
    """Records calls; answers 1 (taken) unless told to refuse one parameter. Takes the
    ``argtypes``/``restype`` a ctypes function is given."""

    def __init__(self, refuse: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.refuse = refuse

    def __call__(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 0 if parameter == self.refuse else 1


class _FakeLibc:
    def __init__(self, refuse: int | None = None) -> None:
        self.mallopt = _FakeMallopt(refuse)

    @property
    def calls(self) -> list[tuple[int, int]]:
        return self.mallopt.calls


def test_the_model_server_keeps_up_to_128_mib_free_and_blocks_to_32_mib_on_the_heap() -> None:
    libc = _FakeLibc()
    assert allocator._mallopt(allocator.SERVING, libc) is True  # type: ignore[arg-type]
    assert libc.calls == [(-3, 32 * 2**20), (-1, 128 * 2**20)]


def test_a_consumer_gives_big_blocks_back_keeps_32_mib_and_shares_one_arena() -> None:
    libc = _FakeLibc()
    assert allocator._mallopt(allocator.FLAT, libc) is True  # type: ignore[arg-type]
    assert libc.calls == [(-3, 8 * 2**20), (-1, 32 * 2**20), (-8, 1)]


def test_a_refused_setting_is_reported_as_not_done() -> None:
    libc = _FakeLibc(refuse=-1)
    assert allocator._mallopt(allocator.SERVING, libc) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("variable", allocator.OPERATOR_SETTINGS)
def test_an_operators_allocator_variable_leaves_the_allocator_alone(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "65536")
    libc = _FakeLibc()
    assert allocator._mallopt(allocator.SERVING, libc) is False  # type: ignore[arg-type]
    assert libc.calls == []


def test_a_c_library_without_mallopt_is_left_alone() -> None:
    assert allocator._mallopt(allocator.FLAT, object()) is False  # type: ignore[arg-type]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
@pytest.mark.parametrize("policy", ["keep_freed_memory", "keep_memory_flat"])
def test_glibc_takes_each_policy(policy: str) -> None:
    # In a process of its own: a policy cannot be undone in this one.
    code = f"from kiosk import allocator; raise SystemExit(0 if allocator.{policy}() else 3)"
    env = {k: v for k, v in os.environ.items() if k not in allocator.OPERATOR_SETTINGS}
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO).returncode == 0
