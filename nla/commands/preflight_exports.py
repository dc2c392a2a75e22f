"""Pre-flight of the exports a fit writes and the one it starts from, before anything loads.

- every export directory (``model.export_dir``, ``model.best_export_dir``) is new, empty or an
  earlier export: a run must not train for hours and then refuse, or worse replace, a folder of
  someone's own files;
- GRPO's ``model.sft_export`` holds one pair (``av/`` and ``ar/`` that agree), trained on the weights
  of the target the data names: a pair of another model would start GRPO from nonsense without a word.
"""

from __future__ import annotations

from pathlib import Path

from nla.core.errors import ConfigError, field_scope
from nla.data.datamodule import SOURCE
from nla.models.fingerprint import check_same_base, model_fingerprint
from nla.models.pair_export import check_export_directory
from nla.models.pair_loading import read_pair_sidecars
from nla.models.sidecar import SIDECAR_FILENAME
from nla.modules.fit_plan import FitPlan


def check_exports(plan: FitPlan, datamodule, will_exist: tuple[str, ...] = ()) -> None:
    """The directories ``plan`` writes may receive an export; the export it starts from (unless an
    earlier stage writes it: ``will_exist``) is a pair of the data's target model."""
    for key, directory in plan.exports.items():
        check_export_directory(Path(directory), key)
    if plan.starts_from is None or str(plan.starts_from[1]) in will_exist:
        return
    key, export = plan.starts_from
    for side in ("av", "ar"):
        if not (Path(export) / side / SIDECAR_FILENAME).is_file():
            raise ConfigError(key, f"{export} holds no {side}/{SIDECAR_FILENAME}; run the SFT stage first (its "
                              "model.export_dir) or fix the path")
    with field_scope(key):
        av, _ = read_pair_sidecars(Path(export) / "av", Path(export) / "ar")
    target = datamodule.target_args
    check_same_base(key, (f"the pair in {export}", av.base_model, av.base_model_fingerprint),
                    (f"{SOURCE}.target", target.name_or_path, model_fingerprint(target)),
                    f"start from an SFT export of {target.name_or_path}, or point {SOURCE}.target at the model "
                    "that export was trained on")
