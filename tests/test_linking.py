"""Linking segmented frames over time: tracks, divisions, gap closing and the output formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from consumers.ctc import check_tracks
from consumers.link_ahead import LEAST, Ahead, LinkersInHand, next_wake
from consumers.processing.linking import (
    Cells,
    Linker,
    LinkParams,
    Track,
    Tracking,
    ctc_res_track,
    ctc_tracking,
    lineage_json,
    link,
    measure,
    relabel,
)

SHAPE = (100, 100)


def frame_of(discs, shape=SHAPE, seed=0):
    """(labels, image) for discs given as (y, x, radius, brightness); labels shuffled per frame
    so that linking cannot lean on the segmentation's numbering."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    image = np.full(shape, 10.0)
    ids = np.random.default_rng(seed).permutation(len(discs)) + 1
    for label, (y, x, r, brightness) in zip(ids, discs, strict=True):
        inside = (yy - y) ** 2 + (xx - x) ** 2 <= r**2
        labels[inside] = label
        image[inside] = brightness
    return labels, image


def movie(frames_of_discs):
    """Measured frames plus the label stack they came from."""
    stack = [frame_of(discs, seed=t) for t, discs in enumerate(frames_of_discs)]
    cells = [measure(labels, image, t) for t, (labels, image) in enumerate(stack)]
    return cells, np.stack([labels for labels, _ in stack])


def tracked(tracking, stack):
    return np.stack([tracking.relabel(t, frame) for t, frame in enumerate(stack)])


def track_at(tracking, stack, t, y, x):
    return int(tracking.relabel(t, stack[t])[y, x])


def division_movie(neighbour=False):
    """A mother brightening and dividing in frame 4 and an unrelated cell drifting; with
    `neighbour`, a cell beside where a daughter appears, gone from frame 4 on."""
    frames = []
    for t in range(4):
        frames.append([(50, 50 + t, 6, 100 + 60 * (t == 3)), (15, 15 + 2 * t, 5, 100)])
        if neighbour:
            frames[-1].append((50, 76, 4.3, 100))
    for t in range(4, 7):
        spread = 7 + 2 * (t - 4)
        frames.append(
            [(50, 53 - spread, 4.3, 130), (50, 53 + spread, 4.3, 130), (15, 15 + 2 * t, 5, 100)]
        )
    return movie(frames)


def test_measure_finds_each_object_centroid_area_intensity_and_roundness():
    labels = np.zeros((40, 50), np.uint16)
    labels[10:14, 20:30] = 7  # 4 x 10 bar
    labels[30:35, 5:10] = 3  # 5 x 5 square
    image = np.zeros((40, 50), np.float32)
    image[labels == 7] = 2.0
    image[labels == 3] = 5.0
    cells = measure(labels, image, frame=4)
    assert cells.frame == 4 and cells.labels.tolist() == [3, 7]
    np.testing.assert_allclose(cells.centroids, [[32, 7], [11.5, 24.5]])
    np.testing.assert_allclose(cells.areas, [25, 40])
    np.testing.assert_allclose(cells.intensities, [5, 2])
    assert cells.roundness[0] == pytest.approx(1.0) and cells.roundness[1] < 0.5


def test_measure_agrees_with_regionprops_on_irregular_objects():
    from skimage.measure import regionprops

    rng = np.random.default_rng(3)
    labels = np.zeros((60, 80), np.int32)
    for label in range(1, 9):
        y, x = rng.integers(5, 55), rng.integers(5, 75)
        labels[y - rng.integers(1, 5) : y + rng.integers(1, 5), x - 3 : x + rng.integers(1, 6)] = (
            label
        )
    image = rng.random((60, 80))
    cells = measure(labels, image, 0)
    props = regionprops(labels, image)
    assert cells.labels.tolist() == [p.label for p in props]
    np.testing.assert_allclose(cells.centroids, [p.centroid for p in props])
    np.testing.assert_allclose(cells.areas, [p.area for p in props])
    np.testing.assert_allclose(cells.intensities, [p.intensity_mean for p in props])
    ratio = [p.axis_minor_length / p.axis_major_length if p.axis_major_length else 1 for p in props]
    np.testing.assert_allclose(cells.roundness, ratio, atol=1e-9)


def test_measure_without_an_image_leaves_intensity_unknown_and_an_empty_frame_is_empty():
    labels = np.zeros((10, 10), np.int32)
    assert len(measure(labels, None, 0)) == 0
    labels[2:4, 2:4] = 1
    assert np.isnan(measure(labels, None, 0).intensities).all()


@pytest.mark.parametrize(
    ("labels", "image", "message"),
    [
        (np.zeros((2, 8, 8), np.int32), None, "one 2-D"),
        (np.zeros((8, 8), np.float32), None, "integers"),
        (np.zeros((8, 8), np.int32), np.zeros((8, 9)), "one shape"),
    ],
)
def test_measure_refuses_what_is_not_one_labelled_frame(labels, image, message):
    with pytest.raises(ValueError, match=message):
        measure(labels, image, 0)


def test_cells_refuse_arrays_of_different_lengths():
    with pytest.raises(ValueError, match="areas"):
        Cells(
            0,
            np.array([1, 2]),
            np.zeros((2, 2)),
            np.ones(3),
            np.ones(2),
            np.ones(2),
            np.zeros(2, bool),
        )


def test_cells_moving_in_straight_lines_keep_one_track_each_numbered_by_first_appearance():
    cells, stack = movie([[(20, 10 + 4 * t, 5, 100), (70, 80 - 3 * t, 5, 100)] for t in range(6)])
    tracking = link(cells)
    assert sorted(tracking.tracks) == [1, 2]
    assert all(t.first == 0 and t.last == 5 and t.parent is None for t in tracking.tracks.values())
    out = tracked(tracking, stack)
    for t in range(6):
        assert out[t, 20, 10 + 4 * t] == out[0, 20, 10]
        assert out[t, 70, 80 - 3 * t] == out[0, 70, 80]
    assert out[0, 20, 10] != out[0, 70, 80]
    assert set(np.unique(out)) == {0, 1, 2}


def test_cells_passing_close_by_keep_their_tracks_thanks_to_their_velocity():
    # Two cells 8 px apart sideways, each moving 10 px a frame in opposite directions: the
    # nearest cell in the next frame is the other one, their predicted positions are not.
    frames = [[(20, 15 + 10 * t, 3, 100), (28, 85 - 10 * t, 3, 100)] for t in range(8)]
    cells, stack = movie(frames)
    out = tracked(link(cells), stack)
    assert all(out[t, 20, 15 + 10 * t] == out[0, 20, 15] for t in range(8))
    assert all(out[t, 28, 85 - 10 * t] == out[0, 28, 85] for t in range(8))
    still = tracked(link(cells, LinkParams(velocity=0.0)), stack)
    assert any(still[t, 20, 15 + 10 * t] != still[0, 20, 15] for t in range(8))


def test_a_division_caps_the_mother_and_gives_two_daughters_in_lineage_and_ctc():
    cells, stack = division_movie()
    tracking = link(cells)
    mother = track_at(tracking, stack, 0, 50, 50)
    bystander = track_at(tracking, stack, 0, 15, 15)
    d1, d2 = track_at(tracking, stack, 4, 50, 44), track_at(tracking, stack, 4, 50, 62)
    assert (mother, bystander, d1, d2) == (1, 2, 3, 4)
    assert tracking.tracks[1] == Track(1, 0, 3, None, (3, 4))
    assert tracking.tracks[3] == Track(3, 4, 6, 1, ())
    assert tracking.tracks[4] == Track(4, 4, 6, 1, ())
    assert tracking.tracks[2] == Track(2, 0, 6, None, ())
    assert lineage_json(tracking) == {
        "1": {
            "label": 1,
            "frames": [0, 1, 2, 3],
            "daughters": [3, 4],
            "capped": True,
            "frame_div": 4,
            "parent": None,
        },
        "2": {
            "label": 2,
            "frames": [0, 1, 2, 3, 4, 5, 6],
            "daughters": [],
            "capped": False,
            "frame_div": None,
            "parent": None,
        },
        "3": {
            "label": 3,
            "frames": [4, 5, 6],
            "daughters": [],
            "capped": False,
            "frame_div": None,
            "parent": 1,
        },
        "4": {
            "label": 4,
            "frames": [4, 5, 6],
            "daughters": [],
            "capped": False,
            "frame_div": None,
            "parent": 1,
        },
    }
    assert ctc_res_track(tracking) == "1 0 3 0\n2 0 6 0\n3 4 6 1\n4 4 6 1\n"


def test_lineage_json_has_exactly_the_original_schema_and_is_json():
    cells, _ = division_movie()
    lineage = lineage_json(link(cells))
    for key, value in lineage.items():
        assert key == str(value["label"])
        assert list(value) == ["label", "frames", "daughters", "capped", "frame_div", "parent"]
        assert isinstance(value["label"], int) and isinstance(value["capped"], bool)
        assert all(isinstance(f, int) for f in value["frames"])  # type: ignore[attr-defined]
    assert json.loads(json.dumps(lineage)) == lineage


def test_without_division_detection_one_daughter_continues_the_mother():
    cells, _ = division_movie()
    tracking = link(cells, LinkParams(divisions=False))
    assert all(t.parent is None and not t.daughters for t in tracking.tracks.values())
    assert tracking.tracks[1].last == 6


def test_a_daughter_is_found_even_where_a_vanishing_neighbour_would_take_it():
    cells, stack = division_movie(neighbour=True)
    tracking = link(cells)
    mother, neighbour = track_at(tracking, stack, 3, 50, 53), track_at(tracking, stack, 3, 50, 76)
    daughters = track_at(tracking, stack, 4, 50, 46), track_at(tracking, stack, 4, 50, 60)
    assert tracking.tracks[mother].daughters == tuple(sorted(daughters))
    assert tracking.tracks[neighbour].last == 3


def test_a_nucleus_cut_in_two_by_the_segmentation_is_not_a_division():
    cells = []
    for t in range(7):
        labels, image = frame_of([(50, 50, 7, 100)])
        if t in (3, 4, 5):  # cut through its centre for three frames
            labels[:, 50:][labels[:, 50:] > 0] = 2
        cells.append(measure(labels, image, t))
    tracking = link(cells)
    assert all(t.parent is None and not t.daughters for t in tracking.tracks.values())


def test_a_division_whose_daughter_is_gone_the_next_frame_is_undone():
    cells, _ = division_movie()
    cells = [
        c if c.frame != 5 else measure(*frame_of([(50, 44, 4.3, 130), (15, 25, 5, 100)]), 5)
        for c in cells
    ]
    cells[6] = measure(*frame_of([(50, 42, 4.3, 130), (15, 27, 5, 100)]), 6)
    tracking = link(cells)
    assert all(not t.daughters for t in tracking.tracks.values())
    assert tracking.tracks[1] == Track(1, 0, 6, None, ())
    kept = link(cells, LinkParams(min_daughter_frames=1))
    assert kept.tracks[1].daughters


def test_a_lone_daughter_back_at_the_mothers_size_the_next_frame_undoes_the_division():
    frames = [[(50, 50, 7, 100)] for _ in range(4)]
    frames.append([(50, 42, 5, 100), (50, 58, 5, 100)])  # looks like a division...
    frames += [[(50, 50, 7, 100)] for _ in range(3)]  # ...but one whole nucleus again
    tracking = link(movie(frames)[0], LinkParams(min_daughter_frames=1))
    assert all(t.parent is None and not t.daughters for t in tracking.tracks.values())
    assert tracking.tracks[1].first == 0 and tracking.tracks[1].last == 7


def test_a_full_sized_cell_appearing_beside_another_is_not_a_daughter():
    frames = [[(50, 40, 6, 100)] for _ in range(3)]
    frames += [[(50, 40, 6, 100), (50, 55, 6, 100)] for _ in range(3)]
    tracking = link(movie(frames)[0])
    assert all(t.parent is None for t in tracking.tracks.values())
    assert tracking.tracks[1] == Track(1, 0, 5, None, ())


def test_a_cell_missed_for_two_frames_rejoins_its_track_and_is_absent_in_the_gap():
    frames = [[(30, 20 + 2 * t, 5, 100), (70, 70, 5, 100)] for t in range(7)]
    frames[2] = frames[2][1:]
    frames[3] = frames[3][1:]
    cells, stack = movie(frames)
    tracking = link(cells)
    assert len(tracking.tracks) == 2
    moving = track_at(tracking, stack, 0, 30, 20)
    assert tracking.tracks[moving] == Track(moving, 0, 6, None, ())
    assert lineage_json(tracking)[str(moving)]["frames"] == [0, 1, 4, 5, 6]
    out = tracked(tracking, stack)
    assert not (out[2] == moving).any() and out[4, 30, 28] == moving


def test_the_ctc_form_continues_a_gap_closed_track_under_a_new_label_with_it_as_parent():
    frames = [[(30, 20 + 2 * t, 5, 100), (70, 70, 5, 100)] for t in range(7)]
    frames[2] = frames[2][1:]
    cells, stack = movie(frames)
    tracking = link(cells)
    ctc = ctc_tracking(tracking)
    assert ctc_res_track(ctc) == ctc_res_track(tracking) == "1 0 1 0\n2 0 6 0\n3 3 6 1\n"
    assert ctc.tracks[1].daughters == (3,)
    ctc_stack = tracked(ctc, stack)
    assert (
        check_tracks(
            ctc_stack,
            {t.label: (t.label, t.first, t.last, t.parent or 0) for t in ctc.tracks.values()},
        )
        == []
    )
    assert ctc_stack[3, 30, 26] == 3 and tracked(tracking, stack)[3, 30, 26] == 1


def test_the_ctc_form_of_a_tracking_without_gaps_is_the_tracking_itself():
    cells, stack = division_movie()
    tracking = link(cells)
    assert ctc_tracking(tracking) is tracking
    records = {t.label: (t.label, t.first, t.last, t.parent or 0) for t in tracking.tracks.values()}
    assert check_tracks(tracked(tracking, stack), records) == []


def test_a_cell_missed_longer_than_the_gap_window_comes_back_as_a_new_track():
    frames = [[(30, 30, 5, 100)] for _ in range(6)]
    frames[1] = frames[2] = []
    tracking = link(movie(frames)[0], LinkParams(gap_frames=1))
    assert [(t.first, t.last) for t in tracking.tracks.values()] == [(0, 0), (3, 5)]
    assert link(movie(frames)[0], LinkParams(gap_frames=2)).tracks[1].last == 5


def test_cells_entering_and_leaving_start_and_end_tracks():
    frames = [[(50, 30, 5, 100)] + ([(5, 90, 5, 100)] if t >= 3 else []) for t in range(6)]
    for t in range(4, 6):
        frames[t] = frames[t][1:]  # the first cell leaves after frame 3
    tracking = link(movie(frames)[0], LinkParams(gap_frames=1))
    assert [(t.label, t.first, t.last) for t in tracking.tracks.values()] == [(1, 0, 3), (2, 3, 5)]
    assert ctc_res_track(tracking) == "1 0 3 0\n2 3 5 0\n"


def test_empty_frames_keep_their_place_and_a_movie_with_no_cells_has_no_tracks():
    frames = [[(40, 40, 5, 100)], [], [(40, 42, 5, 100)], []]
    cells, stack = movie(frames)
    tracking = link(cells)
    assert tracking.assignments[1] == {} and len(tracking.assignments) == 4
    assert tracking.tracks == {1: Track(1, 0, 2, None, ())}
    assert not tracking.relabel(3, stack[3]).any()
    nothing = link([Cells.empty(t) for t in range(3)])
    assert nothing.tracks == {} and nothing.assignments == [{}, {}, {}]
    assert lineage_json(nothing) == {} and ctc_res_track(nothing) == ""


def test_a_one_frame_movie_has_one_track_per_cell_and_no_frames_no_tracks():
    cells, stack = movie([[(20, 20, 5, 100), (60, 60, 5, 100), (80, 20, 5, 100)]])
    tracking = link(cells)
    assert [(t.first, t.last) for t in tracking.tracks.values()] == [(0, 0)] * 3
    assert set(np.unique(tracking.relabel(0, stack[0]))) == {0, 1, 2, 3}
    assert link([]) == Tracking({}, [])


def test_relabel_maps_objects_to_tracks_drops_unknown_ones_and_widens_past_uint16():
    small = Tracking({1: Track(1, 0, 0, None, ())}, [{5: 1}])
    frame = np.array([[0, 5, 9]], np.int32)
    out = small.relabel(0, frame)
    assert out.dtype == np.uint16 and out.tolist() == [[0, 1, 0]]
    big = Tracking({70000: Track(70000, 0, 0, None, ())}, [{9: 70000}])
    assert big.dtype == np.uint32 and big.relabel(0, frame).tolist() == [[0, 0, 70000]]
    with pytest.raises(ValueError, match="outside the movie"):
        small.relabel(1, frame)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint32])
def test_relabel_by_lookup_table_matches_a_search_for_any_label_range(dtype: type) -> None:
    rng = np.random.default_rng(3)
    top = 2**40 if dtype == np.int64 else 600  # past the table's limit: the search
    frame = rng.integers(-5 if dtype in (np.int32, np.int64) else 0, top, (64, 64)).astype(dtype)
    objects = [int(v) for v in np.unique(frame)[::3] if v > 0] + [top + 7]  # one not in frame
    mapping = {obj: i + 1 for i, obj in enumerate(objects)}
    out = relabel(frame, mapping, np.dtype(np.uint16))
    expected = np.zeros(frame.shape, np.uint16)
    for obj, track in mapping.items():
        expected[frame == obj] = track
    assert out.dtype == np.uint16 and np.array_equal(out, expected)


def test_progress_is_reported_after_every_frame():
    cells, _ = movie([[(20, 20, 5, 100)]] * 3)
    calls: list[tuple[int, int]] = []
    link(cells, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_frames_given_one_at_a_time_link_as_a_list_of_them_does():
    cells, _ = division_movie()
    calls: list[tuple[int, int]] = []
    streamed = link(iter(cells), progress=lambda *c: calls.append(c), total=len(cells))
    assert streamed == link(cells)
    assert calls == [(t + 1, len(cells)) for t in range(len(cells))]


@pytest.mark.parametrize("split", [0, 1, 4, 5, 7])
def test_a_linker_fed_part_of_the_movie_early_tracks_as_linking_it_in_one_go(split: int):
    cells, _ = division_movie(neighbour=True)
    early = Linker()
    for frame in cells[:split]:
        early.add(frame)
    assert early.frames == split
    calls: list[tuple[int, int]] = []
    rest = link(cells[split:], progress=lambda *c: calls.append(c), linker=early)
    assert rest == link(cells)
    assert calls == [(t + 1, len(cells)) for t in range(split, len(cells))]
    with pytest.raises(RuntimeError, match="finished"):
        early.add(cells[0])


def test_the_early_wakes_halve_what_remains_until_fewer_than_eight_frames_remain():
    wakes, ended = [], 0
    while (wake := next_wake(ended, 100)) is not None:
        wakes.append(wake)
        ended = wake
    assert wakes == [50, 75, 88, 94]
    assert next_wake(0, LEAST - 1) is None and next_wake(0, LEAST) == LEAST // 2


def test_linkers_in_hand_keep_a_few_movies_each_for_a_while():
    now = [0.0]
    linkers = LinkersInHand(kept=2, max_age=60, clock=lambda: now[0])
    for key in ("a", "b", "c"):
        linkers.keep(key, Ahead(Linker()))
        now[0] += 10
    assert linkers.take("a") is None, "the oldest goes beyond two"
    assert linkers.take("b") is not None and linkers.take("b") is None, "taken is gone"
    now[0] += 45  # c kept 55 s ago
    assert len(linkers) == 1
    now[0] += 10
    assert linkers.take("c") is None, "kept longer than a minute"


def test_frames_out_of_order_are_refused():
    cells, _ = movie([[(20, 20, 5, 100)]] * 2)
    with pytest.raises(ValueError, match="in order"):
        link([cells[1], cells[0]])


def test_link_params_refuse_settings_that_mean_nothing():
    with pytest.raises(ValueError, match="positive"):
        LinkParams(max_distance=0)
    with pytest.raises(ValueError, match="gap_frames"):
        LinkParams(gap_frames=-1)
