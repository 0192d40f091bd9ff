"""Small transformers for the benchmarks, and the text a byte-level language model learns.

Two importable builders (functional Keras models that `tfprune` can analyse, prune and
shrink) and their data:

- `vit`: a Vision Transformer for 28x28x1 images (Fashion-MNIST): non-overlapping patches,
  pre-LayerNorm blocks of `keras.layers.MultiHeadAttention` and a GELU MLP, mean pooling.
- `byte_lm`: a decoder-only language model over bytes (256 symbols): causal
  `MultiHeadAttention` blocks, a plain GELU or a gated (SwiGLU) MLP.
- `stdlib_text` / `stdlib_sources` / `byte_windows`: text that is on every machine with
  Python, the standard library's own `.py` sources, cut into (input, next byte) windows;
  `stdlib_split` splits the files into training, validation and test text.
- `ngram_perplexity`: the reference a byte LM must beat, an n-gram byte model counted on the
  training text.

Layer names follow one pattern so pruning code and reports can find the parts of a block:
`block{i}_attn`, `block{i}_mlp_up` (and `block{i}_mlp_gate`), `block{i}_mlp_down`,
`block{i}_attn_add`, `block{i}_mlp_add`. The output layer is `logits`.
"""

from __future__ import annotations

import pathlib
import sysconfig

import keras
import keras_hub
import numpy as np

OUTPUT = "logits"


def _block(x, i: int, heads: int, key_dim: int, mlp: int, causal: bool, gated: bool):
    """One pre-LayerNorm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""
    dim = int(x.shape[-1])
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
    h = keras.layers.MultiHeadAttention(heads, key_dim, name=f"block{i}_attn")(
        h, h, use_causal_mask=causal
    )
    x = keras.layers.Add(name=f"block{i}_attn_add")([x, h])
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
    if gated:
        gate = keras.layers.Dense(mlp, activation="silu", name=f"block{i}_mlp_gate")(h)
        up = keras.layers.Dense(mlp, name=f"block{i}_mlp_up")(h)
        h = keras.layers.Multiply(name=f"block{i}_mlp_mul")([gate, up])
    else:
        h = keras.layers.Dense(mlp, activation="gelu", name=f"block{i}_mlp_up")(h)
    h = keras.layers.Dense(dim, name=f"block{i}_mlp_down")(h)
    return keras.layers.Add(name=f"block{i}_mlp_add")([x, h])


def vit(
    blocks: int = 4,
    dim: int = 64,
    heads: int = 8,
    mlp: int = 128,
    patch: int = 4,
    image: tuple[int, int, int] = (28, 28, 1),
    classes: int = 10,
) -> keras.Model:
    """A small Vision Transformer (Dosovitskiy et al. 2021) for Fashion-MNIST-sized images.

    Patches of `patch x patch` pixels are embedded by a strided convolution, a learned
    position embedding is added, `blocks` pre-LayerNorm blocks follow (`heads` heads of
    `dim // heads` dimensions, an MLP of `mlp` GELU units), then LayerNorm, mean pooling over
    the patches and a Dense layer of `classes` logits.

    Args:
        blocks: Number of transformer blocks.
        dim: Width of the residual stream.
        heads: Attention heads per block.
        mlp: Hidden units of each block's MLP.
        patch: Patch side in pixels (must divide the image side).
        image: Input shape `(height, width, channels)`.
        classes: Number of output logits.

    Returns:
        An uncompiled functional model.
    """
    inputs = keras.Input(image)
    x = keras.layers.Conv2D(dim, patch, strides=patch, name="patch_embed")(inputs)
    x = keras.layers.Reshape(((image[0] // patch) * (image[1] // patch), dim), name="tokens")(x)
    x = keras.layers.Add(name="pos_add")([x, keras_hub.layers.PositionEmbedding(x.shape[1])(x)])
    for i in range(blocks):
        x = _block(x, i, heads, dim // heads, mlp, causal=False, gated=False)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name=OUTPUT)(x), name="vit")


def byte_lm(
    blocks: int = 4,
    dim: int = 64,
    heads: int = 4,
    mlp: int = 128,
    seq_len: int = 64,
    gated: bool = False,
) -> keras.Model:
    """A small decoder-only byte-level language model (GPT-style, pre-LayerNorm).

    Bytes are embedded (256 symbols), a learned position embedding is added, `blocks`
    causal blocks follow, then LayerNorm and a Dense layer of 256 next-byte logits at every
    position.

    Args:
        blocks: Number of transformer blocks.
        dim: Width of the residual stream.
        heads: Attention heads per block.
        mlp: Hidden units of each block's MLP.
        seq_len: Context length in bytes.
        gated: Use a SwiGLU MLP (`silu(gate) * up`, then down) instead of GELU.

    Returns:
        An uncompiled functional model, input `(seq_len,)` int32 bytes, output
        `(seq_len, 256)` logits.
    """
    inputs = keras.Input((seq_len,), dtype="int32")
    x = keras.layers.Embedding(256, dim, name="byte_embed")(inputs)
    x = keras.layers.Add(name="pos_add")([x, keras_hub.layers.PositionEmbedding(seq_len)(x)])
    for i in range(blocks):
        x = _block(x, i, heads, dim // heads, mlp, causal=True, gated=gated)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    return keras.Model(inputs, keras.layers.Dense(256, name=OUTPUT)(x), name="byte_lm")


def stdlib_sources(max_bytes: int = 2_000_000) -> list[pathlib.Path]:
    """The standard library's top-level `.py` files, sorted by name, until `max_bytes`.

    Args:
        max_bytes: Stop after the file that brings the total to this many bytes.

    Returns:
        The paths, in the order `stdlib_text` concatenates them.
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    paths, size = [], 0
    for path in sorted(root.glob("*.py")):
        paths.append(path)
        size += path.stat().st_size
        if size >= max_bytes:
            break
    return paths


def stdlib_text(max_bytes: int = 2_000_000) -> bytes:
    """The Python standard library's `.py` sources (top-level folder, sorted), concatenated.

    Args:
        max_bytes: Stop after this many bytes.

    Returns:
        The text as bytes (at most `max_bytes`); `stdlib_sources` names the files.
    """
    return b"".join(path.read_bytes() for path in stdlib_sources(max_bytes))[:max_bytes]


def stdlib_split(
    train_bytes: int = 4_000_000, heldout_bytes: int = 131_072, every: int = 10
) -> dict[str, tuple[list[pathlib.Path], bytes]]:
    """The standard library's top-level `.py` files split by file into three texts.

    Files are sorted by name; file `i` goes to "test" when `i % every == 0`, to
    "validation" when `i % every == every // 2`, to "train" otherwise. The training files
    are concatenated in that order and cut to `train_bytes`; each held-out text is the first
    `heldout_bytes // files` bytes of each of its files (so no single long file dominates).

    Args:
        train_bytes: Most bytes of training text.
        heldout_bytes: Most bytes of validation text and of test text (each).
        every: One file in `every` goes to each held-out part.

    Returns:
        `{"train" | "validation" | "test": (files, text)}`: the files whose bytes are (at
        least partly) in the text, and the text.
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    parts = {"train": [], "validation": [], "test": []}
    for i, path in enumerate(sorted(root.glob("*.py"))):
        key = "test" if i % every == 0 else "validation" if i % every == every // 2 else "train"
        parts[key].append(path)
    split = {}
    for key, paths in parts.items():
        if key != "train":
            chunk = heldout_bytes // len(paths)
            split[key] = (paths, b"".join(path.read_bytes()[:chunk] for path in paths))
            continue
        used, size = [], 0
        for path in paths:
            if size >= train_bytes:
                break
            used.append(path)
            size += path.stat().st_size
        split[key] = (used, b"".join(path.read_bytes() for path in used)[:train_bytes])
    return split


def window_starts(size: int, seq_len: int = 64, stride: int | None = None) -> np.ndarray:
    """Where `byte_windows` starts its windows in a text of `size` bytes.

    Args:
        size: Text length in bytes.
        seq_len: Window length.
        stride: Distance between window starts (default `seq_len`: no overlap).

    Returns:
        The start offsets (int array); window `k` predicts bytes `start + 1` to
        `start + seq_len`.
    """
    return np.arange(0, size - seq_len - 1, stride or seq_len)


def byte_windows(text: bytes, seq_len: int = 64, stride: int | None = None):
    """Inputs and next-byte targets: windows of `seq_len` bytes and the same shifted by one.

    Args:
        text: The text.
        seq_len: Window length.
        stride: Distance between window starts (default `seq_len`: no overlap).

    Returns:
        `(x, y)`, two int32 arrays of shape `(windows, seq_len)`.
    """
    arr = np.frombuffer(text, np.uint8).astype(np.int32)
    index = window_starts(arr.size, seq_len, stride)[:, None] + np.arange(seq_len)[None, :]
    return arr[index], arr[index + 1]


def _gram_codes(arr: np.ndarray, k: int) -> np.ndarray:
    """Code of the `k` bytes ending at each position `i >= k - 1` (earliest byte highest)."""
    codes = np.zeros(max(arr.size - k + 1, 0), np.int64)
    for j in range(k):
        codes = codes * 256 + arr[j : arr.size - k + 1 + j]
    return codes


def ngram_perplexity(train: bytes, test: bytes, n: int, positions: np.ndarray) -> float:
    """Perplexity per byte of an interpolated Witten-Bell n-gram byte model.

    Counted on `train`. The order-0 model is the byte frequencies with add-one smoothing;
    order `k` interpolates its counts after a `k`-byte context `h` with order `k - 1`:
    `p(w | h) = (c(h, w) + t(h) p(w | h')) / (c(h) + t(h))`, `t(h)` the number of distinct
    bytes seen after `h`, `h'` the context without its earliest byte (order `k - 1` alone
    when `h` was never seen or lies partly before the start of `test`).

    Args:
        train: Training text.
        test: Text to score.
        n: Order plus one (1: unigram, 2: bigram, ...; at most 8).
        positions: Indices of the bytes of `test` to predict (each from the bytes before it).

    Returns:
        `exp` of the mean negative log-probability of the bytes at `positions`.

    Raises:
        ValueError: If `n` is not between 1 and 8.
    """
    if not 1 <= n <= 8:
        raise ValueError(f"n must be between 1 and 8. Received: n={n}")
    tr = np.frombuffer(train, np.uint8).astype(np.int64)
    te = np.frombuffer(test, np.uint8).astype(np.int64)
    positions = np.asarray(positions)
    prob = (np.bincount(tr, minlength=256)[te[positions]] + 1) / (tr.size + 256)
    for k in range(1, n):
        grams, counts = np.unique(_gram_codes(tr, k + 1), return_counts=True)
        contexts, first, distinct = np.unique(grams >> 8, return_index=True, return_counts=True)
        context_counts = np.add.reduceat(counts, first)
        ok = positions >= k
        query = _gram_codes(te, k + 1)[positions[ok] - k]
        found = np.clip(np.searchsorted(grams, query), 0, grams.size - 1)
        c_hw = np.where(grams[found] == query, counts[found], 0)
        at = np.clip(np.searchsorted(contexts, query >> 8), 0, contexts.size - 1)
        seen = contexts[at] == query >> 8
        c_h, t_h = np.where(seen, context_counts[at], 0), np.where(seen, distinct[at], 0)
        lower = prob[ok]
        prob[ok] = np.where(seen, (c_hw + t_h * lower) / np.maximum(c_h + t_h, 1), lower)
    return float(np.exp(-np.log(prob).mean()))
