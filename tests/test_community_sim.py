"""The cluster simulator's users: fair share as Kiosk's claim does it, the community's
arrivals, the fairness figures, and FIFO against fair share on whole runs."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from benchmark import community_sim
from benchmark.simulator.fairness import ShareLedger, jain_index, max_min_fair
from benchmark.simulator.lines import WaitingLines
from benchmark.simulator.model import ClusterParams, Community, Scenario, UserClass
from benchmark.simulator.run import Simulation, simulate
from benchmark.simulator.workload import Submission, community_uploads
from kiosk.fairshare import Line, start_order


def owners_of(parts: list) -> list[str]:
    return [sub.owner for sub, units in parts for _ in range(units)]


# ------------------------------------------------------------------------------ the lines


@pytest.mark.parametrize("seed", range(5))
def test_fair_lines_take_in_the_order_kiosk_fairshare_predicts(seed: int):
    rng = random.Random(seed)
    lines = WaitingLines("fair")
    owners = ["ann", "bob", "cy", "dee", "eve"]
    for _ in range(200):
        if rng.random() < 0.5:
            owner = rng.choice(owners)
            lines.push(Submission(owner, 50, 0.0), rng.randint(1, 30))
        elif len(lines):
            predicted = start_order(
                Line(s.owner, s.vtime, [s.owner] * s.waiting) for s in lines.standings()
            )
            n = rng.randint(1, 40)
            taken = owners_of(lines.take(n))
            assert taken == [next(predicted) for _ in taken]
            assert len(taken) == min(n, len(taken) + len(lines))


def test_an_owner_coming_back_gets_no_credit_for_the_time_away():
    lines = WaitingLines("fair")
    ann, bob = Submission("ann", 100, 0.0), Submission("bob", 100, 0.0)
    lines.push(ann, 100)
    assert owners_of(lines.take(10)) == ["ann"] * 10  # ann alone: virtual time 10
    lines.push(bob, 100)  # bob comes back at the last claim's time (9), not at 0
    assert owners_of(lines.take(6)) == ["bob", "ann", "bob", "ann", "bob", "ann"][:6]


def test_fifo_lines_take_in_arrival_order_and_handed_back_work_first():
    lines = WaitingLines("fifo")
    a, b = Submission("ann", 3, 0.0), Submission("bob", 2, 0.0)
    lines.push(a, 3)
    lines.push(b, 2)
    assert owners_of(lines.take(2)) == ["ann", "ann"]
    lines.push(b, 1, front=True)  # the janitor's requeue
    assert owners_of(lines.take(10)) == ["bob", "ann", "bob", "bob"]
    assert len(lines) == 0 and lines.waiting_of == {}


def test_an_unknown_queue_order_is_refused():
    with pytest.raises(ValueError, match="unknown queue order"):
        WaitingLines("lifo")
    with pytest.raises(ValueError, match="unknown queue order"):
        Scenario(images=10, gpus=1, upload_mbps=240, order="lifo")


# ------------------------------------------------------------------------------ the figures


def test_max_min_fair_shares_fill_the_small_demands_and_split_the_rest():
    assert max_min_fair({"a": 1, "b": 100, "c": 100}, 11) == {"a": 1, "b": 5, "c": 5}
    assert max_min_fair({"a": 2, "b": 3}, 10) == {"a": 2, "b": 3}  # less asked than offered
    assert max_min_fair({}, 5) == {}


def test_jains_index_is_one_when_equal_and_one_over_n_when_one_takes_all():
    assert jain_index([1, 1, 1, 1]) == pytest.approx(1.0)
    assert jain_index([4, 0, 0, 0]) == pytest.approx(0.25)
    assert 0.25 < jain_index([2, 1, 1, 0]) < 1


def test_a_ledger_books_service_against_the_fair_share_of_the_moment():
    ledger = ShareLedger()
    ledger.book({"a": 1, "b": 10}, {"b": 4})  # fifo-like: b took a's slot too
    ledger.book({"a": 1, "b": 6}, {"a": 1, "b": 3})
    assert ledger.entitled == {"a": 2, "b": 6}
    assert ledger.ratios() == {"a": 0.5, "b": pytest.approx(7 / 6)}
    assert ledger.jain() < 0.9


# ------------------------------------------------------------------------------ arrivals


def test_a_community_uploads_its_images_in_each_class_share_and_size_range():
    community = Community()
    plans = community_uploads(community, 100_000, 0.05, random.Random(3))
    assert sum(p.images for p in plans) == 100_000
    assert [p.at for p in plans] == sorted(p.at for p in plans)
    assert len({p.owner for p in plans}) == community.users == 24
    for c in community.classes:
        mine = [p for p in plans if community.class_of(p.owner) == c.name]
        assert sum(p.images for p in mine) == pytest.approx(100_000 * c.share, abs=1)
        zips = [p.images for p in mine if p.zipped]
        assert all(p.images == 1 for p in mine if not p.zipped)
        assert max(zips) <= c.zip_images[1]
        if c.single_image == 0:
            assert all(p.zipped for p in mine[:-1])
    horizon = 100_000 * 0.05
    assert max(p.at for p in plans) < 2 * horizon


def test_a_community_class_must_make_sense():
    with pytest.raises(ValueError, match="add up to 1"):
        Community((UserClass("all", 2, 0.5, (2, 10), 0.0, (1, 2)),))
    with pytest.raises(ValueError, match="zips of >= 2"):
        UserClass("odd", 2, 1.0, (1, 10), 0.0, (1, 2))


# ------------------------------------------------------------------------------ whole runs


def community(order: str, **kw) -> Scenario:
    base = {"images": 100_000, "gpus": 1, "upload_mbps": 240.0, "community": Community()}
    return Scenario(**{**base, **kw}, order=order)


def test_one_client_runs_the_same_under_fifo_and_fair_share():
    base = {"images": 3_000, "gpus": 2, "upload_mbps": 2400.0}
    fifo = simulate(Scenario(**base, order="fifo")).summary()
    fair = simulate(Scenario(**base, order="fair")).summary()
    fifo.pop("wall_s")
    fair.pop("wall_s")
    assert fifo == fair


@pytest.fixture(scope="module")
def contended() -> dict[str, dict]:
    """10^5 images from 24 users on one GPU at 240 Mbps: the queue is long for hours."""
    return {order: simulate(community(order)).users() for order in ("fifo", "fair")}


def test_fair_share_gets_light_users_their_results_far_sooner(contended: dict[str, dict]):
    fifo, fair = contended["fifo"]["classes"], contended["fair"]["classes"]
    for name in ("light", "medium"):
        assert fair[name]["wait_s"]["median"] < 0.25 * fifo[name]["wait_s"]["median"]
        assert fair[name]["wait_s"]["p95"] < 0.5 * fifo[name]["wait_s"]["p95"]
    # the price: heavy users wait a little longer, as they should
    assert fair["heavy"]["wait_s"]["median"] >= fifo["heavy"]["wait_s"]["median"]


def test_fair_share_is_fair_by_jains_index_and_fifo_is_not(contended: dict[str, dict]):
    assert contended["fair"]["jain_index"] > 0.99
    assert contended["fifo"]["jain_index"] < 0.5
    fair = [u["share_of_fair"] for u in contended["fair"]["users"].values()]
    fifo = [u["share_of_fair"] for u in contended["fifo"]["users"].values()]
    assert min(fair) > 0.95  # every user claims their share...
    assert min(fifo) < 0.1  # ...where first come, first served gives some a tenth of it


def test_every_submission_of_every_user_is_done_once_even_with_preemptions():
    cluster = ClusterParams(preemptions_per_node_hour=1.0)
    sim = Simulation(community("fair", images=20_000, gpus=4, cluster=cluster))
    result = sim.run()
    assert result.requeued > 0
    subs = result.submissions
    assert sum(s.images for s in subs) == 20_000 == sim.seg.done
    assert all(s.done == s.images and s.finished is not None for s in subs)
    assert all(s.arrival <= s.first_start <= s.finished for s in subs)
    assert sum(result.claims.received.values()) == 20_000 + sim.seg.requeued


def test_the_cli_prints_fifo_beside_fair_share_and_writes_json_and_a_plot(tmp_path: Path, capsys):
    argv = ["--images", "2000", "--gpus", "1,2", "--upload-mbps", "2400", "--out", str(tmp_path)]
    assert community_sim.main(argv) == 0
    out = capsys.readouterr().out
    assert "light wait median / p95" in out and "Jain" in out
    data = json.loads((tmp_path / "community_sim.json").read_text())
    runs = {(r["gpus"], r["queue_order"]) for r in data["runs"]}
    assert runs == {(1, "fifo"), (1, "fair"), (2, "fifo"), (2, "fair")}
    assert all(len(r["fairness"]["users"]) == 24 for r in data["runs"])
    assert (tmp_path / "community_sim.png").stat().st_size > 10_000


def test_durations_read_as_a_person_would():
    assert community_sim.duration(42) == "42 s"
    assert community_sim.duration(450) == "7.5 min"
    assert community_sim.duration(3 * 3600) == "3.0 h"


def test_a_scenario_label_names_the_users_and_the_order():
    s = replace(community("fifo"), images=10)
    assert s.label.endswith("24 users, fifo")
