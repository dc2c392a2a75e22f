"""Every shipped config parses against the CLI subcommand its file name names, with the data block it
names read in place: each family's cache, SFT and GRPO configs resolve to one and the same block."""

import pytest
import yaml

from nla.commands.cli import main
from tests.fixtures.paths import ROOT

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
SUBCOMMAND_OF_FILE = {"cache": "cache", "data": "cache", "sft": "fit", "grpo": "fit"}


def test_configs_are_shipped():
    assert CONFIGS, "configs/ holds no YAML"


def resolved(path, capsys) -> dict:
    """The config as the CLI parses it (``--print_config``), data block included."""
    kind = path.stem.rsplit("-", 1)[-1]  # configs/examples/ name files by what they show: lora-sft.yaml is an sft config
    option = "--source" if kind == "data" else "--config"
    with pytest.raises(SystemExit) as done:
        main([SUBCOMMAND_OF_FILE[kind], option, str(path), "--print_config"])
    printed = capsys.readouterr()
    assert done.value.code in (0, None), printed.err
    config = yaml.safe_load(printed.out)
    return config["data"]["init_args"]["source"] if "data" in config else config["source"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses_with_its_data_block(path, capsys):
    source = resolved(path, capsys)
    assert source["target"]["name_or_path"] and source["corpus"]["path"] and source["cache"]["directory"]


@pytest.mark.parametrize("family", sorted({p.parent.name for p in CONFIGS if p.name == "data.yaml"}))
def test_every_stage_of_a_family_reads_its_one_data_block(family, capsys):
    folder = ROOT / "configs" / family
    blocks = {path.name: resolved(path, capsys) for path in sorted(folder.glob("*.yaml"))}
    assert set(blocks) >= {"data.yaml", "sft.yaml", "grpo.yaml"}
    for name, block in blocks.items():
        assert block == blocks["data.yaml"], name
    # The file is the data block alone: stage settings stay in the stage configs.
    assert set(yaml.safe_load((folder / "data.yaml").read_text())) <= {"target", "corpus", "cache", "splits",
                                                                       "teacher", "prompts"}


@pytest.mark.parametrize("path", [p for p in CONFIGS if "GRPOModule" in p.read_text()],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_shipped_grpo_config_has_a_kl_term_that_pulls_nowhere(path):
    # k1 as a loss on the policy's own samples has zero expected gradient: a coefficient on it is noise
    # that the docs would describe as a KL to the SFT AV. Either a pulling estimator or no term at all.
    from nla.modules.grpo.settings import RolloutArgs

    rollout = yaml.safe_load(path.read_text())["model"]["init_args"].get("rollout") or {}
    coef = rollout.get("kl_coef", RolloutArgs().kl_coef)
    assert coef == 0 or rollout.get("kl_estimator", RolloutArgs().kl_estimator) != "k1"
