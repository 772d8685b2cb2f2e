import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Captum runs many small forward passes; on a busy 2-core machine two intra-op threads
    contend and run them ~10x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
