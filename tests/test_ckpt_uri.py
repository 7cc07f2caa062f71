"""A checkpoint directory given as a URI (``s3://bkt/ck``) is refused with a
clear ``ValueError``; it never becomes a local directory named ``s3:``."""

from __future__ import annotations

import os

import pytest

from data_juicer_accel.utils.ckpt_utils import CheckpointManager
from data_juicer_accel.utils.ray_ckpt import RayCheckpointManager
from tests.test_cli import cli

OTHER_URIS = ["gs://bkt/ck", "hdfs://namenode:8020/ck", "file:///tmp/ck", "oss+s3://bkt/ck"]


@pytest.mark.parametrize("uri", OTHER_URIS)
@pytest.mark.parametrize("manager", [CheckpointManager, RayCheckpointManager])
def test_a_uri_other_than_s3_is_refused_and_nothing_is_written(tmp_path, monkeypatch, manager, uri):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"is not supported: .* local directory or an S3-compatible bucket"):
        manager(uri, [{"a_mapper": {}}]) if manager is CheckpointManager else manager(uri)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("manager", [CheckpointManager, RayCheckpointManager])
def test_credentials_in_the_uri_are_not_shown(tmp_path, monkeypatch, manager):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as raised:
        manager("s3://AKIAEXAMPLE:secret123@bkt/ck", []) if manager is CheckpointManager else manager(
            "s3://AKIAEXAMPLE:secret123@bkt/ck"
        )
    assert "secret123" not in str(raised.value) and "AKIAEXAMPLE" not in str(raised.value)
    assert "credentials written into the URI are refused" in str(raised.value)
    assert os.listdir(tmp_path) == []


def test_a_local_path_with_a_colon_is_still_a_path(tmp_path):
    """Only ``scheme://`` is a URI: ``a:b`` and ``./s3:/x`` stay local paths."""
    for name in ["a:b", "s3:"]:
        CheckpointManager(str(tmp_path / name / "ck"), [])
        assert (tmp_path / name / "ck").is_dir()


@pytest.mark.parametrize("uri", OTHER_URIS)
def test_inspect_refuses_a_uri_other_than_s3_on_one_line(tmp_path, monkeypatch, uri):
    """``s3://bucket/prefix`` is inspected (test_integration_bucket.py); any
    other scheme is refused, and no local directory is made for it."""
    monkeypatch.chdir(tmp_path)
    result = cli("inspect", uri)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "is not supported" in result.stderr
    assert os.listdir(tmp_path) == []


def test_inspect_refuses_credentials_in_a_bucket_uri_without_showing_them(tmp_path):
    result = cli("inspect", "s3://AKIAEXAMPLE:secret123@bkt/ck")
    assert result.returncode == 2
    assert "credentials written into the URI are refused" in result.stderr
    assert "secret123" not in result.stderr + result.stdout and "AKIAEXAMPLE" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
