"""Fixtures of the training tests: the tiny run trained once, for tests to copy."""

import shutil

import pytest
from tiny_run import tiny_config

from seqjax.training import train


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(workdir, TrainResult) of the tiny run trained straight to step 8; copy it to change it."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    return workdir, train(tiny_config(), workdir, interactive=False)


@pytest.fixture
def copy_of_trained_run(trained_run, tmp_path):
    """A copy of the trained run's workdir (checkpoints at steps 4 and 8)."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run[0], copy)
    return copy
