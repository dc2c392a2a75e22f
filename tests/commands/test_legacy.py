"""Names from before 0.1.0, renamed on the way in: config mappings and command-line overrides."""

from __future__ import annotations

import yaml

from nla.commands.legacy import GRPO, SFT, migrate, migrate_argv, migrated_args


def test_an_old_grpo_config_moves_its_keys_and_swaps_its_two_exports():
    old = {"model": {"class_path": GRPO, "init_args": {
        "av_lr": 1e-5, "ar_lr": 5e-5, "samples_per_prompt": 4, "kl_estimator": "k1", "samples_every_n_steps": 6,
        "export_dir": "runs/best", "final_export_dir": "runs/final", "injection_scale": None, "seed": 3}},
        "data": {"class_path": "nla.data.datamodule.NLADataModule", "init_args": {
            "model": {"name_or_path": "m"}, "cache": {"layer": 2}, "teacher": None, "batch_size": 4}}}
    new, notes = migrate(old)
    assert new["model"]["init_args"] == {
        "training": {"verbalizer_lr": 1e-5, "reconstructor_lr": 5e-5},
        "rollout": {"samples_per_prompt": 4, "kl_estimator": "k1"}, "sample_every_n_steps": 6,
        "best_export_dir": "runs/best", "export_dir": "runs/final", "injection_scale": "auto", "seed": 3}
    # teacher: null meant the default teacher; the data source has its own defaults.
    assert new["data"]["init_args"] == {"source": {"target": {"name_or_path": "m"}, "cache": {"layer": 2}},
                                        "batch_size": 4}
    assert "model.init_args.av_lr -> model.init_args.training.verbalizer_lr" in notes
    assert "model.init_args.export_dir -> model.init_args.best_export_dir" in notes
    assert "data.init_args.model -> data.init_args.source.target" in notes
    assert old["model"]["init_args"]["av_lr"] == 1e-5, "the given mapping is left as it was"


def test_todays_configs_are_left_as_they_are():
    today = {"model": {"class_path": GRPO, "init_args": {"export_dir": "runs/final", "sft_export": "runs/sft"}},
             "data": {"class_path": "nla.data.datamodule.NLADataModule", "init_args": {"source": "data.yaml"}}}
    assert migrate(today) == (today, [])
    mixed = {"model": {"class_path": SFT, "init_args": {"training": {"verbalizer_lr": 1e-4}, "export_dir": "x"}}}
    assert migrate(mixed) == (mixed, [])


def test_an_old_cache_config_moves_under_source():
    new, notes = migrate({"model": {"name_or_path": "m"}, "corpus": {"path": "austen"}, "cache": {"layer": 3}})
    assert new == {"source": {"target": {"name_or_path": "m"}, "corpus": {"path": "austen"}, "cache": {"layer": 3}}}
    assert notes == ["model -> source.target", "corpus -> source.corpus", "cache -> source.cache"]


def test_old_overrides_are_renamed_for_the_class_the_config_names():
    argv = ["fit", "--model.init_args.kl_coef", "0.05", "--model.export_dir=x", "--data.init_args.cache.layer", "2",
            "--data.init_args.batch_size", "4", "--trainer.max_steps", "3"]
    new, notes = migrate_argv(argv, {"": "fit", "model": GRPO, "data": "nla.data.datamodule.NLADataModule"})
    assert new == ["fit", "--model.init_args.rollout.kl_coef", "0.05", "--model.best_export_dir=x",
                   "--data.init_args.source.cache.layer", "2", "--data.init_args.batch_size", "4",
                   "--trainer.max_steps", "3"]
    assert len(notes) == 3
    # export_dir alone is today's key (the end-of-fit pair): nothing old beside it, nothing renamed.
    assert migrate_argv(["--model.init_args.export_dir", "y"], {"": "fit", "model": GRPO}) == (
        ["--model.init_args.export_dir", "y"], [])
    assert migrate_argv(["--model.name_or_path", "m", "--cache.layer", "2"], {"": "cache"})[0] == [
        "--source.target.name_or_path", "m", "--source.cache.layer", "2"]
    assert migrate_argv(["--model.name_or_path", "m"], {"": "import"})[0] == ["--target.name_or_path", "m"]


def test_an_old_config_file_is_handed_on_renamed_with_a_line_saying_so(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"model": {"class_path": SFT, "init_args": {"verbalizer_lr": 0.5}},
                                    "trainer": {"max_steps": 1}}))
    args = migrated_args(["fit", "--config", str(path), "--model.init_args.reconstructor_lr", "0.25"])
    assert args[:2] == ["fit", "--config"] and args[3:] == ["--model.init_args.training.reconstructor_lr", "0.25"]
    assert yaml.safe_load(args[2])["model"]["init_args"] == {"training": {"verbalizer_lr": 0.5}}
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"nla: {path} uses names from before 0.1.0, read until the next release: "
                      "model.init_args.verbalizer_lr -> model.init_args.training.verbalizer_lr")
    today = tmp_path / "today.yaml"
    today.write_text(yaml.safe_dump({"model": {"class_path": SFT, "init_args": {"training": {"verbalizer_lr": 1}}}}))
    assert migrated_args(["fit", "--config", str(today)]) == ["fit", "--config", str(today)]
