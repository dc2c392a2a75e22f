"""The cache side of disks and permissions: a file-size limit while caching (or a file too large for
its file system), an unreadable corpus, an unwritable cache folder and an unreadable shards folder are
each one line naming the path and the fix (exit 2), found before the corpus is read where that is
cheap, with nothing half-written. (A full disk: test_corrupt_cache.py.)"""

from __future__ import annotations

import errno
import os
import resource
import stat
import subprocess
import sys
from contextlib import contextmanager

import pytest

from tests.fixtures.commands import ROOT, copy_cache, run_main, sft_argv

FILE_SIZE_LIMIT = 2048
"""Bytes per file: the first shard's vectors (24 rows of 32 float32 and a header, 3,200 bytes) pass it."""

CACHE_WITH_A_FILE_SIZE_LIMIT = f"""
import resource, sys
from nla.data import cache_writer
from nla.commands.cli import main

write_shard = cache_writer.write_shard


def limited(*args):
    # From the first shard on: by then the corpus is read (datasets writes its own cache files).
    resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    write_shard(*args)


cache_writer.write_shard = limited
main(sys.argv[1:])
"""


def cache_argv(model_dir, corpus, cache) -> list[str]:
    return ["cache", "--source.target.name_or_path", str(model_dir), "--source.corpus.path", str(corpus),
            "--source.corpus.min_position", "8", "--source.corpus.max_length", "64",
            "--source.cache.directory", str(cache), "--source.cache.layer", "1",
            "--source.cache.positions_per_document", "3", "--source.cache.shard_documents", "8"]


@contextmanager
def mode(path, bits: int):
    """``path`` with permissions ``bits`` for the block, restored after (so tmp_path can be removed)."""
    before = stat.S_IMODE(path.stat().st_mode)
    path.chmod(bits)
    try:
        yield path
    finally:
        path.chmod(before)


def test_a_file_size_limit_while_caching_is_one_line(tiny_sft, tmp_path):
    root, model_dir, _ = tiny_sft
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", CACHE_WITH_A_FILE_SIZE_LIMIT,
                           *cache_argv(model_dir, root / "docs.jsonl", cache)],
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    vectors = cache / "shards" / "shard-00000.vectors.npy"
    # Exit 2, not death by SIGXFSZ (-25): the write fails and is told in one line.
    assert (done.returncode, done.stderr.strip().splitlines()[-1]) == (2, (
        f"nla: error: file-size limit reached while writing {vectors}: this process may write {FILE_SIZE_LIMIT} "
        "bytes per file (ulimit -f); raise the limit (ulimit -f unlimited) and rerun"))
    assert sorted(p.name for p in (cache / "shards").iterdir()) == [], "nothing of the shard may remain"


def test_a_file_too_large_for_its_file_system_is_one_line(tiny_sft, tmp_path, capsys, monkeypatch):
    from nla.data import storage

    root, model_dir, _ = tiny_sft
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY, "no limit of the process's own"

    def too_large(stream, array, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(storage.np, "save", too_large)
    cache = tmp_path / "cache"
    code, err = run_main(capsys, cache_argv(model_dir, root / "docs.jsonl", cache))
    vectors = cache / "shards" / "shard-00000.vectors.npy"
    assert (code, err) == (2, f"nla: error: {vectors} is larger than its file system allows; write it to another file "
                              "system")
    assert list((cache / "shards").iterdir()) == []


@pytest.mark.parametrize("command", ["cache", "fit"])
def test_an_unreadable_corpus_is_one_line(tiny_sft, tmp_path, capsys, permissions_apply, command):
    root, model_dir, _ = tiny_sft
    corpus = tmp_path / "docs.jsonl"
    corpus.write_bytes((root / "docs.jsonl").read_bytes())
    cache = tmp_path / "cache"
    argv = (cache_argv(model_dir, corpus, cache) if command == "cache"
            else sft_argv(model_dir, corpus, cache, tmp_path / "run"))
    key = "source" if command == "cache" else "data.source"
    with mode(corpus, 0):
        code, err = run_main(capsys, argv)
    assert (code, err) == (2, f"nla: error: {key}.corpus.path: {corpus} is not readable by this user (permission "
                              f"denied); fix its permissions (chmod u+r {corpus}) and rerun")
    assert not cache.exists()


@pytest.mark.parametrize("command", ["cache", "fit"])
def test_an_unwritable_cache_folder_is_one_line(tiny_sft, tmp_path, capsys, permissions_apply, command):
    root, model_dir, _ = tiny_sft
    parent = tmp_path / "shared"
    parent.mkdir()
    cache = parent / "cache"
    argv = (cache_argv(model_dir, root / "docs.jsonl", cache) if command == "cache"
            else sft_argv(model_dir, root / "docs.jsonl", cache, tmp_path / "run"))
    key = "source.cache" if command == "cache" else "data.source.cache"
    with mode(parent, 0o555):
        code, err = run_main(capsys, argv)
    assert (code, err) == (2, f"nla: error: {key}.directory: cannot write the cache into {cache}: {parent} is not "
                              f"writable by this user (permission denied); fix its permissions (chmod u+wx {parent}) "
                              f"or point {key}.directory elsewhere")
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("command", ["cache", "fit"])
def test_an_unreadable_shards_folder_is_one_line(tiny_sft, tmp_path, capsys, monkeypatch, permissions_apply, command):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    argv = (cache_argv(model_dir, root / "docs.jsonl", cache) if command == "cache"
            else sft_argv(model_dir, root / "docs.jsonl", cache, tmp_path / "run"))
    key = "source.cache" if command == "cache" else "data.source.cache"
    monkeypatch.setattr("nla.data.cache_plan.load_corpus", lambda *args: pytest.fail("the corpus was read"))
    with mode(cache / "shards", 0):
        code, err = run_main(capsys, argv)
    shards = cache / "shards"
    assert (code, err) == (2, f"nla: error: {key}.directory: {shards} is not readable by this user (permission "
                              f"denied); fix its permissions (chmod u+rx {shards}) and rerun")
