"""``nla quickstart``: the whole method in one command, on a CPU, from packaged model and corpus.

Stages, each the code path its own command runs: the activation cache and teacher summaries
(``nla cache``), SFT of both models and GRPO (``nla fit`` with the two configs, through the same
LightningCLI), a held-out comparison of the stages, and explanations of a few example texts
(``nla explain``). The held-out comparison uses one fixed set of rows for every predictor: the
training split's mean (the predictor FVE 0 stands for), the final pair with its vectors shuffled
against the texts, the SFT pair and the pair at the END of GRPO (the best-by-held-out pair would
be chosen on these same rows). Intervals resample whole documents.

A second run reuses the cache and summaries (the cache's fingerprint decides) and trains again from
scratch: the previous run's logs and checkpoints under the same directories are replaced.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from lightning.pytorch import seed_everything

from nla.data.splits import HELDOUT_PARTS
from nla.core.errors import ConfigError
from nla.commands.preflight import preflight_fit
from nla.commands.quickstart_report import Comparison, comparison_rows, print_report

GRPO_PAIRS = {"final": "export_dir", "best": "best_export_dir"}
"""``grpo_pair`` values: the GRPO config key of the export each one names."""

EXAMPLES = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "She walked to the window and looked out at the rain, wondering whether he would",
)


def _cli(config: str, overrides: list[str]):
    from nla.commands.fit import NLALightningCLI

    if not Path(config).is_file():
        raise ConfigError("sft_config/grpo_config", f"{config} does not exist; pass the path of a fit config")
    # LightningCLI warns when sys.argv holds other arguments than the ones it is handed: here it holds
    # the quickstart's own, which it must not read.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return NLALightningCLI(args=["--config", config, *overrides], run=False)
    finally:
        sys.argv = argv


def _stage(title: str) -> None:
    print(f"\n== quickstart: {title}", flush=True)


def _fresh_logs(trainer) -> None:
    """Remove the previous run's version directory, so curves and checkpoints are this run's alone."""
    directory = Path(trainer.logger.log_dir) if trainer.logger is not None else None
    if directory is not None and directory.exists():
        print(f"quickstart: replacing the previous run's logs and checkpoints in {directory}")
        shutil.rmtree(directory)


def quickstart(
    sft_config: str = "configs/quickstart/sft.yaml",
    grpo_config: str = "configs/quickstart/grpo.yaml",
    overrides: list[str] | None = None,
    eval_rows: int = 192,
    resamples: int = 2000,
    examples: list[str] | None = None,
    seed: int = 0,
    skip_training: bool = False,
    training_seed: int = 0,
    grpo_overrides: list[str] | None = None,
    reuse_sft: bool = False,
    eval_split: str = "test",
    grpo_pair: str = "final",
) -> Comparison:
    """Run the whole NLA pipeline on CPU: cache -> teacher summaries -> SFT -> GRPO -> held-out
    comparison -> example explanations, then print the FVE table, wall time per stage and where the
    logs and exports are.

    Args:
        sft_config: Fit config of the SFT stage (its ``model.init_args.export_dir`` is the SFT pair).
        grpo_config: Fit config of the GRPO stage; its ``sft_export`` must be the SFT stage's export
            and the export ``grpo_pair`` names set (the pair the table compares).
        overrides: Dotted overrides applied to BOTH fit configs, e.g. ``["--data.source.cache.directory=X"]``.
        eval_rows: Held-out rows of the comparison: the first ones of the held-out split's ``test`` half
            (``nla.data.splits.HELDOUT_PARTS``), which no training choice saw, in evaluation order.
        resamples: Bootstrap draws (over documents) for the 95% intervals.
        examples: Texts to explain at the end (their last 3 tokens are printed; every token of the first
            goes into an explorer page beside the GRPO export); default two sentences of our own; an
            empty list skips the stage.
        seed: Seed of the bootstrap and of the shuffled control.
        skip_training: Compare and explain the exports a previous run left (e.g. with more
            ``eval_rows``) instead of training again.
        training_seed: Seed of both trainings: ``seed_everything``, the data order (``data.seed``)
            and GRPO's rollout sampling (``model.seed``); the cache and its splits do not depend on it.
        grpo_overrides: Dotted overrides of the GRPO config only (``--model.init_args.kl_coef=0.05``).
        reuse_sft: Train only GRPO, from the SFT export a previous run left (ablations of the GRPO stage).
        eval_split: The held-out half the table reads: ``test`` (what a run reports) or ``validation``
            (what settings are chosen on, e.g. between ablations).
        grpo_pair: The GRPO pair the table compares: ``final`` (the pair at the last step,
            ``export_dir``) or ``best`` (the pair of the step with the best ``val/fve`` on the
            validation half, ``best_export_dir``; the test half stays unseen by that choice).
    """
    if eval_split not in HELDOUT_PARTS:
        raise ConfigError("eval_split", f"must be one of {', '.join(HELDOUT_PARTS)}, got {eval_split!r}")
    seeds = [f"--seed_everything={training_seed}", f"--data.init_args.seed={training_seed}"]
    overrides = [*seeds, *(overrides or [])]
    if grpo_pair not in GRPO_PAIRS:
        raise ConfigError("grpo_pair", f"must be one of {', '.join(GRPO_PAIRS)}, got {grpo_pair!r}")
    if eval_rows < 2:
        raise ConfigError("eval_rows", f"is {eval_rows}; the comparison needs at least 2 held-out rows")
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    # Both configs are read and checked before anything runs, so a mistake in the second costs no training.
    sft = _cli(sft_config, overrides)
    grpo = _cli(grpo_config, [*overrides, f"--model.init_args.seed={training_seed}", *(grpo_overrides or [])])
    sft_export, hp = sft.model.hparams.get("export_dir"), grpo.model.hparams
    if not sft_export:
        raise ConfigError("model.init_args.export_dir", f"is unset in {sft_config}; the quickstart needs the SFT export")
    if hp.get("sft_export") is None or Path(hp["sft_export"]).resolve() != Path(sft_export).resolve():
        raise ConfigError("model.init_args.sft_export", f"in {grpo_config} must be the SFT stage's export {sft_export}")
    compared_key = GRPO_PAIRS[grpo_pair]
    if not hp.get(compared_key):
        raise ConfigError(f"model.init_args.{compared_key}", f"is unset in {grpo_config}; the table compares that pair "
                          f"(grpo_pair: {grpo_pair})")
    compared = hp[compared_key]
    # Each stage's pre-flight before any of them runs; the GRPO stage's sft_export is the SFT stage's to write.
    preflight_fit(sft.trainer, sft.model, sft.datamodule)
    preflight_fit(grpo.trainer, grpo.model, grpo.datamodule, will_exist=(str(hp["sft_export"]),))

    reused = sft.datamodule.cache_ready()
    _stage("activation cache and teacher summaries" + (" (reusing the cache)" if reused else ""))
    clock = time.perf_counter()
    sft.datamodule.prepare_data()
    seconds["cache + summaries" + (" (reused)" if reused else "")] = time.perf_counter() - clock

    kept = [sft_export, compared] if skip_training else [sft_export] if reuse_sft else []
    for export in kept:
        if not (Path(export) / "av").is_dir() or not (Path(export) / "ar").is_dir():
            key = "skip_training" if skip_training else "reuse_sft"
            raise ConfigError(key, f"{export} holds no av/ and ar/; run the quickstart once without it")
    if skip_training:
        grpo.datamodule.setup("validate")
    else:
        stages = (("SFT", sft, sft_config), ("GRPO", grpo, grpo_config))
        for name, cli, config in stages[1:] if reuse_sft else stages:
            _stage(f"{name} ({config})")
            _fresh_logs(cli.trainer)
            # As `nla fit` would: the config's seed right before its fit.
            seed_everything(cli.config["seed_everything"], workers=True)
            clock = time.perf_counter()
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            seconds[name] = time.perf_counter() - clock

    _stage("held-out comparison")
    clock = time.perf_counter()
    rollout = grpo.model.rollout
    rows = comparison_rows(grpo.datamodule, sft_export, compared, rollout.max_new_tokens,
                           rollout.micro_batch_size, eval_rows, resamples, seed, eval_split)
    seconds["held-out evaluation"] = time.perf_counter() - clock

    examples = list(EXAMPLES) if examples is None else examples
    page = Path(compared).parent / "explorer.html"
    explained = []
    if examples:
        clock = time.perf_counter()
        _stage("example explanations")
        explained = _explain_examples(compared, examples, rollout.max_new_tokens, page)
        seconds["examples"] = time.perf_counter() - clock
    seconds["total"] = time.perf_counter() - started
    logs = sorted({str(Path(cli.trainer.logger.save_dir)) for cli in (sft, grpo) if cli.trainer.logger is not None})
    paths = {"TensorBoard logs": ", ".join(logs), "SFT pair": sft_export, "GRPO pair": compared}
    print_report(rows, seconds, explained, {**paths, **({"explorer page": str(page)} if examples else {})})
    return rows


def _explain_examples(export: str, texts: list[str], max_new_tokens: int, page: Path) -> list[str]:
    """Tables of the last three tokens of each text; every token of the first text also goes into the
    explorer page."""
    from nla.commands.explain.command import explain_text
    from nla.commands.explain.page import write_page
    from nla.commands.explain.table import render_table

    av, ar = str(Path(export) / "av"), str(Path(export) / "ar")
    tables = []
    for number, text in enumerate(texts):
        rows, variance, target = explain_text(av, ar, text, positions=None if number == 0 else [-3, -2, -1],
                                              max_new_tokens=max_new_tokens)
        if number == 0:
            write_page(str(page), av, ar, text, rows, variance, target)
        tables.append(f"{text}\n{render_table(rows[-3:], variance, target)}")
    return tables
