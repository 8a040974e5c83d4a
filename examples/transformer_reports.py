"""What `supermask.convert` does to two transformers at p = 0.9: a text classifier made of nn.Embedding and
nn.TransformerEncoder, and GPT-2 (the 124M architecture of `transformers.GPT2Config()`, random weights, nothing
downloaded). Prints both reports and checks that every weight of two or more dimensions is masked with
floor(p n) pruned, counted off the masks themselves.

    PYTHONPATH=src python examples/transformer_reports.py > examples/transformer_reports.txt
"""

import warnings

import torch
from torch import nn

import supermask

P = 0.9


class TextClassifier(nn.Module):
    """Token and position embeddings, a 2-layer pre-norm transformer encoder, mean pooling, a linear head."""

    def __init__(self, vocab=1000, length=64, d=64, heads=4, layers=2, classes=4):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d, padding_idx=0)
        self.positions = nn.Embedding(length, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        z = self.tokens(x) + self.positions(torch.arange(x.shape[1], device=x.device))
        return self.head(self.norm(self.encoder(z, src_key_padding_mask=x == 0)).mean(1))


def check(model: nn.Module, title: str) -> None:
    """Print the report; fail unless every weight of two or more dimensions is masked with floor(p n) pruned."""
    weights = {n: p.numel() for n, p in model.named_parameters() if p.dim() >= 2}  # a tied tensor is listed once
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a weight supermask cannot mask would warn
        supermask.convert(model, "edge-popup", P, weight_seed=0, score_seed=0)
    report = supermask.report(model)
    masks = supermask.masks(model)
    rows = report.parameters
    for name, n in weights.items():
        mask = masks[name.removesuffix(".weight")]
        pruned = n * 9 // 10  # floor(0.9 n) in integers
        assert rows[name]["status"] == "masked" and rows[name]["kept"] == int(mask.sum()) == n - pruned, name
    assert report.unsupported == [] and len(masks) == len(weights)
    print(f"## {title}\n")
    print(report)
    print(f"\nchecked: all {len(weights)} weights of two or more dimensions masked, each with floor({P} n) pruned "
          f"(counted off supermask.masks); {sum(weights.values()):,} weights, {report.totals()['kept']:,} kept\n")


def main() -> None:
    check(TextClassifier(), "nn.TransformerEncoder text classifier with embeddings")
    from transformers import GPT2Config, GPT2LMHeadModel

    check(GPT2LMHeadModel(GPT2Config()), "GPT-2 (transformers GPT2LMHeadModel, GPT2Config() defaults: 124M)")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
