import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from nla.commands.cli import SUBCOMMANDS, TRAINER_SUBCOMMANDS, main
from tests.fixtures.paths import ROOT



def run_nla(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "nla", *args], cwd=cwd, env=env, capture_output=True, text=True)


def exit_code(capsys, argv):
    with pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code, capsys.readouterr()


def boring_config(tmp_path: Path, **trainer) -> Path:
    config = {
        "model": {"class_path": "tests.fixtures.boring.LinearRegression", "init_args": {"lr": 0.05}},
        "data": {"class_path": "tests.fixtures.boring.RandomRegression"},
        "trainer": {
            "max_steps": 3,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path),
            **trainer,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_overview_lists_every_subcommand(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for name in [*TRAINER_SUBCOMMANDS, *SUBCOMMANDS]:
        assert f"  {name} " in out


@pytest.mark.parametrize("name", [*TRAINER_SUBCOMMANDS, *SUBCOMMANDS])
def test_every_subcommand_has_help(name, capsys):
    code, out = exit_code(capsys, [name, "--help"])
    assert code == 0
    assert "--config" in out.out or "-c CONFIG" in out.out


def test_unknown_subcommand_is_exit_2(capsys):
    code, out = exit_code(capsys, ["trian"])
    assert code == 2
    assert out.err.strip() == (
        "nla: error: unknown subcommand 'trian'; choose from " + ", ".join([*TRAINER_SUBCOMMANDS, *SUBCOMMANDS])
    )


def test_bad_config_key_is_one_line_naming_the_key(tmp_path, capsys):
    path = boring_config(tmp_path, max_stepz=4)
    code, out = exit_code(capsys, ["fit", "--config", str(path)])
    assert code == 2
    assert out.err.count("\n") == 1 and "trainer.max_stepz" in out.err


def test_bad_config_value_is_one_line_naming_the_key(tmp_path, capsys):
    code, out = exit_code(capsys, ["fit", "--config", str(boring_config(tmp_path)), "--trainer.max_steps", "many"])
    assert code == 2
    assert out.err.count("\n") == 1 and "trainer.max_steps" in out.err and "many" in out.err


def test_abbreviated_option_is_refused(capsys, tiny_model_dir):
    code, out = exit_code(capsys, ["inspect", "--model.name", str(tiny_model_dir("llama"))])
    assert code == 2 and out.err.splitlines()[-1] == "nla: error: model.name: unknown key; did you mean `name_or_path`?"


def test_fit_trains_saves_config_and_resumes_in_the_same_directory(tmp_path):
    # Not the config.yaml the run saves in the same directory (it records the resumed run's ckpt_path).
    path = boring_config(tmp_path).rename(tmp_path / "boring.yaml")
    result = run_nla("fit", "--config", str(path))
    assert result.returncode == 0, result.stderr
    (first,) = tmp_path.glob("**/*.ckpt")
    result = run_nla("fit", "--config", str(path), "--ckpt_path", str(first))
    assert result.returncode == 0, result.stderr
    # A fresh start would write over the run's checkpoints.
    again = run_nla("fit", "--config", str(path))
    assert again.returncode == 2
    assert again.stderr.splitlines()[-1].startswith(f"nla: error: ckpt_path: is not set but {first.parent} holds ")
    checkpoints = sorted(tmp_path.glob("**/*.ckpt"))
    assert checkpoints, "fit wrote no checkpoint"
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    saved = yaml.safe_load(next(tmp_path.glob("**/config.yaml")).read_text())
    assert saved["model"]["init_args"]["lr"] == 0.05 and saved["seed_everything"] == 0


def test_inspect_reports_the_model(tiny_model_dir, capsys):
    main(["inspect", "--model.name_or_path", str(tiny_model_dir("gemma3_text"))])
    out = capsys.readouterr().out
    assert "family           gemma3" in out
    assert "layers           4" in out and "d_model          32" in out
    assert "embedding scale  5.657" in out


def test_missing_model_is_one_line_exit_2():
    result = run_nla("inspect", "--model.name_or_path", "./no/such/dir")
    assert result.returncode == 2
    assert result.stderr == "nla: error: model.name_or_path: model directory './no/such/dir' does not exist; check the path\n"


def test_list_options_can_be_repeated_or_given_whole():
    from nla.commands.cli import list_options, repeatable_lists

    def command(replace: list[str] | None = None, positions: list[int] = (), text: str = "", n: int | None = None):
        """A stand-in with list and plain options."""

    names = list_options(command)
    assert names == {"replace", "positions"}
    argv = ["--replace", "a=b", "--replace", "c=d", "--positions", "[1, 2]", "--positions", "-1", "--text", "t"]
    assert repeatable_lists(argv, names) == ["--replace+", "a=b", "--replace+", "c=d", "--positions", "[1, 2]",
                                             "--positions+", "-1", "--text", "t"]
