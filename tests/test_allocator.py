"""The allocator thresholds: set on glibc, left to an operator who set glibc's own variables."""

from __future__ import annotations

import pytest

from kiosk import allocator


def test_freed_memory_is_kept_on_glibc() -> None:
    assert allocator.keep_freed_memory() is True


@pytest.mark.parametrize("variable", allocator.OPERATOR_SETTINGS)
def test_an_operators_malloc_variable_leaves_the_allocator_alone(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "65536")
    assert allocator.keep_freed_memory() is False


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    assert allocator.keep_freed_memory() is False
