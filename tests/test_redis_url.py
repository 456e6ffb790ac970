"""Redis URLs: redis+sentinel:// parsed into Sentinels, master, database and credentials; bad
URLs refused with the reason and without the password; settings check the URL at start."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from kiosk.redis_url import (
    RedisUrlError,
    SentinelUrl,
    check_redis_url,
    parse_sentinel_url,
    redacted,
)
from kiosk.settings import CommonSettings, FrontendSettings


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://s0:26379,s1:26380,s2/kiosk/0",
            SentinelUrl((("s0", 26379), ("s1", 26380), ("s2", 26379)), "kiosk", 0),
        ),
        ("redis+sentinel://s0/kiosk", SentinelUrl((("s0", 26379),), "kiosk", 0)),
        ("redis+sentinel://s0/kiosk/3/", SentinelUrl((("s0", 26379),), "kiosk", 3)),
        (
            "redis+sentinel://:p%40ss@10.0.0.1:1,[::1]:2,[fd00::5]/my%20master/1",
            SentinelUrl(
                (("10.0.0.1", 1), ("::1", 2), ("fd00::5", 26379)),
                "my master",
                1,
                password="p@ss",
            ),
        ),
        (
            "redis+sentinel://kiosk:secret@s0/m?sentinel_username=watch&sentinel_password=s%26e",
            SentinelUrl(
                (("s0", 26379),),
                "m",
                0,
                username="kiosk",
                password="secret",
                sentinel_username="watch",
                sentinel_password="s&e",
            ),
        ),
        ("REDIS+SENTINEL://s0/m", SentinelUrl((("s0", 26379),), "m", 0)),
    ],
)
def test_sentinel_urls_parse(url: str, expected: SentinelUrl) -> None:
    assert parse_sentinel_url(url) == expected
    assert check_redis_url(url) == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel:///kiosk/0", "names no Sentinel"),
        ("redis+sentinel://s0,,s1/kiosk", "empty Sentinel address"),
        ("redis+sentinel://s0:port/kiosk", "has port 'port', not a number"),
        ("redis+sentinel://s0:0/kiosk", "has port '0', not a number 1-65535"),
        ("redis+sentinel://s0:70000/kiosk", "has port '70000'"),
        ("redis+sentinel://s0:1:2/kiosk", "'s0:1:2' is not HOST[:PORT]"),
        ("redis+sentinel://[::1/kiosk", "is not HOST[:PORT]"),
        ("redis+sentinel://s0", "names no master"),
        ("redis+sentinel://s0/", "names no master"),
        ("redis+sentinel://s0/0", "'0' looks like a database number"),
        ("redis+sentinel://s0/kiosk/one", "database 'one' is not a number"),
        ("redis+sentinel://s0/kiosk/1/2", "database '1/2' is not a number"),
        ("redis+sentinel://s0/kiosk?db=1", "unknown option db (known: sentinel_username"),
        ("redis+sentinel://s0/kiosk?sentinel_password", "query is not NAME=VALUE"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(RedisUrlError, match=re.escape(problem)) as caught:
        check_redis_url(url)
    assert "redis+sentinel://[:PASSWORD@]HOST[:PORT]" in str(caught.value)  # the form


@pytest.mark.parametrize(
    "url",
    ["http://redis:6379/0", "localhost:6379", "sentinel://s0:26379", "redis+cluster://a/0"],
)
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(RedisUrlError, match=r"must start with redis://, rediss://, unix:// or"):
        check_redis_url(url)


@pytest.mark.parametrize(
    "url", ["redis://h:6379/0", "rediss://:pw@h/1", "unix:///run/redis.sock?db=2"]
)
def test_plain_urls_pass_unchanged(url: str) -> None:
    assert check_redis_url(url) == url


def test_no_message_shows_a_password() -> None:
    url = "redis+sentinel://user:hunter2@s0:bad/m?sentinel_password=swordfish"
    with pytest.raises(RedisUrlError) as caught:
        check_redis_url(url)
    assert "hunter2" not in str(caught.value) and "swordfish" not in str(caught.value)
    assert redacted(url) == "redis+sentinel://user:***@s0:bad/m?sentinel_password=***"
    assert redacted("http://:hunter2@h") == "http://:***@h"


def test_settings_refuse_a_bad_url_naming_the_setting_not_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIOSK_REDIS_URL", "redis+sentinel://:hunter2@s0,s1/")
    with pytest.raises(ValidationError, match="redis_url") as caught:
        FrontendSettings()
    assert "names no master" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "setting", "waits_for"),
    [
        ("redis://127.0.0.1:6379/0", None, 0),
        ("redis+sentinel://s0,s1,s2/kiosk/0", None, 1),
        ("redis+sentinel://s0,s1,s2/kiosk/0", 0, 0),
        ("redis+sentinel://s0,s1,s2/kiosk/0", 2, 2),
        ("redis://127.0.0.1:6379/0", 1, 1),
    ],
)
def test_replicas_to_wait_for_default_to_one_behind_sentinel(
    url: str, setting: int | None, waits_for: int
) -> None:
    settings = CommonSettings(redis_url=url, redis_min_replicas=setting)
    assert settings.replicas_to_wait_for() == waits_for


def test_the_replica_timeout_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="redis_replica_timeout"):
        CommonSettings(redis_replica_timeout=0)
