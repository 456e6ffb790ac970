"""Fair share on a real Redis: claims take turns between the owners with work waiting (by
weight), whatever they submitted when, with every guarantee of the queue protocol kept (hand
back, retries, the janitor, deletion); and kiosk.fairshare predicts the claims' order exactly."""

from __future__ import annotations

import random

import pytest

from kiosk.fairshare import Line, start_order, weight_of
from kiosk.jobs import JobRequest, creation_fields
from kiosk.keys import (
    OWNERS_PREFIX,
    USER_PREFIX,
    USER_WEIGHT,
    WAITING_TOKEN,
    JobField,
    new_job_key,
    processing_list,
)
from kiosk.queue import JobQueue
from kiosk.users import UserError, UserStore


def submit(queue: JobQueue, owner: str, name: str, job_type: str = "echo") -> str:
    request = JobRequest(job_type, name, f"uploads/{name}", owner=owner)
    key = new_job_key(request.queue, name)
    return queue.submit(request.queue, key, creation_fields(request, "test"))


def owner(queue: JobQueue, key: str) -> str:
    return queue.get(key)[JobField.OWNER]


def claim_all(queue: JobQueue, consumer: str = "c1") -> list[str]:
    """Claim and finish every waiting job, one at a time: the order they started in."""
    started = []
    while (claim := queue.claim("echo", consumer, 0.05)) is not None:
        started.append(claim.key)
        queue.finish(claim, consumer, {})
    return started


# ----------------------------------------------------------------------------- the rule


def test_owners_with_equal_weights_take_turns_oldest_job_first() -> None:
    lines = [Line("b", 0.0, ["b1", "b2"]), Line("a", 0.0, ["a1", "a2", "a3", "a4"])]
    assert list(start_order(lines)) == ["a1", "b1", "a2", "b2", "a3", "a4"]


def test_a_weight_of_two_starts_two_jobs_for_each_of_a_weight_of_one() -> None:
    lines = [Line("a", 0.0, [f"a{i}" for i in range(6)], 2.0), Line("b", 0.0, ["b0", "b1"])]
    assert list(start_order(lines)) == ["a0", "b0", "a1", "a2", "b1", "a3", "a4", "a5"]


def test_a_stored_weight_that_is_not_a_positive_number_counts_as_one() -> None:
    values = ("2", "0.5", "0", "-1", "x", None, "nan", "inf", "1e-320", "1e9")
    assert [weight_of(v) for v in values] == [2, 0.5, 1, 1, 1, 1, 1, 1, 0.01, 100]


def test_a_weight_written_behind_the_apis_back_neither_loses_jobs_nor_breaks_turns(
    queue: JobQueue,
) -> None:
    queue.redis.hset(USER_PREFIX + "ada", USER_WEIGHT, "nan")
    queue.redis.hset(USER_PREFIX + "bob", USER_WEIGHT, "1e-320")
    jobs = [submit(queue, o, f"{o}{i}.tif") for i in range(3) for o in ("ada", "bob", "cy")]
    predicted = queue.waiting("echo")
    assert claim_all(queue) == predicted and sorted(predicted) == sorted(jobs)
    again = [submit(queue, o, f"{o}-again{i}.tif") for i in range(2) for o in ("ada", "cy")]
    assert [owner(queue, k) for k in claim_all(queue)] == ["ada", "cy", "ada", "cy"]
    assert len(again) == 4


# ----------------------------------------------------------------------------- on Redis


def test_a_single_image_behind_another_users_two_thousand_starts_next(queue: JobQueue) -> None:
    big = [submit(queue, "ada", f"plate-{i:04d}.tif") for i in range(2000)]
    first = queue.claim("echo", "c1", 1)
    assert first is not None and first.key == big[0]
    single = submit(queue, "bob", "single.tif")
    nxt = queue.claim("echo", "c2", 1)
    assert nxt is not None and nxt.key == single, "bob's image waits for no more of ada's"
    assert queue.redis.llen("echo") == 1999, "the queue list still counts the waiting jobs"


def test_an_owner_who_waited_nothing_earns_no_credit_for_it(queue: JobQueue) -> None:
    for i in range(10):
        submit(queue, "ada", f"a{i}.tif")
    assert [owner(queue, k) for k in claim_all(queue)] == ["ada"] * 10
    for i in range(4):
        submit(queue, "ada", f"a-again{i}.tif")
    for i in range(4):
        submit(queue, "bob", f"b{i}.tif")
    # bob comes in at the current virtual time, one job behind ada's, not ten: he goes first
    # once, then they alternate (ada before bob on a tie, by name)
    assert [owner(queue, k) for k in claim_all(queue)] == ["bob", "ada"] * 4


def test_a_users_weight_is_their_share_of_the_claims(queue: JobQueue) -> None:
    users = UserStore(queue.redis)
    users.add("ada", weight=3)
    users.add("bob")
    for i in range(9):
        submit(queue, "ada", f"a{i}.tif")
    for i in range(3):
        submit(queue, "bob", f"b{i}.tif")
    order = [owner(queue, k) for k in claim_all(queue)]
    assert order[:8] == ["ada", "bob", "ada", "ada", "ada", "bob", "ada", "ada"]
    assert order.count("ada") == 9 and order.count("bob") == 3
    with pytest.raises(UserError, match=r"from 0\.01 to 100"):
        users.set_weight("bob", 0)
    assert users.set_weight("bob", 0.5).weight == 0.5


@pytest.mark.parametrize("seed", range(6))
def test_the_predicted_order_is_the_order_claims_take(queue: JobQueue, seed: int) -> None:
    """Random owners, weights, submissions and claims, interleaved: at every point the jobs
    still waiting are claimed in exactly the order :func:`start_order` predicts."""
    rng = random.Random(seed)
    owners = ["ada", "bob", "cy", "dee"]
    for name in owners[:3]:
        queue.redis.hset(USER_PREFIX + name, USER_WEIGHT, rng.choice(["1", "2", "0.5", "3"]))
    count = 0
    for _ in range(8):
        for _ in range(rng.randint(0, 12)):
            submit(queue, rng.choice(owners), f"j{count}.tif")
            count += 1
        predicted = queue.waiting("echo")
        take = rng.randint(0, len(predicted))
        for expected in predicted[:take]:
            claim = queue.claim("echo", "c1", 0.05)
            assert claim is not None and claim.key == expected
            queue.finish(claim, "c1", {})
    rest = queue.waiting("echo")
    assert claim_all(queue) == rest


def test_jobs_going_back_keep_their_owners_place_and_the_queue_its_count(
    queue: JobQueue,
) -> None:
    a1, a2 = submit(queue, "ada", "a1.tif"), submit(queue, "ada", "a2.tif")
    b1 = submit(queue, "bob", "b1.tif")
    claim = queue.claim("echo", "c1", 1)
    assert claim is not None and claim.key == a1
    queue.hand_back(claim, "c1")  # shutdown: back to the front of ada's line
    assert queue.waiting("echo") == [b1, a1, a2], "ada had her turn; a1 is still her oldest"
    assert queue.redis.llen("echo") == 3
    claims = [queue.claim("echo", "c1", 1) for _ in range(3)]
    assert [c.key for c in claims if c] == [b1, a1, a2]
    a3 = submit(queue, "ada", "a3.tif")
    queue.retry(claims[2], "c1", "try again")  # a2 to the back of ada's line, behind a3
    assert queue.waiting("echo") == [a3, a2] and queue.redis.llen("echo") == 2


def test_the_janitor_puts_a_claimed_token_back_and_a_lapsed_job_in_its_line(
    queue: JobQueue,
) -> None:
    a1 = submit(queue, "ada", "a1.tif")
    # A consumer that died between BLMOVE and its start step leaves the token in its list.
    queue.redis.lmove("echo", processing_list("echo", "dead"), "RIGHT", "LEFT")
    a2 = submit(queue, "ada", "a2.tif")
    claim = queue.claim("echo", "dead-too", 1)
    assert claim is not None and claim.key == a1
    sweeps = queue.requeue_lapsed(["echo"])
    assert [(s.consumer_id, s.requeued) for s in sweeps] == [("dead-too", 1)]
    assert queue.redis.lrange("echo", 0, -1) == [WAITING_TOKEN] * 2
    assert queue.waiting("echo") == [a1, a2]
    assert claim_all(queue) == [a1, a2]


def test_a_consumer_restarted_with_a_token_in_its_list_starts_the_next_job(
    queue: JobQueue,
) -> None:
    key = submit(queue, "ada", "a1.tif")
    queue.redis.lmove("echo", processing_list("echo", "c1"), "RIGHT", "LEFT")
    claim = queue.held("echo", "c1")
    assert claim is not None and claim.key == key
    assert queue.redis.lrange(processing_list("echo", "c1"), 0, -1) == [key]


def test_deleting_a_waiting_job_takes_its_token_and_a_stale_entry_its_own(
    queue: JobQueue,
) -> None:
    a1, a2, b1 = (submit(queue, o, f"{o}{i}.tif") for o, i in (("ada", 1), ("ada", 2), ("bob", 1)))
    assert queue.delete(b1, "echo")
    assert queue.redis.llen("echo") == 2 and queue.waiting("echo") == [a1, a2]
    assert queue.redis.zrange(OWNERS_PREFIX + "echo", 0, -1) == ["ada"]
    queue.redis.delete(a1)  # gone behind the protocol's back (not through delete)
    assert claim_all(queue) == [a2]
    assert queue.redis.llen("echo") == 0, "the stale entry's token went with it"


def test_keys_an_older_producer_pushed_onto_the_queue_are_still_claimed(
    queue: JobQueue,
) -> None:
    request = JobRequest("echo", "old.tif", "uploads/old.tif")
    key = new_job_key("echo", "old.tif")
    queue.redis.hset(key, mapping=creation_fields(request, "old-frontend"))
    queue.redis.lpush("echo", key)
    mine = submit(queue, "ada", "a.tif")
    assert queue.waiting("echo") == [key, mine]
    later = new_job_key("echo", "later.tif")
    queue.redis.hset(later, mapping=creation_fields(request, "old-frontend"))
    queue.redis.lpush("echo", later)  # behind ada's token
    assert queue.waiting("echo") == [key, mine, later]
    assert claim_all(queue) == [key, mine, later]
