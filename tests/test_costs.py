"""Each job's estimated GPU seconds, CPU seconds and cost, and the sums per user and group."""

from __future__ import annotations

import pytest

from consumers.base import Job
from kiosk.costs import (
    GPU_PRICES,
    VM_PRICES,
    PriceTable,
    Usage,
    recorded_usage,
    stage_usage,
    summarize,
)
from kiosk.jobs import Stages
from kiosk.keys import JobField
from kiosk.queue import Claim
from kiosk.settings import ConsumerSettings


def test_a_jobs_cost_prices_its_prediction_on_a_gpu_node_and_its_stages_on_a_consumers_share():
    prices = PriceTable.of("V100", "n1-highmem-2", preemptible=True, consumers_per_node=5)
    assert prices.gpu_node_hourly == pytest.approx(0.025 + 0.74)  # the host VM and the GPU
    assert prices.cpu_node_hourly == pytest.approx(0.025)
    timings = {
        JobField.DOWNLOAD_TIME: 1.0,
        JobField.PREPROCESS_TIME: 2.0,
        JobField.PREDICTION_TIME: 10.0,
        JobField.POSTPROCESS_TIME: 4.0,
        JobField.UPLOAD_TIME: 3.0,
    }
    used = stage_usage(timings, prices)
    assert used.gpu_seconds == 10.0 and used.cpu_seconds == 20.0
    assert used.cost == pytest.approx((10.0 * 0.765 + 20.0 * 0.025 / 5) / 3600)
    on_demand = stage_usage(timings, PriceTable.of("V100", preemptible=False))
    assert on_demand.cost > 3 * used.cost


def test_usage_accumulates_over_attempts_through_the_job_hash():
    prices = PriceTable.of("T4")
    first = stage_usage({JobField.PREDICTION_TIME: 2.0}, prices)
    second = stage_usage({JobField.PREDICTION_TIME: 3.0}, prices)
    recorded = recorded_usage(first.fields())
    assert (recorded + second).gpu_seconds == pytest.approx(5.0)
    assert recorded_usage({}) == Usage()
    assert recorded_usage({JobField.COST: "garbage"}).cost == 0.0


def test_usage_is_summed_per_user_and_per_group_every_job_once():
    def job(owner: str, group: str, cost: float) -> dict[str, str]:
        return {
            JobField.OWNER: owner,
            JobField.GROUP: group,
            **Usage(1.0, 2.0, cost).fields(),
        }

    users, groups = summarize(
        [job("ada", "lab-a", 0.5), job("bea", "lab-a", 0.25), job("ada", "lab-a", 0.5), {}]
    )
    assert [(r.name, r.jobs, r.usage.cost) for r in users] == [
        ("ada", 2, 1.0),
        ("bea", 1, 0.25),
        ("anonymous", 1, 0.0),
    ]
    assert [(r.name, r.jobs, r.usage.gpu_seconds) for r in groups] == [("lab-a", 3, 3.0)]


def test_the_price_settings_name_only_known_machines() -> None:
    settings = ConsumerSettings(gpu_type="T4", preemptible=False)
    assert settings.prices.gpu_node_hourly == pytest.approx(
        VM_PRICES["n1-highmem-2"].on_demand + GPU_PRICES["T4"].on_demand
    )
    with pytest.raises(ValueError, match="unknown GPU type 'A100'"):
        ConsumerSettings(gpu_type="A100")


def test_a_jobs_usage_adds_its_earlier_attempts_and_counts_a_stage_that_failed() -> None:
    prices = PriceTable.of("T4")
    earlier = Usage(2.0, 3.0, 0.001)
    claim = Claim("echo:a.tif:0", "echo", {JobField.ATTEMPTS: "2", **earlier.fields()})
    job = Job(claim, bucket=None, update=lambda fields: None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError), job.stage(Stages.PREDICT):
        raise RuntimeError("the model server went away")
    spent = job.timings[JobField.PREDICTION_TIME]
    assert spent >= 0
    fields = job.usage_fields(prices)
    assert float(fields[JobField.GPU_SECONDS]) == pytest.approx(2.0 + spent, abs=1e-5)
    assert float(fields[JobField.CPU_SECONDS]) == pytest.approx(3.0 + spent, abs=1e-5)
    assert job.attempt_usage(prices).gpu_seconds == pytest.approx(spent)
