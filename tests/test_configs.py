"""Every shipped config parses against the CLI subcommand its file name names."""


import pytest

from nla.commands.cli import main
from tests.fixtures.paths import ROOT

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
SUBCOMMAND_OF_FILE = {"cache": "cache", "sft": "fit", "grpo": "fit"}


def test_configs_are_shipped():
    assert CONFIGS, "configs/ holds no YAML"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses(path, capsys):
    with pytest.raises(SystemExit) as done:
        # configs/examples/ name files by what they show: lora-sft.yaml is an sft config.
        main([SUBCOMMAND_OF_FILE[path.stem.rsplit("-", 1)[-1]], "--config", str(path), "--print_config"])
    assert done.value.code in (0, None), capsys.readouterr().err
    assert "model:" in capsys.readouterr().out
