"""Model tests run single-threaded: their tensors are small, and on our shared 2-core
machines intra-op threads spin against each other (a T=1000 sequential backward went from
~0.3 s to ~15 s with the default thread count under load)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
