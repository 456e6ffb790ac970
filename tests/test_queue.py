"""The Redis queue protocol, against a real redis-server."""

from __future__ import annotations

import json
import re

import pytest

from kiosk import queue as queue_module
from kiosk.jobs import JobRequest, creation_fields
from kiosk.keys import (
    INPUT_USERS,
    JOB_INDEX,
    WAITING_TOKEN,
    JobField,
    Status,
    dead_letter_list,
    heartbeat_key,
    new_job_key,
    processing_list,
)
from kiosk.queue import Heartbeat, JobQueue, Liveness, Outcome, ParentGone, render_lua


def submit(queue: JobQueue, job_type: str = "echo", name: str = "a.tif") -> str:
    request = JobRequest(job_type, name, f"uploads/{name}")
    key = new_job_key(request.queue, name)
    return queue.submit(request.queue, key, creation_fields(request, "test"))


def test_submit_creates_hash_queue_entry_and_index_together(queue: JobQueue) -> None:
    key = submit(queue)
    r = queue.redis
    assert queue.waiting("echo") == [key]
    assert r.lrange("echo", 0, -1) == [WAITING_TOKEN], "the queue list holds a token a job"
    assert r.hget(key, JobField.STATUS) == Status.NEW
    assert r.zscore(JOB_INDEX, key) is not None


def test_submitting_the_same_job_twice_queues_it_once(queue: JobQueue) -> None:
    request = JobRequest("echo", "a.tif", "uploads/a.tif")
    key = new_job_key("echo", "a.tif")
    fields = creation_fields(request, "test")
    queue.submit("echo", key, fields)
    queue.submit("echo", key, fields)  # e.g. a client retry after a lost reply
    assert queue.waiting("echo") == [key]


def test_claim_moves_the_job_into_the_consumers_processing_list(queue: JobQueue) -> None:
    key = submit(queue)
    claim = queue.claim("echo", "c1", timeout=1)
    assert claim is not None and claim.key == key
    assert queue.redis.llen("echo") == 0
    assert queue.redis.lrange(processing_list("echo", "c1"), 0, -1) == [key]
    assert claim.fields[JobField.STATUS] == Status.STARTED
    assert claim.attempt == 1
    assert claim.fields[JobField.IDENTITY_STARTED] == "c1"


def test_claim_times_out_on_an_empty_queue(queue: JobQueue) -> None:
    assert queue.claim("echo", "c1", timeout=0.1) is None


def test_jobs_are_claimed_first_in_first_out(queue: JobQueue) -> None:
    keys = [submit(queue, name=f"{i}.tif") for i in range(5)]
    claimed = [queue.claim("echo", "c1", 1) for _ in keys]
    assert [c.key for c in claimed if c] == keys


def test_finish_marks_done_sets_ttl_and_releases(queue: JobQueue) -> None:
    submit(queue)
    claim = queue.claim("echo", "c1", 1)
    settled = queue.finish(claim, "c1", {JobField.OUTPUT_URL: "http://x/y.tif"})
    assert settled.outcome is Outcome.APPLIED and settled.still_held == 0
    fields = queue.get(claim.key)
    assert fields[JobField.STATUS] == Status.DONE
    assert fields[JobField.PROGRESS] == "100"
    assert fields[JobField.FINISHED_AT]
    assert 0 < queue.redis.ttl(claim.key) <= 600
    assert queue.redis.llen(processing_list("echo", "c1")) == 0


def test_a_client_set_expiry_is_kept_when_the_job_finishes(queue: JobQueue) -> None:
    submit(queue)
    claim = queue.claim("echo", "c1", 1)
    queue.expire(claim.key, 30)
    queue.finish(claim, "c1", {})
    assert 0 < queue.redis.ttl(claim.key) <= 30


def test_only_the_holder_can_finish_a_job(queue: JobQueue) -> None:
    submit(queue)
    claim = queue.claim("echo", "c1", 1)
    assert queue.finish(claim, "someone-else", {}).outcome is Outcome.LOST
    assert queue.get(claim.key)[JobField.STATUS] == Status.STARTED


def test_updates_stop_once_the_job_is_taken_over_or_deleted(queue: JobQueue) -> None:
    key = submit(queue)
    claim = queue.claim("echo", "c1", 1)
    assert queue.update(claim, "c1", {JobField.PROGRESS: 50}) is Outcome.APPLIED
    # the janitor gives it away: c1 no longer holds it
    queue.requeue_lapsed(["echo"])
    assert queue.update(claim, "c1", {JobField.PROGRESS: 60}) is Outcome.LOST
    claim2 = queue.claim("echo", "c2", 1)
    queue.delete(key, "echo")
    assert queue.update(claim2, "c2", {JobField.PROGRESS: 70}) is Outcome.GONE


def test_retry_requeues_behind_others_until_attempts_run_out(queue: JobQueue) -> None:
    key = submit(queue)
    other = submit(queue, name="b.tif")
    for attempt in (1, 2):
        claim = queue.claim("echo", "c1", 1)
        assert claim.key == (key if attempt == 1 else other)
        if claim.key != key:
            queue.finish(claim, "c1", {})
            claim = queue.claim("echo", "c1", 1)
        assert queue.retry(claim, "c1", "RuntimeError: boom").outcome is Outcome.RETRYING
        assert queue.get(key)[JobField.LAST_ERROR] == "RuntimeError: boom"
    claim = queue.claim("echo", "c1", 1)
    assert claim.attempt == 3
    assert queue.retry(claim, "c1", "RuntimeError: boom").outcome is Outcome.FAILED
    fields = queue.get(key)
    assert fields[JobField.STATUS] == Status.FAILED
    assert fields[JobField.REASON] == "RuntimeError: boom (gave up after 3 of 3 attempts)"
    letters = queue.dead_letters("echo")
    assert [d["key"] for d in letters] == [key]
    assert letters[0]["fields"][JobField.STATUS] == Status.FAILED


def test_fail_is_final_at_once_and_dead_lettered(queue: JobQueue) -> None:
    key = submit(queue)
    claim = queue.claim("echo", "c1", 1)
    assert queue.fail(claim, "c1", "the image is corrupt").outcome is Outcome.FAILED
    assert queue.get(key)[JobField.REASON] == "the image is corrupt"
    assert queue.redis.llen(dead_letter_list("echo")) == 1
    assert queue.redis.ttl(key) > 0


def test_dead_letter_list_is_capped(queue: JobQueue) -> None:
    queue.dead_letter_max = 3
    for i in range(5):
        submit(queue, name=f"{i}.tif")
        queue.fail(queue.claim("echo", "c1", 1), "c1", "bad")
    assert queue.redis.llen(dead_letter_list("echo")) == 3


def test_hand_back_returns_to_the_front_without_counting_the_attempt(queue: JobQueue) -> None:
    key = submit(queue)
    submit(queue, name="later.tif")
    claim = queue.claim("echo", "c1", 1)
    assert queue.hand_back(claim, "c1").outcome is Outcome.APPLIED
    assert queue.get(key)[JobField.ATTEMPTS] == "0"
    assert queue.get(key)[JobField.STATUS] == Status.NEW
    again = queue.claim("echo", "c2", 1)
    assert again.key == key and again.attempt == 1


def test_janitor_requeues_only_consumers_without_a_heartbeat(queue: JobQueue) -> None:
    a, b = submit(queue, name="a.tif"), submit(queue, name="b.tif")
    queue.heartbeat("alive", ttl=30, beat=Heartbeat("echo"))
    queue.claim("echo", "alive", 1)
    queue.claim("echo", "dead", 1)
    sweeps = queue.requeue_lapsed(["echo"])
    assert [(s.consumer_id, s.requeued) for s in sweeps] == [("dead", 1)]
    assert queue.waiting("echo") == [b]
    assert queue.redis.lrange(processing_list("echo", "alive"), 0, -1) == [a]
    assert "stopped responding" in queue.get(b)[JobField.LAST_ERROR]


def test_janitor_fails_a_job_whose_attempts_ran_out(queue: JobQueue) -> None:
    key = submit(queue)
    for _ in range(3):
        queue.claim("echo", "dead", 1)
        queue.requeue_lapsed(["echo"])
    fields = queue.get(key)
    assert fields[JobField.STATUS] == Status.FAILED
    assert "gave up after 3 of 3 attempts" in fields[JobField.REASON]
    assert json.loads(queue.redis.lindex(dead_letter_list("echo"), 0))["key"] == key


def test_a_job_deleted_while_queued_is_skipped(queue: JobQueue) -> None:
    key = submit(queue)
    queue.redis.delete(key)  # e.g. expired by a client
    assert queue.claim("echo", "c1", 0.2) is None
    assert queue.redis.llen(processing_list("echo", "c1")) == 0


def test_delete_removes_a_waiting_job_everywhere(queue: JobQueue) -> None:
    key = submit(queue)
    assert queue.delete(key, "echo")
    assert queue.redis.llen("echo") == 0
    assert queue.get(key) is None
    assert queue.redis.zscore(JOB_INDEX, key) is None


def test_deleting_the_only_job_of_an_input_frees_it(queue: JobQueue) -> None:
    key = submit(queue, name="a.tif")
    assert queue.redis.hget(INPUT_USERS, "uploads/a.tif") == key
    (removed,) = queue.remove([(key, "echo")])
    assert removed.existed and removed.input == "uploads/a.tif" and removed.input_free
    assert not queue.redis.exists(INPUT_USERS)


def test_an_input_two_jobs_use_is_freed_by_the_last_one_deleted(queue: JobQueue) -> None:
    first, second = submit(queue, name="a.tif"), submit(queue, name="a.tif")
    (removed,) = queue.remove([(first, "echo")])
    assert (removed.users_left, removed.input_free) == (1, False)
    assert queue.remove([(second, "echo")])[0].input_free
    gone = queue.remove([(second, "echo")])[0]
    assert not gone.existed and not gone.input_free


def test_a_user_that_expired_does_not_keep_an_input(queue: JobQueue) -> None:
    first, second = submit(queue, name="a.tif"), submit(queue, name="a.tif")
    queue.redis.delete(first)  # its hash expired
    assert queue.remove([(second, "echo")])[0].input_free


def test_inputs_in_use_are_those_of_jobs_that_have_not_ended(queue: JobQueue) -> None:
    finished, queued = submit(queue, name="a.tif"), submit(queue, name="b.tif")
    queue.finish(queue.claim("echo", "c1", 1), "c1", {})  # the first queued: a.tif
    assert queue.get(finished)[JobField.STATUS] == Status.DONE
    assert queue.get(queued)[JobField.STATUS] == Status.NEW
    inputs = ["uploads/a.tif", "uploads/b.tif", "uploads/never-used.tif"]
    assert queue.inputs_in_use(inputs) == {"uploads/b.tif"}
    assert queue.inputs_in_use(inputs, unfinished_only=False) == {
        "uploads/a.tif",
        "uploads/b.tif",
    }


def test_inputs_whose_jobs_all_expired_are_forgotten(queue: JobQueue) -> None:
    keys = [submit(queue, name=f"{i}.tif") for i in range(3)]
    shared = submit(queue, name="0.tif")
    queue.redis.delete(keys[0], keys[1])  # expired
    assert queue.prune_inputs(batch=2) == 1  # 1.tif; 0.tif is still used by `shared`
    assert queue.redis.hgetall(INPUT_USERS) == {"uploads/0.tif": shared, "uploads/2.tif": keys[2]}


def test_a_child_of_a_deleted_zip_is_not_created(queue: JobQueue) -> None:
    parent = submit(queue, name="plate.zip")
    queue.delete(parent, "echo-zip")
    child = JobRequest("echo", "a.tif", "uploads/p/a.tif", parent=parent)
    key = new_job_key("echo", "a.tif")
    with pytest.raises(ParentGone, match="no longer exists"):
        queue.submit("echo", key, creation_fields(child, "test"))
    ended = {**creation_fields(child, "test"), JobField.STATUS: Status.FAILED}
    with pytest.raises(ParentGone):
        queue.submit_ended_child("echo", key, ended)
    assert queue.get(key) is None and queue.redis.llen("echo") == 0
    assert not queue.redis.hexists(INPUT_USERS, "uploads/p/a.tif")


def test_a_job_stranded_in_its_own_list_is_resumed(queue: JobQueue) -> None:
    key = submit(queue)
    queue.redis.lmove("echo", processing_list("echo", "c1"), "RIGHT", "LEFT")  # lost reply
    held = queue.held("echo", "c1")
    assert held is not None and held.key == key and held.attempt == 1


def test_a_stranded_job_is_found_beside_the_jobs_a_consumer_is_working_on(
    queue: JobQueue,
) -> None:
    submit(queue, name="a.tif")
    working = queue.claim("echo", "c1", 1)
    stranded = submit(queue, name="b.tif")
    queue.redis.lmove("echo", processing_list("echo", "c1"), "RIGHT", "LEFT")  # lost reply
    assert working is not None
    held = queue.held("echo", "c1", skip={working.key})
    assert held is not None and held.key == stranded
    assert queue.held("echo", "c1", skip={working.key, stranded}) is None


def test_heartbeats_round_trip_and_unreadable_ones_are_skipped(queue: JobQueue) -> None:
    beat = Heartbeat("echo", host="pod-a", pid=7, jobs=("echo:a", "echo:b"), stopping=True)
    queue.heartbeat("c1", 30, beat)
    queue.redis.set(heartbeat_key("garbled"), "{not json", ex=30)
    queue.redis.set(heartbeat_key("no-queue"), '{"pid": 3}', ex=30)
    assert queue.live_consumers() == {"c1": beat}
    assert beat.busy and not Heartbeat("echo").busy
    older = Heartbeat.from_json('{"queue": "echo", "pid": 5, "job": "echo:a"}')
    assert older == Heartbeat("echo", pid=5, jobs=("echo:a",)), "a rolling upgrade reads both"


def test_stats_count_queued_in_flight_and_dead_letters(queue: JobQueue) -> None:
    for i in range(4):
        submit(queue, name=f"{i}.tif")
    submit(queue, name="z.zip")
    queue.claim("echo", "c1", 1)
    queue.fail(queue.claim("echo", "c2", 1), "c2", "bad")
    queue.claim("echo", "c3", 1)
    stats = {s.queue: s for s in queue.stats(["echo", "echo-zip"])}
    assert (stats["echo"].queued, stats["echo"].in_flight, stats["echo"].dead_letters) == (1, 2, 1)
    assert stats["echo"].demand == 3
    assert stats["echo-zip"].queued == 1


def test_prune_index_drops_expired_jobs(queue: JobQueue) -> None:
    keys = [submit(queue, name=f"{i}.tif") for i in range(3)]
    queue.redis.delete(keys[0], keys[2])
    assert queue.prune_index(batch=2) == 2
    assert queue.redis.zrange(JOB_INDEX, 0, -1) == [keys[1]]


def test_recent_lists_newest_first(queue: JobQueue) -> None:
    keys = [submit(queue, name=f"{i}.tif") for i in range(3)]
    for i, key in enumerate(keys):
        queue.redis.zadd(JOB_INDEX, {key: 1000 + i})
    assert [k for k, _ in queue.recent(2)] == [keys[2], keys[1]]
    assert [k for k, _ in queue.recent(5, after=(1001, keys[1]))] == [keys[0]]


def test_paging_through_jobs_created_in_the_same_millisecond_sees_each_once(
    queue: JobQueue,
) -> None:
    keys = [submit(queue, name=f"{i}.tif") for i in range(7)]
    queue.redis.zadd(JOB_INDEX, dict.fromkeys(keys, 1000.5))
    seen, after = [], None
    while page := queue.recent(2, after):
        seen += [k for k, _ in page]
        after = (page[-1][1], page[-1][0])
    assert sorted(seen) == sorted(keys) and len(seen) == 7


def test_a_claim_the_janitor_already_took_back_does_not_start(queue: JobQueue) -> None:
    key = submit(queue)
    queue.redis.lmove("echo", processing_list("echo", "c1"), "RIGHT", "LEFT")  # BLMOVE's step
    queue.requeue_lapsed(["echo"])  # c1 has no heartbeat: back to the queue
    assert queue._started(key, "echo", "c1") is None  # then c1's second step runs
    fields = queue.get(key)
    assert (fields[JobField.STATUS], fields[JobField.ATTEMPTS]) == (Status.NEW, "0")


def test_a_key_that_is_not_a_job_hash_in_a_queue_is_dropped(queue: JobQueue) -> None:
    queue.redis.set("echo:junk:not-a-hash", "x")
    queue.redis.lpush("echo", "echo:junk:not-a-hash")
    key = submit(queue)
    assert queue.claim("echo", "c1", 0.2) is None
    assert queue.claim("echo", "c1", 0.2).key == key
    queue.redis.lpush(processing_list("echo", "dead"), "echo:junk:not-a-hash")
    sweeps = {sweep.consumer_id: sweep for sweep in queue.requeue_lapsed(["echo"])}
    assert sweeps["dead"].dropped == 1


def test_an_update_to_a_deleted_job_also_releases_it(queue: JobQueue) -> None:
    key = submit(queue)
    claim = queue.claim("echo", "c1", 1)
    queue.redis.delete(key)
    assert queue.update(claim, "c1", {JobField.PROGRESS: 5}) is Outcome.GONE
    assert queue.redis.llen(processing_list("echo", "c1")) == 0


@pytest.mark.parametrize("kind", ["string", "list"])
def test_get_refuses_keys_that_are_not_hashes(queue: JobQueue, kind: str) -> None:
    if kind == "string":
        queue.redis.set("x", "1")
    else:
        queue.redis.lpush("x", "1")
    assert queue.get("x") is None
    assert queue.get_fields("x", ["status"]) is None


def test_lua_scripts_take_every_field_and_status_name_from_the_one_home() -> None:
    names = {f.value for f in JobField} | {s.value for s in Status}
    sources = {
        name: value
        for name, value in vars(queue_module).items()
        if name.startswith("_") and name.isupper() and isinstance(value, str)
    }
    assert len(sources) >= 10
    for name, source in sources.items():
        literals = set(re.findall(r"'([^'$]*)'", source))
        assert not literals & names, f"{name} spells {literals & names} instead of $FIELD_/$STATUS_"
        rendered = queue_module.render_lua(source)
        assert "$" not in rendered


def test_render_lua_refuses_a_name_that_is_not_a_field_or_status() -> None:
    assert render_lua("redis.call('HGET', KEYS[1], '$FIELD_STATUS')").endswith("'status')")
    with pytest.raises(KeyError):
        render_lua("redis.call('HGET', KEYS[1], '$FIELD_STATUSS')")


def test_a_claim_writes_the_heartbeat_so_the_janitor_cannot_take_a_job_just_claimed(
    queue: JobQueue,
) -> None:
    key = submit(queue)
    queue.stop_heartbeat("c1")  # as after a Redis restart that lost the heartbeat
    alive = Liveness(Heartbeat(queue="echo", pid=1), ttl=20.0)
    claim = queue.claim("echo", "c1", 1, alive)
    assert claim is not None and claim.key == key
    # the janitor sweeps before the consumer's own heartbeat comes round: nothing to take
    assert queue.requeue_lapsed(["echo"]) == []
    assert queue.redis.lrange(processing_list("echo", "c1"), 0, -1) == [key]
    assert queue.redis.hget(key, JobField.ATTEMPTS) == "1"
    assert queue.redis.pttl(heartbeat_key("c1")) > 15_000


def test_without_its_heartbeat_a_claimed_job_goes_back_to_the_queue(queue: JobQueue) -> None:
    """The race the heartbeat written with each claim closes: a claim alone leaves the job to
    the janitor until the consumer's next beat."""
    key = submit(queue)
    assert queue.claim("echo", "c1", 1) is not None
    sweeps = queue.requeue_lapsed(["echo"])
    assert [s.requeued for s in sweeps] == [1]
    assert queue.waiting("echo") == [key]


def test_resuming_a_stranded_job_refreshes_the_heartbeat_first(queue: JobQueue) -> None:
    key = submit(queue)
    queue.redis.lmove("echo", processing_list("echo", "c1"), "RIGHT", "LEFT")
    alive = Liveness(Heartbeat(queue="echo"), ttl=20.0)
    claim = queue.held("echo", "c1", alive=alive)
    assert claim is not None and claim.key == key
    assert queue.requeue_lapsed(["echo"]) == []
