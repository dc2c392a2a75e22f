"""``nla export``: a fit checkpoint becomes the same AV/AR pair the end-of-fit export wrote."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from nla.commands.cli import main
from nla.models.pair_loading import load_pair
from nla.models.sidecar import read_sidecar
from tests.fixtures.commands import sft_argv
from tests.fixtures.corpus import write_corpus

STEPS = 20

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("export-run")
    write_corpus(root)
    directory = root / "run"
    main(sft_argv(tiny_model_dir("llama"), root / "docs.jsonl", root / "cache", directory,
                  "--trainer.logger.init_args.version", "0", "--trainer.max_steps", str(STEPS)))
    return directory


def test_export_from_checkpoint_matches_the_modules_own_export(run, tmp_path):
    version = run / "sft" / "version_0"
    main(["export", "--fit_config", str(version / "config.yaml"),
          "--ckpt_path", str(version / "checkpoints" / "last.ckpt"), "--output", str(tmp_path)])
    exported = load_pair(tmp_path / "av", tmp_path / "ar", dtype="float32")
    verbalizer, reconstructor, prompts = exported.verbalizer, exported.reconstructor, exported.prompts
    reference = load_pair(run / "export" / "av", run / "export" / "ar", dtype="float32").reconstructor
    texts = ["The sailor counts the waves.", "A teacher writes numbers on the board before the storm."]
    ids = [prompts.ar_ids(text) for text in texts]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    with torch.no_grad():
        assert torch.equal(reconstructor(input_ids, mask), reference(input_ids, mask))
    exported, fitted = (load_file(str(d / "av" / "model.safetensors")) for d in (tmp_path, run / "export"))
    assert exported.keys() == fitted.keys() and all(torch.equal(exported[k], fitted[k]) for k in exported)
    assert verbalizer.injection_scale == read_sidecar(run / "export" / "av").extraction.injection_scale
    assert read_sidecar(tmp_path / "ar").training["steps"] == STEPS


def test_export_names_the_bad_field(run, tmp_path, capsys):
    version = run / "sft" / "version_0"
    with pytest.raises(SystemExit) as done:
        main(["export", "--fit_config", str(version / "config.yaml"),
              "--ckpt_path", str(tmp_path / "missing.ckpt"), "--output", str(tmp_path)])
    assert done.value.code == 2 and "ckpt_path:" in capsys.readouterr().err
