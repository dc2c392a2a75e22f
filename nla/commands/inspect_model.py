"""``nla inspect``: what nla sees in a model before you train on it."""

from __future__ import annotations

from nla.core.errors import field_scope
from nla.models import adapters
from nla.models.loading import ModelArgs, load_config


def inspect_model(model: ModelArgs) -> None:
    """Show a model's family, depth, width, embedding scale and the default layer K."""
    with field_scope("model"):
        config = load_config(model)
    family = adapters.family_of(config)
    rows = {
        "model": model.name_or_path,
        "family": family.name,
        "layers": adapters.num_layers(config),
        "d_model": adapters.hidden_size(config),
        "embedding scale": f"{adapters.embedding_scale(config):.4g}",
        "default layer K": adapters.default_layer(config),
    }
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")
