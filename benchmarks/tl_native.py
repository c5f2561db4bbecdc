"""Build TransformerLens 4.x's own small model (TransformerBridge.boot_native), for the speed comparison.

transformer-lens 4 removed HookedTransformer; its train-from-scratch path is a TL-native model
wrapped in a TransformerBridge. It lives in its own environment (.venv-tl, docs/performance.md)
because it pulls wandb, datasets and pandas that the lab does not need.
"""

import torch


def build_tl_model(tl, vocab: int, n_ctx: int, d_model: int, n_layers: int, n_heads: int):
    from transformer_lens.model_bridge.bridge import TransformerBridge
    import transformer_lens.model_bridge.sources.native  # noqa: F401  (attaches boot_native)

    cfg = dict(d_vocab=vocab, n_ctx=n_ctx, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
               d_head=d_model // n_heads, d_mlp=4 * d_model, act_fn="gelu", normalization_type="LN",
               positional_embedding_type="standard", seed=0)
    bridge = TransformerBridge.boot_native(cfg)

    class Forward(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, tokens):
            return self.inner(tokens)

    return Forward(bridge)
