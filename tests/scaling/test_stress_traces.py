"""benchmarks/stress_traces.py writes, for every shape, a trace benchmarks/scaling.py reads, with
the shape it names (the replay's measurements are the benchmark's, docs/scaling.md)."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.scaling import read_trace
from benchmarks.stress_traces import SHAPES, write


def test_every_shape_is_a_trace_the_replay_reads_and_the_same_every_run(tmp_path: Path) -> None:
    for name, (prompts, cap, _) in SHAPES.items():
        path = write(name, tmp_path, seed=0)
        epochs, tokens, ids, limit = read_trace(path)
        assert limit == cap and len(ids) == len(tokens) == prompts
        assert all(len(e) >= 2 for e in epochs)  # one to warm the predictor, one rolled out
        assert all(1 <= x <= cap for e in epochs for ls in e for x in ls)
        first = path.read_bytes()
        assert write(name, tmp_path, seed=0).read_bytes() == first  # seeded
        assert write(name, tmp_path, seed=1).read_bytes() != first


def test_the_shapes_are_what_they_say(tmp_path: Path) -> None:
    def read(name: str) -> list[list[list[int]]]:
        return read_trace(write(name, tmp_path, seed=0))[0]

    growing = read("growing")  # the rolled-out epoch 1.6x the one the predictor saw
    ratio = statistics.median(statistics.median(e[1]) / statistics.median(e[0]) for e in growing)
    assert 1.4 < ratio < 1.8
    medians = sorted(statistics.median(e[0]) for e in read("bimodal"))  # two modes, far apart
    assert medians[len(medians) // 4] < 150 < 600 < medians[3 * len(medians) // 4]
    compmath = read("compmath")  # many at the cap
    at_cap = sum(x == 4096 for e in compmath for x in e[-1]) / (8 * len(compmath))
    assert at_cap > 0.1
    assert all(len(ls) == 4 for e in read("heavyg4") for ls in e)
