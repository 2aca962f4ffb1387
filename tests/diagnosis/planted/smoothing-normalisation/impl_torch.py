"""Torch cross-entropy: negative log-likelihood plus a smoothing penalty (planted corpus)."""
import torch
import torch.nn.functional as F


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    w = logits.double()
    logp = F.log_softmax(w, dim=-1)
    cw = None if weight is None else weight.double()
    if target.dim() == 2:
        q = target.double()
        per = -(q * logp).nan_to_num(0.0)
        if cw is not None:
            per = per * cw
        loss = per.sum(-1) + label_smoothing * (-(logp if cw is None else logp * cw)).mean(-1)
        kept = torch.ones_like(loss, dtype=torch.bool)
        denom = torch.tensor(float(loss.numel()), dtype=torch.float64)
    else:
        t = target.long()
        kept = t != ignore_index
        nll = F.nll_loss(logp, t, weight=cw, ignore_index=ignore_index, reduction="none")
        smooth = -(logp if cw is None else logp * cw).mean(-1)
        loss = torch.where(kept, nll + label_smoothing * smooth, torch.zeros_like(nll))
        tw = torch.ones_like(nll) if cw is None else cw[t.clamp(min=0)]
        denom = torch.where(kept, tw, torch.zeros_like(tw)).sum()
    if reduction == "none":
        return loss.to(logits.dtype)
    total = loss.sum()
    return (total if reduction == "sum" else total / denom).to(logits.dtype)
