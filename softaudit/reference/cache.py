"""The on-disk reference cache: content-addressed .npz files, one per input array and format.

Kept apart from the engines that fill it: a key hashes ENGINE_VERSION, the format and the
input's bytes, so a cached reference is reused exactly when the engine would recompute it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from softaudit.formats import Format
from softaudit.reference.exact import ENGINE_VERSION, ROW_OPS, OpReference, ReferenceSet, RowStats, reference_rows


def default_cache_dir() -> Path:
    """$SOFTAUDIT_CACHE_DIR, else $XDG_CACHE_HOME/softaudit, else ~/.cache/softaudit."""
    env = os.environ.get("SOFTAUDIT_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "softaudit"


class ReferenceCache:
    """Content-addressed store of ReferenceSets (one .npz per input array and format).

    Keys hash the engine version, the format and the input's bytes, so a change of
    either recomputes. Writes go to a temporary file renamed into place, so
    concurrent runs never see half a file. Each entry carries its own key and is read
    only when that key is the one asked for: a file swapped, copied or altered under
    another entry's name is damage, recomputed and replaced, never a reference for
    an input it was not computed from (counted in ``damaged``).
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.hits = 0
        self.misses = 0
        self.damaged = 0
        """Entries found that did not match their key (or could not be read): recomputed."""
        self.memory: dict[str, object] = {}
        """Entries computed elsewhere (prefetch's worker processes) and handed over, by key."""

    @staticmethod
    def key(x: np.ndarray, fmt: Format) -> str:
        h = hashlib.sha256()
        h.update(f"softaudit-ref/{ENGINE_VERSION}/{fmt.name}/{x.shape}".encode())
        h.update(np.ascontiguousarray(x).view(np.uint8).tobytes())
        return h.hexdigest()

    @staticmethod
    def ops_key(kind: str, parts: Sequence[np.ndarray | str], fmt: Format) -> str:
        """The key of get_or_compute_ops's entries."""
        h = hashlib.sha256(f"softaudit-{kind}/{ENGINE_VERSION}/{fmt.name}".encode())
        for part in parts:
            if isinstance(part, str):
                h.update(b"s" + part.encode() + b"\0")
            else:
                arr = np.ascontiguousarray(part)
                h.update(f"a{arr.dtype.str}{arr.shape}".encode())
                h.update(arr.view(np.uint8).tobytes())
        return h.hexdigest()

    def stored(self, key: str) -> bool:
        """Whether the disk cache (or the memory layer) already holds ``key``."""
        return key in self.memory or (self.directory is not None and self._path(key).exists())

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / "references" / key[:2] / f"{key}.npz"

    def get_or_compute(self, x: np.ndarray, fmt: Format) -> ReferenceSet:
        """The cached ReferenceSet for x, computing and storing it on a miss."""
        key = self.key(x, fmt)
        if key in self.memory:
            self.misses += 1  # computed for this run (by a worker): a miss of the disk cache
            return self.memory.pop(key)  # type: ignore[return-value]
        if self.directory is None:
            self.misses += 1
            return reference_rows(x, fmt)
        path = self._path(key)
        if path.exists():
            try:
                loaded = _load(path, key)
                self.hits += 1
                return loaded
            except Exception:
                self.damaged += 1  # recomputed and replaced below
        self.misses += 1
        ref = reference_rows(x, fmt)
        try:
            _store(path, ref, key)
        except OSError:
            pass  # a read-only or full cache directory must not stop an audit
        return ref


    def get_or_compute_ops(self, kind: str, parts: Sequence[np.ndarray | str], fmt: Format,
                           compute: Callable[[], tuple[dict[str, OpReference], int]]
                           ) -> tuple[dict[str, OpReference], int]:
        """Cached named OpReferences (gradients, losses) keyed by ``kind``, the format and ``parts``
        (arrays by dtype, shape and bytes; strings as they are); computed by ``compute`` on a miss."""
        key = self.ops_key(kind, parts, fmt)
        if key in self.memory:
            self.misses += 1
            return self.memory.pop(key)  # type: ignore[return-value]
        if self.directory is None:
            self.misses += 1
            return compute()
        path = self._path(key)
        if path.exists():
            try:
                with _open_entry(path, key) as z:
                    names = [str(v) for v in z["names"]]
                    ops = {name: OpReference(str(z[f"{name}.op"]), z[f"{name}.rounded"], z[f"{name}.k"],
                                             z[f"{name}.hi"], z[f"{name}.lo"], z[f"{name}.undefined"])
                           for name in names}
                    uncertified = int(z["uncertified"])
                self.hits += 1
                return ops, uncertified
            except Exception:
                self.damaged += 1
        self.misses += 1
        ops, uncertified = compute()
        data: dict[str, np.ndarray] = {"key": np.array(key), "names": np.array(list(ops)),
                                       "uncertified": np.array(uncertified)}
        for name, r in ops.items():
            data[f"{name}.op"] = np.array(r.op)
            for field in ("rounded", "k", "hi", "lo", "undefined"):
                data[f"{name}.{field}"] = getattr(r, field)
        try:
            write_npz(path, data)
        except OSError:
            pass
        return ops, uncertified


CACHE_COMPRESSLEVEL = 1
"""zlib level of the cache's .npz files. References compress 2.6x overall (10-600x on constant
rows and masks); level 1 writes them 3x faster than numpy's default (6) for files 8% larger, and
writing was a third of a cold audit's reference time."""


_UNFINISHED_WRITES: set[str] = set()
"""Temporary files write_npz has created and not yet renamed or removed: what a stopped prefetch
worker deletes before it exits (softaudit.runner.prefetch)."""


def write_npz(path: Path, data: dict[str, np.ndarray]) -> None:
    """Write compressed arrays as an .npz (np.load reads it) atomically: a temporary file
    renamed into place. The temporary file is registered before it exists, so a worker stopped
    at any instant can remove it (remove_unfinished_writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    _UNFINISHED_WRITES.add(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED,
                                                         compresslevel=CACHE_COMPRESSLEVEL) as zf:
            for name, value in data.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _UNFINISHED_WRITES.discard(tmp)


def remove_unfinished_writes() -> None:
    """Delete the temporary files of writes still in progress in this process (called from a
    signal handler that then exits without unwinding through zipfile, which cannot be
    interrupted half-way and closed cleanly)."""
    for tmp in list(_UNFINISHED_WRITES):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


class CacheEntryMismatch(ValueError):
    """A cache file holds another key's entry (swapped, copied or altered)."""


@contextlib.contextmanager
def _open_entry(path: Path, key: str):
    """The .npz at ``path``, only when it holds the entry of ``key``."""
    with np.load(path) as z:
        if "key" not in z.files or str(z["key"]) != key:
            raise CacheEntryMismatch(f"{path} does not hold the entry of its key")
        yield z


def _store(path: Path, ref: ReferenceSet, key: str) -> None:
    data: dict[str, np.ndarray] = {
        "key": np.array(key), "amax": ref.stats.amax, "log_s": ref.stats.log_s,
        "n": np.array(ref.stats.n), "uncertified": np.array(ref.uncertified),
    }
    for op, r in ref.ops.items():
        for field in ("rounded", "k", "hi", "lo", "undefined"):
            data[f"{op}.{field}"] = getattr(r, field)
    write_npz(path, data)


def _load(path: Path, key: str) -> ReferenceSet:
    with _open_entry(path, key) as z:
        ops = {
            op: OpReference(op, z[f"{op}.rounded"], z[f"{op}.k"], z[f"{op}.hi"], z[f"{op}.lo"], z[f"{op}.undefined"])
            for op in ROW_OPS
        }
        stats = RowStats(z["amax"], z["log_s"], int(z["n"]))
        return ReferenceSet(ops, stats, int(z["uncertified"]))
