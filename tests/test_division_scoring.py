"""Division scoring: the linker's scorer interface (a scorer given decides; the default is the
feature score, unchanged), the cell windows it looks at, the model's contract, the bundled
model answering on the real model server, and the setting that selects it."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from consumers.base import JobError, Result
from consumers.division_scorer import DIVISION_MODEL, DivisionModelMissing, ServedDivisionScorer
from consumers.processing.contract import DivisionContract
from consumers.processing.linking import (
    DIVISION_FEATURES,
    DivisionCandidates,
    link,
    measure,
)
from consumers.tracking import TrackingConsumer, TrackingSettings, division_scorer
from evaluation.movies import generate_movie
from evaluation.served import BUNDLED_MODELS, ModelServer, embedded_model_server
from kiosk.keys import JobField
from kiosk.queue import JobQueue
from kiosk.serving.client import ServingClient, close_channels
from kiosk.settings import ConsumerSettings
from kiosk.storage.local import LocalBucket
from models.training.division_data import Recorder, feature_probability, true_division
from tests.support.tracking import segment_waiting_frames, tiff_bytes, trk_bytes
from tests.test_tracking import claim_job, fan_in, fan_out, results, submit_movie

PATCH = DIVISION_MODEL.patch_size


@pytest.fixture(scope="module")
def movie_frames() -> tuple[object, list]:
    movie = generate_movie(3, frames=12)
    frames = [measure(movie.labels[t], movie.images[t], t, PATCH) for t in range(12)]
    return movie, frames


def test_measure_keeps_a_window_centred_on_each_object_with_its_mask() -> None:
    labels = np.zeros((64, 64), np.int32)
    labels[10:20, 30:40] = 1  # centroid (14.5, 34.5)
    labels[40:44, 0:4] = 2  # at the edge: the window runs off the frame
    image = np.zeros((64, 64), np.float32)
    image[10:20, 30:40] = 5.0
    cells = measure(labels, image, patch_size=16)

    assert cells.patches is not None and cells.patches.shape == (2, 16, 16, 2)
    window = cells.patches[0]
    assert window[8, 8, 1] == 255 and window[0, 0, 1] == 0  # the object's centre, background
    assert window[8, 8, 0] == 255 and window[0, 0, 0] == 0  # the image, scaled per frame
    assert (cells.patches[1][:, :4, 1] == 0).all()  # off the frame: nothing
    assert measure(labels, image).patches is None  # no windows unless asked


def test_measure_refuses_patches_without_the_image_or_of_an_odd_size() -> None:
    labels = np.ones((8, 8), np.int32)
    with pytest.raises(ValueError, match="patches need the image"):
        measure(labels, patch_size=8)
    with pytest.raises(ValueError, match="positive even number"):
        measure(labels, np.ones((8, 8)), patch_size=7)


def test_the_default_linking_is_the_feature_score_with_or_without_windows(movie_frames) -> None:
    movie, frames = movie_frames
    plain = [measure(movie.labels[t], movie.images[t], t) for t in range(len(frames))]
    default = link(plain)
    assert any(t.daughters for t in default.tracks.values())
    assert link(frames) == default
    # A scorer answering with the feature score's own decision links the same way.
    assert link(frames, division_scorer=feature_probability) == default


def test_a_division_scorer_given_decides_which_candidates_divided(movie_frames) -> None:
    _, frames = movie_frames
    never = link(frames, division_scorer=lambda c: np.zeros(len(c)))
    assert not any(t.daughters for t in never.tracks.values())
    seen: list[DivisionCandidates] = []

    def first_only(candidates: DivisionCandidates) -> np.ndarray:
        seen.append(candidates)
        p = np.zeros(len(candidates))
        p[0] = 0.9
        return p

    chosen = link(frames, division_scorer=first_only)
    divided = sum(1 for t in chosen.tracks.values() if t.daughters)
    assert seen and 0 < divided <= len(seen)
    batch = seen[0]
    assert batch.features.shape == (len(batch), len(DIVISION_FEATURES))
    assert batch.patches is not None and batch.patches.shape[1:] == (3, PATCH, PATCH, 2)
    assert batch.daughter_labels.shape == (len(batch), 2)


def test_a_scorer_that_does_not_give_one_probability_per_candidate_is_refused(
    movie_frames,
) -> None:
    _, frames = movie_frames
    with pytest.raises(ValueError, match="one probability in \\[0, 1\\] per candidate"):
        link(frames, division_scorer=lambda c: np.ones(len(c) + 1))
    with pytest.raises(ValueError, match="one probability in \\[0, 1\\] per candidate"):
        link(frames, division_scorer=lambda c: np.full(len(c), 2.0))


def test_harvested_candidates_are_labelled_by_the_true_lineage(movie_frames) -> None:
    movie, frames = movie_frames
    recorder = Recorder()
    link(frames, division_scorer=recorder)
    labels = [
        true_division(movie.tracks, b.frame, int(m), tuple(pair))
        for b in recorder.batches
        for m, pair in zip(b.mother_labels, b.daughter_labels, strict=True)
    ]
    assert any(labels) and not all(labels)


def test_the_contract_puts_mother_and_daughters_windows_side_by_side() -> None:
    contract = DivisionContract(name="m", features=("a", "b"), patch_size=4)
    patches = np.zeros((1, 3, 4, 4, 2), np.uint8)
    patches[0, 0, ..., 0], patches[0, 1, ..., 1], patches[0, 2, ..., 0] = 255, 51, 102
    inputs = contract.inputs(patches, np.ones((1, 2)))
    x = inputs["patches"]
    assert x.shape == (1, 4, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0], [1.0, 0.0, 0.0, 0.2, 0.4, 0.0])
    assert inputs["features"].dtype == np.float32
    with pytest.raises(ValueError, match="patch_size=4"):
        contract.inputs(np.zeros((1, 3, 8, 8, 2), np.uint8), np.ones((1, 2)))
    with pytest.raises(ValueError, match="2 features each"):
        contract.inputs(patches, np.ones((1, 3)))


def test_the_bundled_model_is_trained_on_the_linkers_features() -> None:
    assert DIVISION_MODEL.features == DIVISION_FEATURES
    assert (BUNDLED_MODELS / DIVISION_MODEL.name / "1" / "saved_model.pb").is_file()


def test_the_setting_selects_the_learned_scorer_and_empty_means_the_feature_score() -> None:
    predict = ConsumerSettings(model_server="127.0.0.1:1")
    assert division_scorer(TrackingSettings(), predict) is None
    chosen = division_scorer(TrackingSettings(division_model="DivisionScoring"), predict)
    assert isinstance(chosen, ServedDivisionScorer) and chosen.model == "DivisionScoring"


@pytest.fixture(scope="module")
def served() -> Iterator[ModelServer]:
    with embedded_model_server(BUNDLED_MODELS, (DIVISION_MODEL.name,)) as server:
        yield server
    close_channels()


def test_the_served_model_scores_a_movies_candidates(served: ModelServer, movie_frames) -> None:
    movie, frames = movie_frames
    scorer = ServedDivisionScorer(ServingClient(served.target))
    scorer.check()
    tracking = link(frames, division_scorer=scorer)
    assert scorer.answered == 1 and scorer.scored > 0
    divisions = {t.label for t in tracking.tracks.values() if t.daughters}
    true = {t.parent for t in movie.tracks.values() if t.parent}
    assert divisions and abs(len(divisions) - len(true)) <= max(2, len(true) // 2)


def test_a_division_model_missing_from_the_server_is_a_clear_error(served: ModelServer) -> None:
    scorer = ServedDivisionScorer(
        ServingClient(served.target, cold_start_wait=1.0, retries=1), "NoSuchDivisionModel"
    )
    with pytest.raises(DivisionModelMissing, match="KIOSK_DIVISION_MODEL empty") as caught:
        scorer.check()
    assert "'NoSuchDivisionModel' is not on the model server" in str(caught.value)


def tracking_consumer(
    served: ModelServer,
    model: str,
    redis_url: str,
    bucket_dir: Path,
    bucket: LocalBucket,
    queue: JobQueue,
) -> TrackingConsumer:
    settings = ConsumerSettings(
        redis_url=redis_url,
        bucket=f"file://{bucket_dir}",
        queues=("tracking",),
        public_url="http://kiosk",
        model_server=served.target,
        cold_start_wait=1.0,
        predict_retries=1,
    )
    return TrackingConsumer(settings, bucket, queue, TrackingSettings(division_model=model))


def predicts_answered(served: ModelServer, model: str) -> float:
    """Predict calls the model server answered for ``model`` (its Prometheus counter)."""
    url = f"http://127.0.0.1:{served.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    prefix = f'kiosk_model_server_requests_total{{code="OK",method="Predict",model="{model}"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_the_tracking_consumer_scores_divisions_with_the_model_the_setting_names(
    served: ModelServer, redis_url: str, bucket_dir: Path, bucket: LocalBucket, queue: JobQueue
) -> None:
    movie = generate_movie(6, frames=10, shape=(128, 128))  # two divisions
    data = trk_bytes(movie.images[..., None], movie.labels[..., None])
    submit_movie(queue, bucket, data, name="cells.trk")
    consumer = tracking_consumer(served, DIVISION_MODEL.name, redis_url, bucket_dir, bucket, queue)
    before = predicts_answered(served, DIVISION_MODEL.name)
    result = consumer.process(claim_job(queue, bucket, "tracking"))
    assert isinstance(result, Result)
    assert predicts_answered(served, DIVISION_MODEL.name) > before
    with results(bucket, result) as out:
        lineage = json.loads(out.read("lineage.json"))
    divided = [t for t in lineage.values() if t["daughters"]]
    assert len(divided) == 2


def test_a_movies_frames_keep_the_windows_the_division_model_looks_at(
    served: ModelServer, redis_url: str, bucket_dir: Path, bucket: LocalBucket, queue: JobQueue
) -> None:
    movie = generate_movie(6, frames=6, shape=(128, 128))
    data = tiff_bytes(movie.images, imagej=True, metadata={"axes": "TYX"})
    key = submit_movie(queue, bucket, data)
    consumer = tracking_consumer(served, DIVISION_MODEL.name, redis_url, bucket_dir, bucket, queue)
    fan_out(consumer, queue, bucket, "tracking")
    children = queue.get(key)[JobField.CHILDREN].split(",")
    windows = {queue.get(child)[JobField.CELL_WINDOWS] for child in children}
    assert windows == {str(DIVISION_MODEL.patch_size)}
    segment_waiting_frames(queue, bucket, tables=True)
    before = predicts_answered(served, DIVISION_MODEL.name)
    fan_in(consumer, queue, bucket, "tracking")  # the tables' windows serve the model
    assert predicts_answered(served, DIVISION_MODEL.name) > before


def test_a_division_model_the_server_lacks_fails_the_job_saying_what_to_set(
    served: ModelServer, redis_url: str, bucket_dir: Path, bucket: LocalBucket, queue: JobQueue
) -> None:
    movie = generate_movie(5, frames=4, shape=(64, 64))
    data = trk_bytes(movie.images[..., None], movie.labels[..., None])
    submit_movie(queue, bucket, data, name="cells.trk")
    consumer = tracking_consumer(
        served, "NoSuchDivisionModel", redis_url, bucket_dir, bucket, queue
    )
    with pytest.raises(JobError, match="KIOSK_DIVISION_MODEL empty"):
        consumer.process(claim_job(queue, bucket, "tracking"))
