"""Where a gang's members go: packed on one node when one has room, spread when none has."""

from __future__ import annotations

import pytest

from rlhfless.runtime.placement import NodeView, place_gang


def _view(name: str, slots: int, busy: int = 0, warm: bool = False) -> NodeView:
    return NodeView(name=name, slots=slots, busy=busy, live=busy, warm_actor=warm, has_version=True)


def test_packs_on_the_preferred_node_with_room() -> None:
    views = [_view("a", 4, busy=1), _view("b", 4)]
    busy = {"a": [1, 0, 0, 0], "b": [0, 0, 0, 0]}
    assert place_gang(views, busy, 2) == [("b", 0), ("b", 1)]  # least loaded
    busy_a = {"a": [0, 0, 0, 0], "b": [0, 0, 0, 0]}
    warm = [_view("a", 4, warm=True), _view("b", 4)]
    assert place_gang(warm, busy_a, 2) == [("a", 0), ("a", 1)]  # locality first


def test_skips_busy_slots_on_the_packed_node() -> None:
    views = [_view("a", 4, busy=2)]
    assert place_gang(views, {"a": [1, 0, 1, 0]}, 2) == [("a", 1), ("a", 3)]


def test_spans_nodes_when_no_node_has_room_grouped_by_node() -> None:
    views = [_view("a", 2, busy=1), _view("b", 2)]
    busy = {"a": [1, 0], "b": [0, 0]}
    assert place_gang(views, busy, 3) == [("b", 0), ("b", 1), ("a", 1)]


def test_oversubscribes_the_least_busy_slots_when_all_are_busy() -> None:
    views = [_view("a", 2, busy=2), _view("b", 2, busy=2)]
    busy = {"a": [2, 1], "b": [1, 1]}
    assert place_gang(views, busy, 2) == [("b", 0), ("b", 1)]  # one node, least busy


def test_too_large_a_gang_is_refused() -> None:
    with pytest.raises(ValueError, match="needs 3 slots"):
        place_gang([_view("a", 2)], {"a": [0, 0]}, 3)
