"""``nla export``: a fit checkpoint becomes the same AV/AR pair the end-of-fit export wrote."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from nla.cli import main
from nla.export import load_pair
from nla.meta import read_meta
from tests.modules.test_sft import STEPS, fit, shared  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(shared, tmp_path_factory):  # noqa: F811
    directory = tmp_path_factory.mktemp("export-run")
    fit(shared, directory, "--trainer.max_steps", str(STEPS))
    return directory


def test_export_from_checkpoint_matches_the_modules_own_export(run, tmp_path):
    version = run / "sft" / "version_0"
    main(["export", "--fit_config", str(version / "config.yaml"),
          "--ckpt_path", str(version / "checkpoints" / "last.ckpt"), "--output", str(tmp_path)])
    verbalizer, reconstructor, prompts = load_pair(tmp_path / "av", tmp_path / "ar", dtype="float32")
    _, reference, _ = load_pair(run / "export" / "av", run / "export" / "ar", dtype="float32")
    texts = ["The sailor counts the waves.", "A teacher writes numbers on the board before the storm."]
    ids = [prompts.ar_ids(text) for text in texts]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    with torch.no_grad():
        assert torch.equal(reconstructor(input_ids, mask), reference(input_ids, mask))
    exported, fitted = (load_file(str(d / "av" / "model.safetensors")) for d in (tmp_path, run / "export"))
    assert exported.keys() == fitted.keys() and all(torch.equal(exported[k], fitted[k]) for k in exported)
    assert verbalizer.injection_scale == read_meta(run / "export" / "av").extraction.injection_scale
    assert read_meta(tmp_path / "ar").training["steps"] == STEPS


def test_export_names_the_bad_field(run, tmp_path, capsys):
    version = run / "sft" / "version_0"
    with pytest.raises(SystemExit) as done:
        main(["export", "--fit_config", str(version / "config.yaml"),
              "--ckpt_path", str(tmp_path / "missing.ckpt"), "--output", str(tmp_path)])
    assert done.value.code == 2 and "ckpt_path:" in capsys.readouterr().err
