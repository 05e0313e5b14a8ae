import os

import pytest
import torch

# Deterministic, single-threaded-ish CPU runs: the CI machine has 2 cores.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
