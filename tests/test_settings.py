"""Settings: typed, validated, and documented in the README exactly as the code defines them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumers.registry import job_type_settings
from kiosk.settings import ConsumerSettings, FrontendSettings, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_settings_table_matches_the_code() -> None:
    block = re.search(
        r"<!-- settings:start -->\n(.*?)<!-- settings:end -->", README.read_text(), re.S
    )
    assert block, "README.md lost its settings markers"
    assert block.group(1) == settings_table(job_type_settings()), "run `make settings-table`"


def test_a_heartbeat_must_outlive_its_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIOSK_HEARTBEAT_INTERVAL", "10")
    monkeypatch.setenv("KIOSK_HEARTBEAT_TTL", "5")
    with pytest.raises(ValidationError, match="must be longer than heartbeat_interval"):
        ConsumerSettings()


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIOSK_QUEUES", "Seg:mentation")
    with pytest.raises(ValidationError, match="invalid job type 'Seg:mentation'"):
        FrontendSettings()


def test_settings_are_read_without_connecting_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIOSK_REDIS_URL", "redis://nowhere.invalid:1/0")
    assert FrontendSettings().redis_url == "redis://nowhere.invalid:1/0"


def test_a_plugin_job_type_declares_settings_of_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kiosk.storage import open_bucket
    from tests.support.jobtypes import Tagged, TaggedSettings

    monkeypatch.setenv("KIOSK_TAG", "blue")
    consumer = Tagged(ConsumerSettings(), open_bucket(f"file://{tmp_path}"))
    assert isinstance(consumer.job_settings, TaggedSettings)
    assert consumer.job_settings.tag == "blue"
    plugin = "tagged=tests.support.jobtypes:Tagged"
    assert TaggedSettings in job_type_settings([plugin])
    table = settings_table(job_type_settings([plugin]))
    assert "| `KIOSK_TAG` | `untagged` | tagged |" in table
    assert "`KIOSK_TAG`" not in settings_table(job_type_settings())


def test_job_type_settings_are_not_consumer_settings() -> None:
    assert not {"tile_size", "max_zip_entries", "segmentation_model"} & set(
        ConsumerSettings.model_fields
    )


def test_a_heartbeat_must_outlive_a_claims_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIOSK_CLAIM_TIMEOUT", "30")
    with pytest.raises(ValidationError, match="must be longer than claim_timeout"):
        ConsumerSettings()
