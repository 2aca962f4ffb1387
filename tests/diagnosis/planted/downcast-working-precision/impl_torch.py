"""Torch softmax on float tensors (planted corpus)."""


def softmax(x, dim=-1):
    f = x.float()
    e = (f - f.amax(dim, keepdim=True)).exp()
    return (e / e.sum(dim, keepdim=True)).to(x.dtype)


def log_softmax(x, dim=-1):
    f = x.float()
    d = f - f.amax(dim, keepdim=True)
    return (d - d.exp().sum(dim, keepdim=True).log()).to(x.dtype)
