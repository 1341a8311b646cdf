"""Shared fixtures. Tests run on the CPU, offline, with caches in temporary directories."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A stage cache shared by the ``zoo`` runs of one test module (stages built once per module)."""
    return tmp_path_factory.mktemp("zoo_cache")
