"""The blocking facade for code that is not async."""

import pytest
import torch

from rlhfless.runtime import RemoteError, SyncRuntime
from tests.runtime.conftest import ECHO

pytestmark = pytest.mark.timeout(60)


def test_sync_facade_round_trip() -> None:
    with SyncRuntime(preload=("torch",)) as rt:
        h = rt.spawn(ECHO, "s:")
        assert h.hello("x") == "s:x"
        assert h.call("echo", [1, 2]) == [1, 2]
        assert torch.equal(h.double(torch.ones(3)), torch.full((3,), 2.0))
        with pytest.raises(RemoteError, match="nope"):
            h.fail("nope")
        h.release()
    assert len(rt.billing_events) == 1 and rt.stats.calls == 4
