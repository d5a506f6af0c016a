"""Reference tests run tiny torch models: one intra-op thread (more only add contention, up to
10x slower on a busy 2-core box)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
