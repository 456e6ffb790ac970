"""Tracking in the evaluation: generated movies scored from true masks and end to end, the
linker registry, sanity figures for movies without truth, and the command through the real
embedded model server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from consumers.processing.linking import Cells, LinkParams, Track, Tracking, link
from evaluation import EvaluationError
from evaluation.movies import generate_movie
from evaluation.report import main as run_evaluation
from evaluation.served import BUNDLED_MODELS
from evaluation.tracking_report import (
    LEARNED,
    LINKERS,
    Segmenter,
    conditions_of,
    evaluate_generated,
    format_tracking,
    held_out_seeds,
    kiosk_linker,
    measure_frames,
    sanity,
    score_movie,
    track_real_movie,
    tracking_verdicts,
)

# The default condition's first held-out movie at this size has one division to find.
FRAMES, SIZE = 10, 128


def _oracle(seeds: Sequence[int], **overrides: float) -> Segmenter:
    """A segmenter that answers each generated frame with its true masks."""
    truth = {}
    for seed in seeds:
        movie = generate_movie(seed, frames=FRAMES, shape=(SIZE, SIZE), **overrides)
        truth.update(
            {
                image.tobytes(): labels
                for image, labels in zip(movie.images, movie.labels, strict=True)
            }
        )

    def segment(image: np.ndarray, mpp: float) -> np.ndarray:
        assert mpp == 0.65
        return truth[image.tobytes()]

    return segment


def _distance_only(frames: Sequence[Cells], params: LinkParams) -> Tracking:
    return link(frames, replace(params, divisions=False))


def test_a_movie_linked_from_its_true_masks_scores_near_perfect_in_the_ctc_form() -> None:
    movie = generate_movie(held_out_seeds("default", 1)[0], frames=FRAMES, shape=(SIZE, SIZE))
    tracking = kiosk_linker(measure_frames(movie.images, movie.labels), LinkParams())

    scores = score_movie(movie, list(movie.labels), tracking)

    assert scores.true_divisions == 1 and scores.matched_divisions == 1
    assert scores.tra > 0.99 and scores.det == 1.0


def test_every_registered_linker_is_scored_per_condition_from_true_masks_and_end_to_end() -> None:
    seeds = held_out_seeds("default", 1)
    linkers = {"kiosk": kiosk_linker, "distance only": _distance_only}

    section = evaluate_generated(
        _oracle(seeds),
        ["default"],
        movies=1,
        frames=FRAMES,
        size=SIZE,
        linkers=linkers,
    )

    results = section["results"]
    assert section["seeds"] == {"default": seeds} and section["shape"] == [SIZE, SIZE]
    for source in ("true masks", "end to end"):
        assert set(results[source]) == set(linkers)
        kiosk, plain = results[source]["kiosk"], results[source]["distance only"]
        assert set(kiosk) == {"default", "all"} and kiosk["all"]["movies"] == 1
        assert kiosk["default"]["division_f1"] == 1.0 and kiosk["default"]["true_divisions"] == 1
        assert plain["default"]["found_divisions"] == 0 and plain["default"]["division_f1"] == 0
    # The oracle segments perfectly, so end to end equals linking the true masks.
    assert results["end to end"] == results["true masks"]
    assert section["ms_per_frame"]["segmentation"] >= 0
    verdicts = tracking_verdicts({"generated": section})
    assert verdicts[0].startswith("tracking, kiosk, end to end") and ": met" in verdicts[0]
    assert "distance only" in verdicts[1] and "NOT met" in verdicts[1]
    assert "below a target: default" in verdicts[1]
    table = format_tracking({"generated": section})
    assert "end to end  distance only  default" in table


def test_the_kiosk_linker_is_registered_first_as_the_headline() -> None:
    assert next(iter(LINKERS.items())) == ("kiosk", kiosk_linker)


def test_sanity_counts_tracks_continuations_and_divisions() -> None:
    # Track 1 over frames 0-1 divides into 2 and 3 in frame 2; track 4 is lost after frame 0.
    tracks = {
        1: Track(1, 0, 1, None, (2, 3)),
        2: Track(2, 2, 2, 1, ()),
        3: Track(3, 2, 2, 1, ()),
        4: Track(4, 0, 0, None, ()),
    }
    assignments = [{1: 1, 2: 4}, {1: 1}, {1: 2, 2: 3}]

    figures = sanity(Tracking(tracks, assignments), 3)

    assert figures == {
        "tracks": 4,
        "cells_per_frame": round(5 / 3, 1),
        "mean_track_frames": 1.25,
        "linked_share": round(2 / 3, 4),
        "divisions": 1,
    }


def test_a_movie_without_truth_gets_run_time_and_sanity_for_model_and_reference_masks() -> None:
    seed = held_out_seeds("default", 1)[0]
    movie = generate_movie(seed, frames=FRAMES, shape=(SIZE, SIZE))

    out = track_real_movie(
        movie.images,
        _oracle([seed]),
        0.65,
        reference=movie.labels,
    )

    assert out["frames"] == FRAMES
    assert set(out["figures"]) == {"kiosk (model)", "kiosk (reference masks)"}
    assert out["figures"]["kiosk (model)"] == out["figures"]["kiosk (reference masks)"]
    assert out["figures"]["kiosk (model)"]["divisions"] == 1
    assert {"segmentation", "measure (model)", "link kiosk (model)"} <= set(out["ms_per_frame"])


def test_bad_tracking_options_are_refused_before_the_model_server_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(EvaluationError, match="choose from default, crowded, fast, noisy"):
        conditions_of("default,windy")
    assert run_evaluation(["--tracking-conditions", "windy"]) == 1
    assert "unknown tracking condition(s) windy" in capsys.readouterr().err
    assert run_evaluation(["--tracking-size", "16"]) == 1
    assert "must be at least 1, 2 and 32, got 4, 40 and 16" in capsys.readouterr().err


def test_evaluation_tracks_generated_movies_through_the_served_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "evaluation.json"
    argv = ["--tracking", "only", "--tracking-conditions", "default", "--tracking-movies", "1"]
    argv += ["--tracking-frames", str(FRAMES), "--tracking-size", str(SIZE)]

    code = run_evaluation([*argv, "--models-dir", str(BUNDLED_MODELS), "--out", str(out)])

    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())
    assert report["datasets"] == {}  # only: no segmentation data set
    tracking = report["tracking"]
    end_to_end = tracking["generated"]["results"]["end to end"]["kiosk"]["all"]
    assert end_to_end["movies"] == 1 and end_to_end["true_divisions"] == 1
    assert end_to_end["tra"] >= 0.98 and end_to_end["division_f1"] >= 0.85
    assert "ctc_hela" not in tracking  # not asked for
    assert "tracking, kiosk, end to end on generated movies" in printed
    # The bundled division model is served too: the learned scorer gets a row of its own.
    assert tracking["linkers"] == ["kiosk", LEARNED]
    learned = tracking["generated"]["results"]["end to end"][LEARNED]["all"]
    assert learned["movies"] == 1 and learned["tra"] >= 0.98


def test_without_the_division_model_the_evaluation_scores_the_feature_score_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "NuclearSegmentation").symlink_to(BUNDLED_MODELS / "NuclearSegmentation")
    out = tmp_path / "evaluation.json"
    argv = ["--tracking", "only", "--tracking-conditions", "default", "--tracking-movies", "1"]
    argv += ["--tracking-frames", "4", "--tracking-size", "64"]

    code = run_evaluation([*argv, "--models-dir", str(models), "--out", str(out)])

    assert code == 0, capsys.readouterr().out
    assert json.loads(out.read_text())["tracking"]["linkers"] == ["kiosk"]
