"""What a new user types wrong on the command line is one line naming the file or key and the fix, exit 2:
a config file that is empty or holds no mapping, a class path that does not import, a number out of its
range; and a valid ``null`` given on the command line reaches the setting."""

from __future__ import annotations

import pytest

from nla.commands import fit
from nla.core.errors import NLAError
from tests.fixtures.commands import SFT, run_main, sft_argv


@pytest.mark.parametrize("text, problem", [
    ("", "is empty"),
    ("# nothing but a comment\n", "is empty"),
    ("- trainer\n- model\n", "holds a list, not a mapping of keys"),
    ("just words\n", "holds a str, not a mapping of keys"),
])
@pytest.mark.parametrize("command", ["fit", "cache"])
def test_a_config_file_without_settings_is_named(tmp_path, capsys, command, text, problem):
    config = tmp_path / "mine.yaml"
    config.write_text(text)
    code, err = run_main(capsys, [command, "--config", str(config)])
    assert (code, err) == (2, f"nla: error: config: {config} {problem}; write its settings as a YAML mapping "
                              "(key: value lines)")


@pytest.mark.parametrize("key, value, line", [
    ("--model.class_path", "nla.modules.sft.NoSuch",
     "model.class_path: cannot import 'nla.modules.sft.NoSuch' (module 'nla.modules.sft' has no attribute 'NoSuch'); "
     "give the full dotted path of a class, such as nla.modules.sft.SFTModule or nla.modules.grpo.GRPOModule"),
    ("--model.class_path", "collections.OrderedDict",
     "model.class_path: 'collections.OrderedDict' is not a LightningModule; give the full dotted path of a class, "
     "such as nla.modules.sft.SFTModule or nla.modules.grpo.GRPOModule"),
    ("--data.class_path", "nosuch.DataModule",
     "data.class_path: cannot import 'nosuch.DataModule' (No module named 'nosuch'); give the full dotted path of a "
     "class, such as nla.data.datamodule.NLADataModule"),
])
def test_a_class_path_that_does_not_import_is_one_line(tiny_sft, tmp_path, capsys, key, value, line):
    root, model_dir, _ = tiny_sft
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run",
                                          key, value))
    assert (code, err) == (2, f"nla: error: {line}")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("override", [
    ["--data.init_args.source.corpus.max_documents", "null"],
    ["--data.source.corpus.max_documents=null"],
    ["--data.init_args.source.corpus.max_documents", "~"],
])
def test_null_on_the_command_line_reaches_the_setting(tiny_sft, tmp_path, capsys, monkeypatch, override):
    root, model_dir, _ = tiny_sft
    seen = []

    def stop(trainer, module, datamodule, will_exist=()):
        seen.append(datamodule.corpus_args.max_documents)
        raise NLAError("stopped after parsing")

    monkeypatch.setattr(fit, "preflight_fit", stop)
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run",
                                          *override))
    # configs/tiny/data.yaml sets max_documents: 40; the override clears it.
    assert (code, err, seen) == (2, "nla: error: stopped after parsing", [None])


@pytest.mark.parametrize("option, value, line", [
    ("--gpu_memory", "-1", "gpu_memory: must be a positive number of GiB, got -1"),
    ("--gpu_memory", "0", "gpu_memory: must be a positive number of GiB, got 0"),
    ("--mfu", "1.5", "mfu: must be a fraction in (0, 1], got 1.5"),
    ("--sampling_tokens_per_s", "-3", "sampling_tokens_per_s: must be positive, got -3"),
])
def test_plan_refuses_numbers_out_of_range(capsys, option, value, line):
    code, err = run_main(capsys, ["plan", "--config", str(SFT), option, value])
    assert (code, err) == (2, f"nla: error: {line}")
