"""Cut sequences that join another function's running generate (adapters/decode.py), fp32 tiny.

What holds: under greedy decoding a sequence cut on one function and joined into another's
running batch (from its shipped KV or by re-prefill) ends as the uncut sample, token for token,
log-probs within 1e-5, and so do the receiver's own rows. Under sampling the receiver's own rows
draw what they draw without joiners, and a joiner's tokens do not depend on when it joined.
An inbox never loses a sequence: an offer after the generate ended is refused, and a generate
that cuts returns the joiners it had not started as cut, unchanged.
"""

from __future__ import annotations

import threading

import pytest

from rlhfless.adapters.decode import Inbox, Joiner
from rlhfless.adapters.hf import Generation, HFEngine, Sample

LOGPROB_TOL = 1e-5


class JoinAt(Inbox):
    """An inbox whose rows arrive between decode steps ``at`` (deterministic mid-run joins)."""

    def __init__(self, at: int, rows: list[Joiner]) -> None:
        super().__init__()
        self.at, self.pending, self.calls = at, rows, 0
        self.open()

    def take(self, final: bool = False) -> list[Joiner]:
        self.calls += 1
        if self.calls == self.at and self.pending:
            self.offer(self.pending)
            self.pending = []
        return super().take(final)


def _cut_after(steps: int):
    seen: list[int] = []
    return lambda finished, total: seen.append(finished) or len(seen) >= steps


def _joiners(cut: Generation, prompts: list[list[int]], ship: list[bool]) -> list[Joiner]:
    return [
        Joiner(
            key=100 + r,
            prompt=prompts[s.prompt_index],
            partial=s,
            kv=cut.kv.get(r) if use else None,
            rng=cut.rng.get(r),
        )
        for r, (s, use) in enumerate(zip(cut.samples, ship, strict=True))
    ]


def _same(got: Sample, want: Sample) -> None:
    assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
    diff = max(abs(x - y) for x, y in zip(got.logprobs, want.logprobs, strict=True))
    assert diff < LOGPROB_TOL


@pytest.mark.parametrize("at", [1, 5])
def test_greedy_joined_sequences_end_as_the_uncut_samples(
    engine: HFEngine, prompts: list[list[int]], at: int
) -> None:
    mine, theirs = prompts[3:], prompts[:3]
    full_mine = engine.generate(mine, 2, 30, greedy=True)
    full_theirs = engine.generate(theirs, 2, 30, greedy=True)
    cut = engine.generate(theirs, 2, 30, greedy=True, stop=_cut_after(4), ship_kv=True)
    assert {s.finish_reason for s in cut.samples} == {"cut"}
    ship = [r % 2 == 0 for r in range(len(cut.samples))]  # half shipped KV, half re-prefilled
    inbox = JoinAt(at, _joiners(cut, theirs, ship))
    got = engine.generate(mine, 2, 30, greedy=True, inbox=inbox)
    own, joined = got.samples[: len(mine) * 2], got.samples[len(mine) * 2 :]
    assert got.joined == [100 + r for r in range(len(cut.samples))]
    for a, b in zip(own, full_mine.samples, strict=True):
        _same(a, b)
    for a, b in zip(joined, full_theirs.samples, strict=True):
        _same(a, b)
    shipped = sum(
        len(theirs[s.prompt_index]) + 4 - 1 for s, u in zip(cut.samples, ship, strict=True) if u
    )
    assert got.kv_tokens == shipped
    # Decode tokens count what was generated here: the joiners' 4 earlier tokens are not.
    assert got.decode_tokens == len(mine) * 2 * 30 + len(joined) * (30 - 4)
    assert not inbox.offer(_joiners(cut, theirs, ship))  # ended: further offers are refused


def test_sampled_sequences_come_out_the_same_cut_and_joined_or_not(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    mine, theirs = prompts[3:], prompts[:3]
    alone = engine.generate(mine, 2, 20, temperature=1.0, seed=3)
    full = engine.generate(theirs, 2, 20, seed=5)  # the uncut run
    cut = engine.generate(theirs, 2, 20, seed=5, stop=_cut_after(3), ship_kv=True)
    moved = [r for r, s in enumerate(cut.samples) if s.finish_reason == "cut"]
    assert moved and set(cut.rng) == set(moved)  # each cut row's sampling key comes back
    for r, s in enumerate(cut.samples):  # before the cut: the same draws
        assert s.token_ids == full.samples[r].token_ids[: len(s.token_ids)]
    for at, ship in ((1, True), (4, False)):
        rows = _joiners(cut, theirs, [ship] * len(cut.samples))
        got = engine.generate(mine, 2, 20, seed=3, inbox=JoinAt(at, [rows[r] for r in moved]))
        n = len(mine) * 2
        assert [s.token_ids for s in got.samples[:n]] == [s.token_ids for s in alone.samples]
        for s, r in zip(got.samples[n:], moved, strict=True):  # as if never cut or moved
            _same(s, full.samples[r])


def test_a_generate_that_cuts_returns_unstarted_joiners_cut_and_unchanged(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    cut = engine.generate(prompts[:2], 1, 20, greedy=True, stop=_cut_after(2), ship_kv=True)
    rows = _joiners(cut, prompts[:2], [True, False])
    inbox = Inbox()
    inbox.open()
    assert inbox.offer(rows)
    got = engine.generate(prompts[2:], 1, 20, greedy=True, stop=_cut_after(1), inbox=inbox)
    returned = got.samples[3:]
    assert got.joined == [100, 101]
    assert [s.finish_reason for s in returned] == ["cut", "cut"]
    assert [s.token_ids for s in returned] == [s.token_ids for s in cut.samples]
    assert got.kv[3] is rows[0].kv and 4 not in got.kv  # the shipped cache travels on
    assert not inbox.offer(rows)  # closed by the cut
    assert got.steps == 1  # the joiners' two earlier tokens were not decoded here


def test_a_requested_cut_stops_at_the_next_step_and_reports_progress_before(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    class CutAt(Inbox):
        def take(self, final: bool = False) -> list[Joiner]:
            if self.progress is not None and self.progress.total - self.progress.finished > 0:
                if len(self.seen) == 4:
                    self.request_cut()
                self.seen.append(self.progress)
            return super().take(final)

    inbox = CutAt()
    inbox.seen = []
    inbox.open()
    got = engine.generate(prompts, 1, 12, greedy=True, inbox=inbox)
    assert {s.finish_reason for s in got.samples} == {"cut"}
    assert [len(s.token_ids) for s in got.samples] == [6] * len(prompts)
    last = inbox.seen[-1]  # after step 5: every row unfinished, 5 tokens each
    assert last.finished == 0 and last.total == len(prompts) and last.joined == []
    assert last.own == [(r, 5) for r in range(len(prompts))]
    assert not inbox.request_cut()  # the generate ended: nothing to cut


def test_offers_from_another_thread_are_decoded_or_refused_never_lost(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    cut = engine.generate(prompts, 1, 16, greedy=True, stop=_cut_after(2), ship_kv=True)
    rows = _joiners(cut, prompts, [True] * len(prompts))
    inbox = Inbox()
    inbox.open()
    accepted: list[int] = []

    def offer() -> None:
        for j in rows:
            if inbox.offer([j]):
                accepted.append(j.key)

    thread = threading.Thread(target=offer)
    thread.start()
    got = engine.generate(prompts[:1], 1, 16, greedy=True, inbox=inbox)
    thread.join()
    assert got.joined == accepted  # every accepted sequence came back, in arrival order
    assert all(s.finish_reason in ("eos", "length") for s in got.samples)


def test_the_keyed_draws_follow_the_distribution() -> None:
    """Inverse CDF at uniform(key, n): frequencies over many keys and steps match the
    probabilities (a chi-square bound far above what a fair sampler reaches), and a row's draws
    depend on its key and n only, not on the other rows in the batch."""
    import torch

    from rlhfless.adapters.decode import _sample, fold, row_seed, uniform

    probs = torch.tensor([0.5, 0.25, 0.125, 0.0, 0.0625, 0.0625])
    scores = probs.clamp_min(1e-30).log().expand(4000, -1)
    keys = torch.tensor([fold(row_seed(7, r)) for r in range(4000)])
    counts = torch.zeros(6)
    for n in range(5):
        tok = _sample(scores, keys, torch.full((4000,), n))
        counts += torch.bincount(tok, minlength=6)
        alone = _sample(scores[:1], keys[123:124], torch.tensor([n]))
        assert int(alone[0]) == int(tok[123])  # the same draw without the other 3999 rows
    assert counts[3] == 0  # a zero-probability token is never drawn
    expected = probs * 20000
    chi2 = float((((counts - expected) ** 2) / expected.clamp_min(1e-9))[probs > 0].sum())
    assert chi2 < 25.0, (counts, chi2)  # 4 degrees of freedom: p < 1e-4
    u = uniform(keys, torch.zeros(4000, dtype=torch.long))
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0 and abs(float(u.mean()) - 0.5) < 0.02


def test_the_hash_is_murmur3_fmix32_exactly_without_int64_overflow() -> None:
    import random

    import torch

    from rlhfless.adapters.decode import _mix32

    def fmix32(x: int) -> int:  # the reference, on Python's unbounded ints
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & 0xFFFF_FFFF
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & 0xFFFF_FFFF
        return x ^ (x >> 16)

    rng = random.Random(0)
    xs = [0, 1, 0xFFFF_FFFF, 0x8000_0000, *(rng.getrandbits(32) for _ in range(5000))]
    assert _mix32(torch.tensor(xs)).tolist() == [fmix32(x) for x in xs]


def test_a_quantile_at_the_top_never_picks_an_impossible_token_and_nan_is_refused() -> None:
    import torch

    from rlhfless.adapters.decode import pick
    from rlhfless.adapters.hf import EngineError

    logp = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).clamp_min(1e-45).log()
    logp[0, 2:] = float("-inf")  # trailing tokens with no probability (a padded vocabulary)
    assert pick(logp, torch.tensor([1.0])).tolist() == [1]  # u * total == total: the last real
    assert pick(logp, torch.tensor([0.0])).tolist() == [0]
    assert pick(logp, torch.tensor([0.5])).tolist() == [1]
    with pytest.raises(EngineError, match="not finite"):
        pick(torch.full((1, 4), float("nan")), torch.tensor([0.3]))
