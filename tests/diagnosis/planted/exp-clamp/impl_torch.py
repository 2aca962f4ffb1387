"""Torch softmax, exponent kept in a safe range (planted corpus)."""


def softmax(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    arg = (w - w.amax(dim=dim, keepdim=True)).clamp(min=-60.0, max=0.0)
    num = arg.exp()
    return (num / num.sum(dim=dim, keepdim=True)).to(x.dtype)
