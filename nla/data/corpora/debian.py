"""Corpus data shipped in Debian packages, fetched without root when the package is not installed.

A package's data is looked for, in order: where an installed copy keeps it (``apt-get install``), in
nla's cache directory (``$NLA_CACHE_DIR/debian/<package>_<version>``), and otherwise it is fetched:
the pinned ``.deb`` from the mirror's pool, checked against its pinned SHA-256; when the mirror no
longer holds that version, the file the suite's ``Packages`` index names, checked against the
index's SHA-256. The ``.deb`` is an ``ar`` archive whose ``data.tar.*`` member holds the files; only
the package's data directory and its copyright file are unpacked, into a temporary directory that is
renamed into place when complete, so an interrupted fetch never leaves a half-written copy.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nla.core.errors import ConfigError

MIRROR_ENV = "NLA_DEBIAN_MIRROR"
DEFAULT_MIRROR = "https://deb.debian.org/debian"
INDEX_SUITE = "stable"
TIMEOUT_S = 30.0
COMPLETE = ".complete"


@dataclass(frozen=True)
class DebianPackage:
    """One architecture-independent Debian package, pinned to a version and its checksum."""

    name: str
    """Package name, e.g. ``r-cran-janeaustenr``."""
    version: str
    """Pinned version, e.g. ``1.0.0-1``."""
    pool_path: str
    """The file's path under the mirror root (the ``Filename`` field of the ``Packages`` index)."""
    sha256: str
    """SHA-256 of the pinned ``.deb``."""
    data_dir: str
    """The directory holding the data, as installed (relative to ``/``)."""

    def installed(self) -> Path:
        return Path("/") / self.data_dir


def mirror() -> str:
    return os.environ.get(MIRROR_ENV, DEFAULT_MIRROR).rstrip("/")


def package_data(package: DebianPackage, cache_dir: Path | None = None) -> Path:
    """The package's data directory: the installed copy, the cached one, or a fresh fetch."""
    if package.installed().is_dir():
        return package.installed()
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    for unpacked in sorted(root.glob(f"{package.name}_*"), reverse=True):
        if (unpacked / COMPLETE).is_file() and (unpacked / package.data_dir).is_dir():
            return unpacked / package.data_dir
    return fetch(package, root) / package.data_dir


def fetch(package: DebianPackage, root: Path) -> Path:
    """Download, verify and unpack ``package`` under ``root``; returns the unpacked tree's root."""
    base = mirror()
    version, pool_path, sha256 = package.version, package.pool_path, package.sha256
    try:
        deb = _download(f"{base}/{pool_path}")
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise _unreachable(package, f"{base}/{pool_path}", error) from error
        # The pinned version left the mirror: take the one the current index names.
        version, pool_path, sha256 = _from_index(package, base)
        deb = _download(f"{base}/{pool_path}", package)
    except OSError as error:
        raise _unreachable(package, f"{base}/{pool_path}", error) from error
    digest = hashlib.sha256(deb).hexdigest()
    if digest != sha256:
        raise ConfigError("corpus.path", f"{base}/{pool_path} has SHA-256 {digest}, expected {sha256}; "
                          f"the download is corrupt or the mirror is wrong (set {MIRROR_ENV} to another mirror)")
    target = root / f"{package.name}_{version}"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package.name}-", dir=root))
    try:
        unpack_deb(deb, staging, (package.data_dir, f"usr/share/doc/{package.name}/copyright"))
        if not (staging / package.data_dir).is_dir():
            raise ConfigError("corpus.path", f"{base}/{pool_path} holds no {package.data_dir}; "
                              f"install the package instead: apt-get install {package.name}")
        (staging / COMPLETE).write_text(f"{base}/{pool_path} sha256={digest}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"nla: fetched Debian package {package.name} {version} ({len(deb) / 1e6:.1f} MB, sha256 {digest[:12]}) "
          f"from {base}/{pool_path} into {target}", file=sys.stderr, flush=True)
    return target


def unpack_deb(deb: bytes, destination: Path, keep: tuple[str, ...]) -> list[Path]:
    """Write the regular files of ``deb``'s data archive that lie under one of ``keep`` (paths
    relative to ``/``) into ``destination``; returns the files written. Links, devices and paths that
    leave the destination are never written."""
    data = _ar_member(deb, "data.tar")
    written = []
    prefixes = [PurePosixPath(path) for path in keep]
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, lzma.LZMAError) as error:
        raise ConfigError("corpus.path", f"the package's data archive is unreadable ({error}); "
                          f"it may use a compression Python cannot read") from error
    with archive:
        for member in archive:
            path = PurePosixPath(member.name.removeprefix("./"))
            if not member.isfile() or path.is_absolute() or ".." in path.parts:
                continue
            if not any(path == prefix or prefix in path.parents for prefix in prefixes):
                continue
            out = destination.joinpath(*path.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.extractfile(member) as source, open(out, "wb") as sink:
                shutil.copyfileobj(source, sink)
            written.append(out)
    return written


def _ar_member(deb: bytes, stem: str) -> bytes:
    """The first member of the ``ar`` archive ``deb`` whose name starts with ``stem``."""
    if not deb.startswith(b"!<arch>\n"):
        raise ConfigError("corpus.path", "the downloaded file is not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(deb):
        header = deb[offset : offset + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        offset += 60
        if name.startswith(stem):
            return deb[offset : offset + size]
        offset += size + size % 2
    raise ConfigError("corpus.path", f"the Debian package holds no {stem}.* member")


def _from_index(package: DebianPackage, base: str) -> tuple[str, str, str]:
    url = f"{base}/dists/{INDEX_SUITE}/main/binary-all/Packages.xz"
    try:
        index = lzma.decompress(_download(url, package)).decode("utf-8", "replace")
    except lzma.LZMAError as error:
        raise _unreachable(package, url, error) from error
    for stanza in index.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Package") == package.name:
            return fields["Version"], fields["Filename"], fields["SHA256"]
    raise ConfigError("corpus.path", f"Debian {INDEX_SUITE} no longer has {package.name}; "
                      f"install it from an older release or give the corpus as local files")


def _download(url: str, package: DebianPackage | None = None) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.read()
    except OSError as error:
        if package is None:
            raise
        raise _unreachable(package, url, error) from error


def _unreachable(package: DebianPackage, url: str, error: BaseException) -> ConfigError:
    reason = getattr(error, "reason", None) or error
    return ConfigError("corpus.path", f"could not fetch {package.name} from {url} ({reason}); connect to the "
                       f"internet, set {MIRROR_ENV} to a reachable Debian mirror, or install it: "
                       f"apt-get install {package.name}")


def _cache_root() -> Path:
    from nla.models.loading import cache_root

    return cache_root() / "debian"
