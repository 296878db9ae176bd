from collections.abc import AsyncIterator

import pytest

from rlhfless.runtime import Runtime

ECHO = "tests.runtime.actors:Echo"


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    # The test actors need torch only; skipping transformers halves the zygote's start.
    async with Runtime(preload=("torch",), keep_alive_s=30.0) as runtime:
        yield runtime
