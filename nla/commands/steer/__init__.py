"""``nla steer``: edit what an explanation says, put its reconstruction back into the target, and see
what the model does differently. ``edits`` is the pure part (the user's edits of an explanation),
``command`` the subcommand; patching itself is ``nla.models.patching``, shared with the causal
splice of ``nla evaluate``."""
