"""Model heads: how token ids enter and what comes out (DESIGN 1.3, "heads of models")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from archdsl.ir.spec import Head
from archdsl.runtime.ops import RMSNorm


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "rms":
        return RMSNorm(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


class Embedding(nn.Module):
    def __init__(self, head: Head, d_model: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(head.vocab, d_model)
        nn.init.normal_(self.tokens.weight, std=d_model**-0.5)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"token ids must be int64 or int32, got {ids.dtype}")
        return self.tokens(ids)


class OutputHead(nn.Module):
    """Final norm, then LM logits [B, T, vocab] (tied or not), class logits [B, classes],
    or the hidden states (encoder)."""

    def __init__(self, head: Head, d_model: int, embedding: Embedding) -> None:
        super().__init__()
        self.kind, self.pool = head.kind, head.pool
        self.norm = _norm(head.norm, d_model)
        if head.kind in ("causal_lm", "masked_lm") and not head.tied:
            self.lm_head = nn.Linear(d_model, head.vocab, bias=False)
        if head.kind == "classifier":
            self.classifier = nn.Linear(d_model, head.classes)
        self._embedding = [embedding]  # a list: not a submodule, so weights are not counted twice

    def forward(self, h: Tensor) -> Tensor:
        h = self.norm(h)
        if self.kind in ("causal_lm", "masked_lm"):
            if hasattr(self, "lm_head"):
                return self.lm_head(h)
            return h @ self._embedding[0].tokens.weight.t()
        if self.kind == "classifier":
            pooled = (
                h.mean(1) if self.pool == "mean" else h[:, 0] if self.pool == "first" else h[:, -1]
            )
            return self.classifier(pooled)
        return h
