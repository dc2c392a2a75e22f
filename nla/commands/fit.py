"""The LightningCLI behind ``nla fit|validate|test|predict``.

Configs, overrides and checkpoints saved with the names from before 0.1.0 are renamed on the way in
(``nla.commands.legacy``), with a line saying so.
"""

from __future__ import annotations

import sys

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningCLI

from nla.commands import legacy
from nla.commands.config_errors import lift_config_error, located
from nla.core.errors import ConfigError
from nla.commands.preflight import preflight_fit
from nla.modules.precision import check_precision
from nla.commands.progress_bar import StepProgressBar
from nla.commands.resume import check_fresh_start, check_unchanged_settings, resolve_ckpt_path

# Parser errors must reach nla.commands.cli as exceptions so they print as one line with exit status 2.
RAISE_ON_ERROR = {"exit_on_error": False, "allow_abbrev": False}


class NLALightningCLI(LightningCLI):
    """Any LightningModule / LightningDataModule named by ``class_path`` in the config. With
    ``run=False`` (``args`` then holds no subcommand) it only builds trainer, model and datamodule, for
    callers such as the quickstart that drive the stages themselves."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        if args is None:
            # Renamed in sys.argv itself: data-parallel launchers start each process with this command line.
            sys.argv[1:] = legacy.migrated_args(sys.argv[1:])
        else:
            args = legacy.migrated_args(list(args))
        super().__init__(
            model_class=LightningModule,
            subclass_mode_model=True,
            datamodule_class=LightningDataModule,
            subclass_mode_data=True,
            parser_kwargs={"prog": "nla", **RAISE_ON_ERROR,
                           **{name: RAISE_ON_ERROR for name in LightningCLI.subcommands()}},
            # A rerun into the same log directory must not abort because the config file exists.
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            args=args,
            run=run,
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning would merge the hyperparameters saved in a ``--ckpt_path`` file over the config
        (only for a path, not for ``last``): the config given is what runs, whichever way the checkpoint
        is named, so nothing is merged."""
        return

    def instantiate_classes(self) -> None:
        # A ConfigError raised while jsonargparse builds a nested argument reaches us wrapped in a ValueError.
        try:
            super().instantiate_classes()
        except ConfigError as error:
            # Raised by a settings dataclass nested in another: it names its own key, not its place.
            raise located(error, self.config.get(str(self.subcommand), self.config)) from None
        except ValueError as error:
            lifted = lift_config_error(error, self.config.get(str(self.subcommand), self.config))
            if lifted is None:
                raise
            raise lifted from None

    def fit(self, model: LightningModule, ckpt_path: str | None = None, **kwargs) -> None:
        """``trainer.fit`` after the pre-flight checks, with ``ckpt_path`` resolved by ``nla.commands.resume``
        (``last`` must find a checkpoint; ``last_or_fresh`` may start fresh): a fresh start must not write
        over an earlier run's checkpoints, a resumption must keep the settings the checkpoint fixes."""
        ckpt_path = resolve_ckpt_path(self.trainer, ckpt_path)
        if ckpt_path is None:
            check_fresh_start(self.trainer)
        else:
            parser = self._parser(self.subcommand)
            check_unchanged_settings(ckpt_path, yaml.safe_load(parser.dump(self.config[self.subcommand], skip_none=False)))
        preflight_fit(self.trainer, model, kwargs.get("datamodule"))
        self.trainer.fit(model, ckpt_path=ckpt_path, **kwargs)

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]) -> Trainer:
        # As written: the Trainer would quietly turn 16-mixed into bf16-mixed on CPU.
        check_precision(config.get("precision"))
        # A bar of optimizer steps for step-bounded runs, unless the config picks its own or none.
        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        named = [c for c in [*callbacks, *configured] if isinstance(c, ProgressBar)]
        if config.get("enable_progress_bar", True) is not False and not named:
            callbacks = [*callbacks, StepProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

