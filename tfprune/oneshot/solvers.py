"""The one-shot solvers, on a weight seen as a stack of matrices.

Every function works on `w` of shape `(groups, rows, cols)`: each group is an independent
linear map whose `rows` outputs all read the same `cols` inputs, so `y = w[g] @ x` for an
input column `x` of group `g`. A Dense or convolution kernel is one group (rows = output
channels, cols = fan-in); a depthwise kernel is one group per input channel. `hessian` is
the matching `(groups, cols, cols)` stack of `X^T X` over the calibration inputs.

- `sparsegpt` (Frantar & Alistarh 2023): Optimal Brain Surgeon updates column by column
  with the Cholesky factor of the damped inverse Hessian and lazy block updates.
- `wanda_keep` (Sun et al. 2024): score `|w_ij| * ||x_j||_2`, compared within each row.

Both take an `n_of_m` pair `(m, n)` for m zeros in every n consecutive columns.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.linalg

from tfprune.allocation import count

__all__ = ["block_counts", "inverse_hessian_factor", "sparsegpt", "wanda_keep"]


def inverse_hessian_factor(hessian: np.ndarray, damping: float) -> np.ndarray:
    """Upper Cholesky factor `U` of the damped inverse Hessian: `U^T U = (H + dI)^-1`.

    Args:
        hessian: `(groups, cols, cols)` stack of `X^T X`. Columns that never saw a nonzero
            input (zero diagonal) get a diagonal of 1 so the matrix stays invertible.
        damping: `d` as a fraction of each group's mean diagonal.

    Returns:
        The `(groups, cols, cols)` upper-triangular factors, float64.
    """
    h = np.array(hessian, np.float64)
    idx = np.arange(h.shape[-1])
    diag = h[:, idx, idx]
    diag[diag == 0] = 1.0
    h[:, idx, idx] = diag + damping * diag.mean(axis=1, keepdims=True)
    # With the columns reversed, H = R R^T for the upper R = flip(cholesky(flip(H))); then
    # H^-1 = R^-T R^-1, so U = R^-1: one factorization and one triangular inverse.
    upper = np.linalg.cholesky(h[:, ::-1, ::-1])[:, ::-1, ::-1]
    eye = np.eye(h.shape[-1])
    return np.stack([scipy.linalg.solve_triangular(r, eye) for r in upper])


def block_counts(sparsity: float, sizes: list[int]) -> list[int]:
    """Pruned weights per block so that every prefix of blocks holds `round(s * size)`.

    The layer as a whole then prunes exactly `round(sparsity * total)` weights.
    """
    bounds = np.cumsum([0, *sizes])
    return [
        count(sparsity, int(b)) - count(sparsity, int(a)) for a, b in itertools.pairwise(bounds)
    ]


def sparsegpt(
    w: np.ndarray,
    hessian: np.ndarray,
    sparsity: float,
    n_of_m: tuple[int, int] | None = None,
    block_size: int = 128,
    damping: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT: prunes `w` and updates the kept weights to compensate.

    Columns are processed left to right in blocks of `block_size`. At the start of each
    block the weights to prune are chosen by OBS saliency `w_ij^2 / U_jj^2` (the lowest
    `round(s * n)` of the block over all rows and groups; for N:M, the lowest `m` of every
    group of `n` columns in a row, chosen when the group's first column is reached). Then
    for each column `j`, the pruned weights' error `e = w_:j / U_jj` is spread over the
    columns to its right, `w_:k -= e * U_jk`, which is OBS's closed-form update
    `dw = -w_q / [H^-1]_qq * H^-1_:q` restricted to the weights not yet fixed. The columns
    to the right of the block receive the block's updates in one matrix product.

    Args:
        w: `(groups, rows, cols)` weights.
        hessian: `(groups, cols, cols)` `X^T X` of the calibration inputs.
        sparsity: Fraction of weights to prune, ignored when `n_of_m` is given.
        n_of_m: `(m, n)`: prune `m` of every `n` consecutive columns in each row.
        block_size: Columns per lazy-update block; a multiple of `n` under N:M.
        damping: Added to the Hessian's diagonal, as a fraction of its mean.

    Returns:
        `(w_new, keep)`: updated weights (float64, zero where pruned) and the boolean mask.
    """
    w = np.array(w, np.float64)
    g, rows, cols = w.shape
    u = inverse_hessian_factor(hessian, damping)
    dead = np.einsum("gii->gi", np.asarray(hessian)) == 0
    w[np.broadcast_to(dead[:, None, :], w.shape)] = 0.0
    keep = np.ones(w.shape, bool)
    starts = list(range(0, cols, block_size))
    sizes = [min(block_size, cols - s) * g * rows for s in starts]
    prune_counts = block_counts(sparsity, sizes) if n_of_m is None else [0] * len(starts)
    for start, n_prune in zip(starts, prune_counts):
        stop = min(start + block_size, cols)
        w1 = w[:, :, start:stop]  # a view: updates land in `w`
        u1 = u[:, start:stop, start:stop]
        d1 = np.einsum("gii->gi", u1)
        errors = np.zeros_like(w1)
        if n_of_m is None and n_prune:
            saliency = (w1 / d1[:, None, :]) ** 2
            order = np.argsort(saliency.reshape(-1), kind="stable")[:n_prune]
            keep1 = np.ones(saliency.size, bool)
            keep1[order] = False
            keep[:, :, start:stop] = keep1.reshape(saliency.shape)
        for j in range(stop - start):
            if n_of_m is not None and j % n_of_m[1] == 0:
                m, n = n_of_m
                saliency = (w1[:, :, j : j + n] / d1[:, None, j : j + n]) ** 2
                lowest = np.argsort(saliency, axis=-1, kind="stable")[..., :m]
                group_keep = np.ones(saliency.shape, bool)
                np.put_along_axis(group_keep, lowest, False, axis=-1)
                keep[:, :, start + j : start + j + n] = group_keep
            col = w1[:, :, j]
            pruned = np.where(keep[:, :, start + j], 0.0, col)
            err = pruned / d1[:, None, j]
            w1[:, :, j:] -= err[:, :, None] * u1[:, None, j, j:]
            w1[:, :, j] = np.where(keep[:, :, start + j], w1[:, :, j], 0.0)
            errors[:, :, j] = err
        w[:, :, stop:] -= errors @ u[:, start:stop, stop:]
    return np.where(keep, w, 0.0), keep


def wanda_keep(
    w: np.ndarray, sq_norms: np.ndarray, sparsity: float, n_of_m: tuple[int, int] | None = None
) -> np.ndarray:
    """Wanda's mask: prunes the lowest `|w_ij| * ||x_j||_2` of each row (or N:M group).

    Args:
        w: `(groups, rows, cols)` weights.
        sq_norms: `(groups, cols)` squared L2 norms of each input column over the
            calibration data (the diagonal of `X^T X`).
        sparsity: Fraction of each row to prune (`round(s * cols)` weights), ignored when
            `n_of_m` is given.
        n_of_m: `(m, n)`: prune `m` of every `n` consecutive columns in each row.

    Returns:
        Boolean keep mask of `w`'s shape. Ties prune the earlier column first.
    """
    scores = (
        np.abs(np.asarray(w, np.float64)) * np.sqrt(np.asarray(sq_norms, np.float64))[:, None, :]
    )
    g, rows, cols = scores.shape
    if n_of_m is None:
        width, n_prune = cols, count(sparsity, cols)
    else:
        width, n_prune = n_of_m[1], n_of_m[0]
    grouped = scores.reshape(g, rows, cols // width, width)
    lowest = np.argsort(grouped, axis=-1, kind="stable")[..., :n_prune]
    keep = np.ones(grouped.shape, bool)
    np.put_along_axis(keep, lowest, False, axis=-1)
    return keep.reshape(scores.shape)
