"""Coefficients of fastgn's float64 erfc (``fg_erfc_c`` in fastgn/_simd.h).

For z >= 0 let t = 2 / (2 + z) and u = 2t - 1 (z = 0 .. inf maps u onto
1 .. -1). Then erfc(z) = t * exp(-z*z + f(u)) with f smooth on [-1, 1]
(f(-1), at z = inf, is -log(2 sqrt(pi))). This prints the power-series
coefficients of f's Chebyshev expansion cut after degree 27, computed at
50 digits (its next terms are below 3e-18) and rounded to float64, in the
order the header lists them (u^0 first).

    python tools/erfc_coefficients.py     # needs mpmath
"""

import mpmath as mp

DEGREE = 27
NODES = 96
mp.mp.dps = 50


def f(u):
    t = (u + 1) / 2
    if t == 0:
        return -mp.log(2 * mp.sqrt(mp.pi))
    z = 2 / t - 2
    return mp.log(mp.erfc(z) / t) + z * z


def chebyshev(n_nodes, degree):
    """Chebyshev coefficients c_0 .. c_degree of f, from its values at the
    n_nodes Chebyshev points (a cosine transform)."""
    angles = [mp.pi * (j + mp.mpf(1) / 2) / n_nodes for j in range(n_nodes)]
    values = [f(mp.cos(a)) for a in angles]
    coef = [2 * mp.fsum(v * mp.cos(k * a) for v, a in zip(values, angles))
            / n_nodes for k in range(degree + 1)]
    coef[0] /= 2
    return coef


def to_powers(coef):
    """sum c_k T_k(u) as coefficients of u^0 .. u^degree."""
    t_prev, t_cur = [mp.mpf(1)], [mp.mpf(0), mp.mpf(1)]
    out = [coef[0]] + [mp.mpf(0)] * (len(coef) - 1)
    out[1] += coef[1]
    for k in range(2, len(coef)):
        t_next = [mp.mpf(0)] + [2 * v for v in t_cur]
        for i, v in enumerate(t_prev):
            t_next[i] -= v
        for i, v in enumerate(t_next):
            out[i] += coef[k] * v
        t_prev, t_cur = t_cur, t_next
    return out


if __name__ == "__main__":
    for a in to_powers(chebyshev(NODES, DEGREE)):
        print(repr(float(a)))
