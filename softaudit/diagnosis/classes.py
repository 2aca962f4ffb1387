"""The catalogue of bug classes the diagnosis can name: one place for ids, explanations and fixes.

Each class has a stable id (used in the JSON and by ``--explain``), a title, a one-paragraph
explanation of the mechanism and a fix with a short code sketch. docs/diagnosis.md documents
the same classes with the evidence that identifies each.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BugClass:
    """One known cause of a softmax-family (or fused linear cross-entropy) failure."""

    id: str
    title: str
    explanation: str
    fix: str
    sketch: str
    is_bug: bool = True


_C = [
    BugClass(
        "no-max-shift", "exp of the raw scores (no max subtraction)",
        "exp(x) is taken before the row maximum is subtracted. Scores past exp's overflow threshold "
        "(11.09 in float16, 88.72 in float32, 709.78 in float64) give inf and then inf/inf = NaN; large "
        "negative offsets underflow every term to 0 and give 0/0. The failure starts exactly at exp's "
        "limit of the working format.",
        "Subtract the row maximum before exp: every exponent is then <= 0 and the largest term is exactly 1.",
        "m = x.max(-1, keepdims=True)\ne = exp(x - m)\np = e / e.sum(-1, keepdims=True)"),
    BugClass(
        "fixed-shift", "a constant shift instead of the row maximum",
        "A constant C is subtracted before exp (exp(x - C)) instead of the row's own maximum. It only "
        "postpones the overflow to C + exp's limit and brings underflow forward to C - exp's limit; "
        "between the two it also loses accuracy, since x - C is rounded at the magnitude of C.",
        "Subtract the row maximum, not a constant.",
        "m = x.max(-1, keepdims=True)      # not a constant\ne = exp(x - m)"),
    BugClass(
        "absorbed-log-sum", "log s added to a large max before the small difference is taken",
        "log_softmax is computed as x - (max + log s), or the loss as logsumexp(x) - x_t. The sum "
        "max + log s is rounded at the magnitude of the max, so on large offsets log s is absorbed "
        "(at 1e6 in float32 the rounding step is 0.06) and the small difference x - lse inherits an "
        "error proportional to the offset.",
        "Take the difference first: (x - max) - log s; for the loss, (max - x_t) + log s.",
        "z = x - x.max(-1, keepdims=True)\nlogp = z - log(exp(z).sum(-1, keepdims=True))\nloss = -logp[rows, t]"),
    BugClass(
        "log-of-softmax", "log_softmax as log(softmax(x))",
        "The probabilities are computed first and their log taken afterwards. A probability that "
        "underflows (a score ~104 below the max in float32, ~17 in float16) becomes 0 and its log -inf "
        "(the loss +inf), although log_softmax there is an ordinary finite number; subnormal "
        "probabilities lose their relative accuracy first.",
        "Compute log_softmax directly in the log domain.",
        "z = x - x.max(-1, keepdims=True)\nlogp = z - log(exp(z).sum(-1, keepdims=True))"),
    BugClass(
        "online-rescale-from-neginf", "online softmax rescaled from an unguarded -inf running max",
        "A tiled (online) softmax keeps a running max m and rescales its running sum by exp(m - m_new). "
        "While every tile seen so far is fully masked, m and m_new are both -inf and exp(-inf - (-inf)) "
        "is NaN: a row whose padding covers a whole tile comes out all NaN although it is well defined.",
        "Guard the rescale: shift by 0 while the max is not finite, and never rescale an empty sum.",
        "shift = where(isfinite(m_new), m_new, 0)\nscale = where(s > 0, exp(m - shift), 0)\ns = s * scale + exp(tile - shift).sum()"),
    BugClass(
        "unguarded-infinite-max", "an infinite row max used as the shift",
        "logsumexp subtracts the row max without replacing an infinite one: on a fully masked row "
        "(-inf) or a row holding +inf, x - max is NaN, so the result is NaN where the exact answer is "
        "-inf or +inf.",
        "Replace an infinite max by 0 before shifting (scipy.special.logsumexp does).",
        "m = x.max(-1, keepdims=True)\nm = where(isinf(m), 0, m)\nlse = m + log(exp(x - m).sum(-1, keepdims=True))"),
    BugClass(
        "low-precision-accumulation", "the sum accumulated in a 16-bit format",
        "The exponentials are summed in float16 or bfloat16. Once the running sum is large its spacing "
        "exceeds the terms: a bfloat16 sum of ones stops growing at 256, a float16 one at 2048, so long "
        "rows get a denominator that is far too small.",
        "Accumulate in float32 (or wider) whatever the storage format; round once at the end.",
        "e = exp((x - m).astype(float32))\ns = e.sum(-1, dtype=float32)"),
    BugClass(
        "sequential-summation", "a sequential sum in the working format",
        "The denominator is summed left to right (or a few lanes at a time) in the working format. The "
        "rounding error grows linearly with the row length n, against the log2(n) of a pairwise or "
        "blocked sum, so wide rows (vocabularies, long near-uniform rows) fail while short ones pass.",
        "Sum pairwise or in blocks (numpy's sum, torch.sum), or accumulate in a wider format.",
        "s = e.sum(-1)                      # pairwise\n# or: s = e.astype(float64).sum(-1).astype(e.dtype)"),
    BugClass(
        "denominator-overflow-16bit", "the softmax denominator overflows float16",
        "The sum of exponentials is stored in float16. With the max subtracted each term is at most 1, "
        "so the sum is at most n; past n = 65504 it overflows to inf: logsumexp becomes +inf, "
        "log_softmax -inf and softmax 0, although every exact value fits float16.",
        "Keep the sum (and log s) in float32, round only the final output.",
        "s = exp(x.float() - m).sum(-1)     # float32\nout = (x.float() - m - log(s)).half()"),
    BugClass(
        "exp-clamp", "the exponent clamped to a safe range",
        "The argument of exp is clamped (exp(max(x - m, -C))). Every probability of a score more than C "
        "below the max comes out as exp(-C) instead of its true, far smaller value: the small "
        "probabilities saturate at a constant.",
        "Do not clamp: after the max shift exp cannot overflow, and underflow to 0 is the correct rounding.",
        "e = exp(x - m)        # no clamp needed"),
    BugClass(
        "eps-in-log", "an epsilon added inside the log",
        "log(p + eps) or log(max(p, eps)) is used to avoid log(0). It biases every log-probability "
        "upwards (by eps/p: visible everywhere in float64) and saturates at log(eps) for scores far "
        "below the max, where the exact value is an ordinary finite number.",
        "Compute log_softmax in the log domain; there is no log(0) to guard.",
        "z = x - m\nlogp = z - log(exp(z).sum(-1, keepdims=True))   # no eps"),
    BugClass(
        "division-free-on-offsets", "softmax as exp(x - logsumexp(x))",
        "The division-free form exp(x - lse) subtracts a logsumexp rounded at the magnitude of the "
        "scores. On large offsets the rounding of lse (0.06 at 1e6 in float32) becomes a relative "
        "error of every probability, growing with the offset.",
        "Divide by the sum of the shifted exponentials instead: e = exp(x - m); p = e / e.sum().",
        "e = exp(x - x.max(-1, keepdims=True))\np = e / e.sum(-1, keepdims=True)"),
    BugClass(
        "nan-swallowed", "NaN swallowed by the max or the sum",
        "A NaN score is dropped (nanmax, nansum, NaN replaced by -inf or a mask) instead of propagating. "
        "The row's exact answer is NaN; the candidate returns finite probabilities that hide the "
        "corrupt input.",
        "Use the propagating reductions (max, sum); if NaN must be masked, do it explicitly upstream.",
        "m = x.max(-1, keepdims=True)     # propagates NaN\ns = exp(x - m).sum(-1, keepdims=True)"),
    BugClass(
        "zero-times-neginf", "0 * (-inf) in a soft-target loss",
        "With probability targets the loss is sum_c q_c * (-log p_c). A target of exactly 0 against a "
        "masked (-inf) logit gives 0 * inf = NaN, although the term's limit is 0.",
        "Skip the terms whose coefficient is 0.",
        "terms = where(q != 0, q * -logp, 0)\nloss = terms.sum(-1)"),
    BugClass(
        "smoothing-normalisation", "label smoothing normalised differently from torch",
        "The smoothed target is not (1 - eps) * onehot + eps / C over all C classes: eps is spread over "
        "the other C - 1 classes, or the (1 - eps) factor is missing. The loss differs from the closed "
        "form on every smoothed row.",
        "Use q' = (1 - eps) * q + eps / C over every class (weights multiply q').",
        "coef = (1 - eps) * onehot + eps / C\nloss = (coef * -logp).sum(-1)"),
    BugClass(
        "smoothing-sum-overflow", "label smoothing's sum over classes overflows",
        "The smoothing term eps / C * sum_c (-log p_c) is formed as a plain sum over every class. A "
        "logit masked with a large finite constant (finfo.min, -1e30) has -log p_c near the format's "
        "largest value, and the sum of a few of them overflows to inf; over a vocabulary of tens of "
        "thousands of classes even ordinary terms (-log p_c ~ 10 each) add up past float16's 65504. "
        "The loss is inf (or NaN) on rows whose exact loss is finite. Smoothing itself is right: the "
        "same rows without masking (or over fewer classes) pass.",
        "Form the smoothing term from the logits, without summing huge -log p terms: sum_c (-log p_c) = "
        "C * lse - sum_c x_c, with the sum of the logits taken in a wider format (or scaled by 1/C "
        "before it is summed).",
        "smooth = (lse - x.mean(-1))          # = mean_c(-log p_c), no huge partial sums\n"
        "loss = (1 - eps) * (lse - x_t) + eps * smooth"),
    BugClass(
        "ignored-rows-in-mean", "the mean counts ignored rows (or ignores the weights)",
        "reduction='mean' divides by the number of rows instead of the summed weights of the rows that "
        "are not ignored: padding rows (ignore_index) dilute the loss, and class weights are not "
        "normalised.",
        "Divide by the sum of the target weights over the kept rows.",
        "kept = t != ignore_index\nloss = (loss * kept).sum() / w[t][kept].sum()"),
    BugClass(
        "gradient-rounded-early", "the gradient computed from probabilities rounded to a lower format",
        "The backward pass rounds the probabilities (or an intermediate) to bfloat16/float16 before the "
        "subtraction p - onehot or y * (dy - c). The gradient's error is then about half an ulp of the "
        "lower format, far outside the envelope of the input's own format.",
        "Keep the backward's intermediates in the working precision of the forward; round once at the end.",
        "p = exp(logp)                       # float32, not .to(bfloat16)\ngrad = g * (p - onehot)"),
    BugClass(
        "downcast-working-precision", "float64 computed in float32",
        "The float64 path converts to float32, computes, and converts back. Results are correct to "
        "float32's precision (about 1e-7) and so off by ~1e9 float64 ulps, on every case.",
        "Compute in the input's precision (or wider) for float64 input.",
        "w = x if x.dtype == float64 else x.astype(float32)"),
    BugClass(
        "approximate-exp", "an approximate exp",
        "exp is replaced by a faster approximation (exp2(x * log2 e), a short polynomial, a hardware "
        "ex2.approx) whose relative error is a few units of 2^-23, or grows with |x - max|. Short, "
        "ordinary rows at offset 0 already fail in the format whose unit roundoff is below that error.",
        "Use the accurate exp for the format (or a range reduction with an exact product and a longer polynomial).",
        "e = exp(x - m)          # not exp2((x - m) * LOG2E) in float32"),
    BugClass(
        "input-mutation", "the input is modified in place",
        "The implementation writes into its argument (x -= max, exp_()). Callers that reuse the scores "
        "(attention, a second pass, autograd) get corrupted data.",
        "Work on a copy, or write into a fresh output.",
        "z = x - x.max(-1, keepdims=True)    # not x -= ..."),
    BugClass(
        "undefined-row-policy", "a different convention on undefined rows (not a bug)",
        "Rows with no exact answer (every entry -inf, or some +inf) are handled by another convention "
        "than the audit's --undefined policy, e.g. a uniform row where NaN or zeros were expected. "
        "Every defined row is right; this is a policy difference, not a numerical bug.",
        "Either document the convention and audit with a matching --undefined policy, or return NaN/zeros there.",
        "softaudit run impl.py --undefined any    # or: out = where(all_masked, 0, out)", is_bug=False),
    BugClass(
        "logits-rounded-16bit", "fused linear cross-entropy: logits rounded to the 16-bit format",
        "The logits z = h @ W.T + b (or the loss's gradient dL/dz) are rounded to bfloat16 or float16 "
        "before the loss uses them: an eager matmul in the input's dtype returns 16-bit logits (torch's "
        "default, and the unfused training loop's), and autograd rounds dL/dz again before the two "
        "backward matmuls. Each logit moves by up to u |z| (0.06 at |z| = 16 in bfloat16), so the loss "
        "of a confident token is off by about |z| u relative and the hidden, weight and bias gradients "
        "by as much; the error grows with the logits' magnitude, and float32 and float64 pass.",
        "Compute the logits in float32: a matmul accumulating in float32 with a float32 output (or upcast "
        "each chunk's operands), then the loss and dL/dz in float32; round only the results.",
        "z = hidden_chunk.float() @ weight.float().T      # or torch.matmul(..., out_dtype=torch.float32)\n"
        "loss = F.cross_entropy(z, target_chunk)          # float32 logits, float32 loss and grad"),
    BugClass(
        "weight-gradient-16bit-accumulation", "fused linear cross-entropy: d_weight accumulated in 16 bits",
        "The weight gradient d_W = sum over tokens of G_i^T h_i (and the bias gradient sum_i G_i) is "
        "accumulated across token chunks in the parameter's 16-bit dtype (a zeros_like(weight) "
        "accumulator; Liger-Kernel with accum_dtype=None). Each chunk's float32 contribution is rounded "
        "into the running sum, half a 16-bit ulp of the partial sum per chunk, and elements whose chunk "
        "contributions cancel lose many ulps of their small final value. The hidden gradient and the "
        "loss are right; the weight gradient gets worse with more chunks and is right with one.",
        "Accumulate d_weight (and d_bias) in float32 across the chunks and cast to the parameter's dtype "
        "once at the end (Liger: accum_dtype=torch.float32).",
        "d_weight = torch.zeros(weight.shape, dtype=torch.float32)\n"
        "for g, h in chunks:  d_weight += g.float().T @ h.float()\n"
        "return d_weight.to(weight.dtype)"),
    BugClass(
        "no-known-cause", "no known cause",
        "The failures match none of the known classes. The worst evidence is listed; "
        "`softaudit repro` rebuilds it and `softaudit search` can shrink it.",
        "Inspect the worst record with softaudit repro.",
        "softaudit repro results.json RECORD_ID -o repro.py", is_bug=True),
]

CLASSES: dict[str, BugClass] = {c.id: c for c in _C}
"""Every class by id, in catalogue order."""

NO_KNOWN_CAUSE = "no-known-cause"


def get_class(class_id: str) -> BugClass:
    """The class with this id (KeyError for an unknown id)."""
    return CLASSES[class_id]
