"""Fixtures shared by more than one test module."""

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture
def serverapp_identity(monkeypatch):
    """What a ServerApp process has set when it (or its strategy) builds messages: Flower's Message()
    reads the run, node and task ids from TaskIdentity."""
    for name, value in (("_run_id", 5), ("_node_id", 1), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, name, value)
