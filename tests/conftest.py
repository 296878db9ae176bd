import threading
from collections.abc import Iterator

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests are skipped with a reason where there is no CUDA device (never silently
    deselected): the report then says what did not run here."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none here (run where a GPU is lent)")
    for item in gpu:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_leaked_authenticator() -> Iterator[None]:
    """Fail the test that leaves a CURVE authenticator running (a Runtime with agents that was
    never closed), and stop it: left alone, its thread keeps sockets of a context that the
    garbage collector later tries to terminate, which hangs whichever test happens to run then."""
    from zmq.auth.thread import AuthenticationThread

    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if isinstance(t, AuthenticationThread) and t.ident not in before and t.is_alive()
    ]
    for thread in leaked:
        thread.authenticator.stop()  # type: ignore[attr-defined]
    assert not leaked, f"{len(leaked)} CURVE authenticator(s) left running: a Runtime not closed"
