import pytest

from tests.factories import make_pool


@pytest.fixture
def dedicated_pool(owner):
    """The owner's dedicated pool "dedicated-a", with one node "ded-1" (no engine behind it)."""
    return make_pool("dedicated-a", owner=owner, local_node="ded-1")
