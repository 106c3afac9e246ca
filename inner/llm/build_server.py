"""Build upstream llama.cpp's ``llama-server`` for the embedded backend (``llm=local``).

llama-cpp-python's own server answers one request at a time; upstream ``llama-server``
decodes several at once (parallel slots, continuous batching) and reuses cached prompt
prefixes. Its sources ship inside the llama-cpp-python sdist (``vendor/llama.cpp``), so the
server is built from the *same* llama.cpp revision as the installed Python package:

1. ``pip download --no-binary :all: --no-deps llama-cpp-python==<installed version>``
   (pip's cache makes a repeat cheap), or ``--source`` (an sdist ``.tar.gz`` or an unpacked
   llama.cpp tree) for offline machines;
2. ``cmake`` with :data:`CMAKE_FLAGS` (Release, static, CPU only, no curl/OpenSSL, no web UI);
3. ``cmake --build --target llama-server -j <jobs>``;
4. the binary is copied atomically to ``<cache>/llama-server/<version>/llama-server``
   (``<cache>`` = :func:`inner.llm.weights.default_cache_dir`, ``~/.cache/autodata``) with a
   ``build_info.json`` next to it (flags, seconds, source).

A second run with the same llama-cpp-python version finds the binary and does nothing
(``make install`` calls it every time). Measured on a 2-core machine: see README.md.

Usage::

    python -m inner.llm.build_server [--jobs N] [--force] [--source PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

from inner.llm.weights import INSTALL_HINT, default_cache_dir
from inner.sdk.errors import BackendError

log = logging.getLogger(__name__)

PACKAGE = "llama-cpp-python"
BINARY = "llama-server"

#: CMake options: Release, one static binary (copied alone into the cache), CPU only,
#: no network features (curl is deprecated upstream and only warns; OpenSSL would add HTTPS
#: model downloads), no web UI (its prebuilt assets would be fetched from Hugging Face),
#: no tests or examples. ``GGML_NATIVE`` stays at its default (on: ``-march=native``), as in
#: llama-cpp-python's own build, so the two servers run the same kernels.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DGGML_CUDA=OFF",
    "-DGGML_VULKAN=OFF",
    "-DGGML_METAL=OFF",
)


def installed_version() -> str:
    """The installed llama-cpp-python version (the key of the cached binary).

    Raises:
        BackendError: llama-cpp-python is not installed.
    """
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise BackendError(f"{PACKAGE} is not installed: {INSTALL_HINT}") from exc


def server_dir(version: str | None = None) -> Path:
    """``<cache>/llama-server/<version>/``: where the binary for ``version`` lives."""
    return default_cache_dir() / BINARY / (version or installed_version())


def built_server(version: str | None = None) -> Path | None:
    """Path of the built ``llama-server`` for the installed (or given) version, or ``None``."""
    try:
        path = server_dir(version) / BINARY
    except BackendError:
        return None
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _run(cmd: list[str], *, log_path: Path) -> None:
    """Run one build step, its output appended to ``log_path``; quote the log's end on failure."""
    log.info("$ %s", " ".join(cmd))
    with log_path.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        except FileNotFoundError as exc:
            raise BackendError(
                f"cannot run {cmd[0]!r} ({exc}); install it (Debian: apt-get install cmake g++)"
            ) from exc
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise BackendError(f"building {BINARY} failed: {' '.join(cmd)} exited with {rc}; log {log_path}:\n{tail}")


def _unpack(archive: Path, dest: Path) -> Path:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise BackendError(f"cannot unpack {archive}: {exc}") from exc
    hits = sorted(dest.glob("*/vendor/llama.cpp/CMakeLists.txt"))
    if not hits:
        raise BackendError(f"{archive} holds no vendor/llama.cpp/CMakeLists.txt: not a {PACKAGE} sdist")
    return hits[0].parent


def _llama_cpp_tree(version: str, source: Path | None, work: Path, log_path: Path) -> Path:
    """The llama.cpp source tree: from ``source`` (tarball or tree) or a fresh pip download."""
    if source is not None:
        if source.is_dir():
            for cand in (source, source / "vendor" / "llama.cpp"):
                if (cand / "tools" / "server").is_dir() or (cand / "examples" / "server").is_dir():
                    return cand
            raise BackendError(f"--source {source} is not a llama.cpp tree nor an unpacked {PACKAGE} sdist")
        return _unpack(source, work)
    dl = work / "sdist"
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    _run(
        [*pip, "download", "--no-binary", ":all:", "--no-deps", f"{PACKAGE}=={version}", "-d", str(dl)],
        log_path=log_path,
    )
    archives = sorted(dl.glob("*.tar.gz"))
    if not archives:
        raise BackendError(f"pip download of {PACKAGE}=={version} gave no sdist in {dl}")
    return _unpack(archives[0], work)


def build_llama_server(*, jobs: int = 2, force: bool = False, source: Path | None = None) -> Path:
    """Build ``llama-server`` for the installed llama-cpp-python version, once.

    Args:
        jobs: parallel compile jobs (``cmake --build -j``).
        force: rebuild even if the cached binary exists.
        source: an sdist ``.tar.gz`` or an unpacked llama.cpp tree instead of ``pip download``.

    Returns:
        Path of the cached binary.

    Raises:
        BackendError: llama-cpp-python is not installed, the sdist cannot be fetched, or cmake
            or the compiler fails (the message names the failing command).
    """
    version = installed_version()
    dest = server_dir(version)
    existing = built_server(version)
    if existing and not force:
        log.info("%s for %s %s already built: %s", BINARY, PACKAGE, version, existing)
        return existing
    t0 = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    log_path = dest / "build.log"
    log_path.write_text("")
    log.info("building %s for %s %s (about 8 minutes on 2 cores); log %s", BINARY, PACKAGE, version, log_path)
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        work = Path(tmp)
        tree = _llama_cpp_tree(version, source, work, log_path)
        build = work / "build"
        _run(["cmake", "-S", str(tree), "-B", str(build), *CMAKE_FLAGS], log_path=log_path)
        _run(
            ["cmake", "--build", str(build), "--config", "Release", "--target", BINARY, "-j", str(jobs)],
            log_path=log_path,
        )
        built = build / "bin" / BINARY
        if not built.is_file():
            raise BackendError(f"cmake finished but {built} is missing")
        part = dest / f".{BINARY}.part"
        shutil.copy2(built, part)
        os.replace(part, dest / BINARY)  # atomic: a half-copied binary is never "built"
    seconds = time.monotonic() - t0
    info = {
        "package": PACKAGE,
        "version": version,
        "cmake_flags": list(CMAKE_FLAGS),
        "jobs": jobs,
        "build_seconds": round(seconds, 1),
        "source": str(source) if source else f"pip download {PACKAGE}=={version} (sdist)",
    }
    (dest / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("built %s in %.0f s: %s", BINARY, seconds, dest / BINARY)
    return dest / BINARY


def main(argv: list[str] | None = None) -> int:
    """CLI: build (or find) the cached ``llama-server``; exit 1 with the reason on failure."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel compile jobs")
    ap.add_argument("--force", action="store_true", help="rebuild even if already built")
    ap.add_argument("--source", type=Path, help="sdist .tar.gz or unpacked llama.cpp tree (offline)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build_llama_server(jobs=args.jobs, force=args.force, source=args.source)
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
