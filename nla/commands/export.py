"""``nla export``: write the AV/AR pair of a Lightning checkpoint as two HF directories.

The module and DataModule are rebuilt from the run's config (the ``config.yaml`` LightningCLI saved
beside the logs, or the YAML the run was started with, its data block read from the file it names) without training; the DataModule supplies the
tokenizer, marker, prompts and K, so the export matches what was trained. The checkpoint is read with
``weights_only=True``: only tensors and plain containers are unpickled.
"""

from __future__ import annotations

from pathlib import Path

from lightning.fabric.utilities.cloud_io import _load as load_checkpoint
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from nla.commands.cli import one_line
from nla.commands.config_files import read_config
from nla.core.errors import ConfigError, NLAError
from nla.commands.fit import RAISE_ON_ERROR
from nla.models.pair_export import check_export_directory

# Keys of a saved fit config that belong to the fit subcommand, not to the model, data or trainer.
RUN_ONLY_KEYS = ("ckpt_path", "weights_only")


def build_from_config(fit_config: str | Path) -> tuple[LightningModule, LightningDataModule]:
    """The module and DataModule a fit config describes, instantiated but not trained."""
    path = Path(fit_config)
    if not path.is_file():
        raise ConfigError("fit_config", f"'{path}' is not a file; give the run's config.yaml or the fit YAML")
    settings = read_config(path, "fit_config")
    if "model" not in settings or "data" not in settings:
        raise ConfigError("fit_config", f"'{path}' is not a fit config: it needs model and data sections")
    for key in RUN_ONLY_KEYS:
        settings.pop(key, None)
    # The trainer is built (cheaply) but never run; the checkpoint callback must not write anything.
    cli = LightningCLI(
        model_class=LightningModule,
        subclass_mode_model=True,
        datamodule_class=LightningDataModule,
        subclass_mode_data=True,
        parser_kwargs=RAISE_ON_ERROR,
        save_config_callback=None,
        run=False,
        args=settings,
    )
    return cli.model, cli.datamodule


def export(fit_config: str, ckpt_path: str, output: str) -> None:
    """Export the AV/AR pair of a trained checkpoint to OUTPUT/av and OUTPUT/ar.

    Args:
        fit_config: The fit config of the run (its saved ``config.yaml`` or the YAML it was started
            with). Not ``--config``: that option reads this command's own options from a YAML file.
        ckpt_path: The Lightning checkpoint to export (``.../checkpoints/last.ckpt``).
        output: Directory to write ``av/`` and ``ar/`` into: new, empty, or an earlier export (replaced
            as one unit); a folder of other files is refused.
    """
    if not Path(ckpt_path).is_file():
        raise ConfigError("ckpt_path", f"'{ckpt_path}' is not a file")
    check_export_directory(output, "output")
    module, datamodule = build_from_config(fit_config)
    if not hasattr(module, "build") or not hasattr(module, "export"):
        raise ConfigError("fit_config", f"model {type(module).__name__} cannot be exported; use an NLA training module")
    datamodule.prepare_data()
    datamodule.setup("fit")
    module.build(datamodule)
    try:
        checkpoint = load_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise NLAError(f"ckpt_path: '{ckpt_path}' is not a readable Lightning checkpoint ({error})") from None
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except (KeyError, RuntimeError) as error:
        detail = one_line(str(error))[:300]
        raise ConfigError("ckpt_path", f"does not hold the config's models ({detail}); was it written by this run?") from None
    module.on_load_checkpoint(checkpoint)
    written = module.export(output, steps=int(checkpoint.get("global_step", 0)), field="output")
    for role, path in written.items():
        print(f"{role}: {path}")
