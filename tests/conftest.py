"""Shared fixtures. Tests run on the CPU, offline, with caches in temporary directories."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["ZOO_NO_FETCH"] = "1"  # a packaged model (zoo model fetch) is never downloaded by a test
# hub models' recorded digests (zoo.models.verify_hub_weights) go to a file of this session, not the user's
os.environ.setdefault("ZOO_DIGESTS", os.path.join(tempfile.mkdtemp(prefix="zoo-digests-"), "hub-digests.json"))


import pytest

import scratch_model


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A stage cache shared by the ``zoo`` runs of one test module (stages built once per module)."""
    return tmp_path_factory.mktemp("zoo_cache")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A model, tokenizer and data files unlike the world's (``tests/scratch_model.py``), built once per module."""
    return scratch_model.build(tmp_path_factory.mktemp("scratch"))
