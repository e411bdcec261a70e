"""Shared fixture of the interpreted kernel tests (this process runs with TRITON_INTERPRET=1)."""

import pytest

from sapiens2_edge.kernels import switch


@pytest.fixture
def interpret():
    """Triton forced on CPU tensors: the kernels run through Triton's interpreter."""
    assert switch.interpreting()
    with switch.override(mode="triton"):
        yield
