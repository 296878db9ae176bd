"""One sampled response: what every engine's ``generate`` returns per sample.

Kept below the engines (hf.py, vllm.py) and the decode loop, which all make or read it, so that
none of them imports another for it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

FinishReason = Literal["eos", "length", "cut"]


class Sample(msgspec.Struct):
    """One sampled response. ``token_ids`` ends with the EOS token when ``finish_reason == "eos"``."""

    prompt_index: int  # index into the ``prompts`` list given to ``generate``
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each chosen token under logits / temperature
    finish_reason: FinishReason
