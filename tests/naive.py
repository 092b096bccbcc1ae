"""Naive loop implementations: the definitions that the fast kernels are tested against."""

import numpy as np


def conv2d(x, w, b, stride, pad, dilation):
    """Direct definition: loops over output pixels; pad = (top, bottom, left, right)."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, f, oh, ow), dtype=np.float64)
    for r in range(oh):
        for q in range(ow):
            patch = xp[:, :, r * sh : r * sh + dh * (kh - 1) + 1 : dh, q * sw : q * sw + dw * (kw - 1) + 1 : dw]
            y[:, :, r, q] = np.einsum("nckl,fckl->nf", patch, w)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def pool2d(x, pool, stride, pad, op):
    """Max or mean over windows by explicit loops; padded cells never win a max and are not counted in a mean."""
    n, c, h, w = x.shape
    ph, pw = pool
    sh, sw = stride
    hp, wp = h + pad[0] + pad[1], w + pad[2] + pad[3]
    oh, ow = (hp - ph) // sh + 1, (wp - pw) // sw + 1
    y = np.zeros((n, c, oh, ow))
    for r in range(oh):
        for q in range(ow):
            r0, q0 = r * sh - pad[0], q * sw - pad[2]
            rs, qs = slice(max(r0, 0), min(r0 + ph, h)), slice(max(q0, 0), min(q0 + pw, w))
            patch = x[:, :, rs, qs].reshape(n, c, -1)
            y[:, :, r, q] = patch.max(-1) if op == "max" else patch.mean(-1)
    return y



def max_pool2d_backward(x, dy, pool, stride, pad):
    """Each window's gradient to its first maximal cell in row-major order, by explicit loops."""
    n, c, h, w = x.shape
    ph, pw = pool
    sh, sw = stride
    dx = np.zeros((n, c, h, w))
    for s in range(n):
        for ch in range(c):
            for r in range(dy.shape[2]):
                for q in range(dy.shape[3]):
                    r0, q0 = r * sh - pad[0], q * sw - pad[2]
                    cells = [(a, b) for a in range(max(r0, 0), min(r0 + ph, h)) for b in range(max(q0, 0), min(q0 + pw, w))]
                    a, b = max(cells, key=lambda ab: (x[s, ch, ab[0], ab[1]], -ab[0], -ab[1]))
                    dx[s, ch, a, b] += dy[s, ch, r, q]
    return dx


def conv2d_backward(x, w, dy, stride, pad, dilation):
    """The gradients of :func:`conv2d` (dx, dw, db) from dy, by the same loops over output pixels."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    sh, sw = stride
    dh, dw_ = dilation
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for r in range(dy.shape[2]):
        for q in range(dy.shape[3]):
            rows = slice(r * sh, r * sh + dh * (kh - 1) + 1, dh)
            cols = slice(q * sw, q * sw + dw_ * (kw - 1) + 1, dw_)
            dw += np.einsum("nf,nckl->fckl", dy[:, :, r, q], xp[:, :, rows, cols])
            dxp[:, :, rows, cols] += np.einsum("nf,fckl->nckl", dy[:, :, r, q], w)
    dx = dxp[:, :, pad[0] : pad[0] + h, pad[2] : pad[2] + wd]
    return dx, dw, dy.sum(axis=(0, 2, 3))
