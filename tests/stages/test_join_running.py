"""Stragglers handed into a running rollout function, across real processes (stages/rollout.py).

A cut after a few steps (made in this process) hands its sequences, with their KV caches or
for re-prefill, to function B while B's own generate is still running. B's single
reply carries its own samples and A's, finished, and under greedy decoding every one equals the
sample an uncut run produces. Once B's generate has ended, an offer is refused.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rlhfless.adapters.hf import HFEngine
from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.runtime import Runtime
from rlhfless.stages.rollout_stage import ROLLOUT

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

LONG = 400  # B's generate runs this many greedy steps (no EOS from a random model)


@pytest.mark.parametrize("ship", [True, False])
async def test_stragglers_join_a_running_function_and_end_as_uncut(
    tmp_path: Path, ship: bool
) -> None:
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    ref = HFEngine.load(model_dir)
    tok = ref.tokenizer
    theirs = [tok.encode_prompt(t) for t in ("3xa", "12xb", "7xc")]
    mine = [tok.encode_prompt(t) for t in ("40xh", "1xd")]
    uncut = ref.generate(theirs, 2, LONG, greedy=True).samples
    uncut_mine = ref.generate(mine, 2, LONG, greedy=True).samples
    async with Runtime(slots=2, keep_alive_s=5) as rt:
        b = await rt.spawn(ROLLOUT, str(model_dir))
        # A's cut, made here (a random model never finishes a row, so no function would reach
        # a threshold): 3 steps each, with each row's KV exported as a cutting function does.
        seen: list[int] = []
        cut = ref.generate(
            theirs, 2, LONG, greedy=True, ship_kv=True,
            stop=lambda finished, total: seen.append(finished) or len(seen) >= 3,
        )  # fmt: skip
        assert {s.finish_reason for s in cut.samples} == {"cut"}
        rows = [
            {
                "key": 500 + r,
                "prompt": theirs[s.prompt_index],
                "token_ids": s.token_ids,
                "logprobs": s.logprobs,
                "rng": None,  # greedy: no sampling key
                "kv": cut.kv[r] if ship else None,
            }
            for r, s in enumerate(cut.samples)
        ]
        running = asyncio.ensure_future(
            b.generate(mine, 2, LONG, 1.0, 0, True, True, None, join=True)
        )
        await asyncio.sleep(0.05)  # B's generate is under way
        assert not running.done(), "B ended before the hand-over: raise LONG"
        assert await b.admit(rows)
        got = await running
        assert not await b.admit(rows)  # B's generate has ended: refused, not lost
    assert got["joined"] == [500 + r for r in range(6)]
    assert got["finish"] == ["length"] * 10
    assert got["response_ids"][:4] == [s.token_ids for s in uncut_mine]
    assert got["response_ids"][4:] == [s.token_ids for s in uncut]
    for lp, s in zip(got["logprobs"][4:], uncut, strict=True):
        assert (lp - lp.new_tensor(s.logprobs)).abs().max() < 1e-4
    state = sum(len(theirs[r // 2]) + 3 - 1 for r in range(6))  # prompt + tokens[:-1]
    assert got["kv_tokens"] == (state if ship else 0)
    # Re-prefill runs each distinct prompt + partial once: a greedy group's two rows coincide.
    assert got["joined_prefill"] == (0 if ship else state // 2)
