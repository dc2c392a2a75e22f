"""The training layer: the two LightningModules (``sft.SFTModule``, ``grpo.GRPOModule``) and what only
training uses: the settings both share (``settings``), what a run tells the pre-flight (``fit_plan``),
optimizers and precision, the non-finite guard, MFU, the FSDP2 strategy and the sample tables.
"""
