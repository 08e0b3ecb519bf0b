"""What BPE did to a tokenizer's ids, as plain data (`python -m remi bpe-info` prints it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .shards import load_split, read_manifest
from .tokenizer import Tokenizer


def bpe_info(tok: Tokenizer, shard_dir: str | Path | None = None, top: int = 20, split: str = "val") -> dict[str, Any]:
    """What BPE did, as plain data: compression, vocabulary use, training cost, frequent merges.

    With a shard folder, compression and use are measured on its `split` (base-token or BPE
    shards both work: base shards are encoded, BPE shards decoded). Without one, merges are
    listed in rank order (most frequent pair first, as trained).
    """
    model = tok.bpe
    if model is None:
        raise ValueError("this tokenizer has no BPE model (bpe_vocab_size 0); nothing to report")
    info: dict[str, Any] = {
        "base_vocab_size": model.base_vocab_size,
        "vocab_size": model.vocab_size,
        "merged_tokens": model.vocab_size - model.base_vocab_size,
        "hash": model.hash,
        "training": dict(model.stats),
    }
    counts = None
    if shard_dir is not None:
        info["split"], counts = _measure_split(tok, Path(shard_dir), split)
    info["top_merges"] = _top_merges(tok, counts, top)
    return info


def _measure_split(tok: Tokenizer, shard_dir: Path, split: str) -> tuple[dict[str, Any], np.ndarray]:
    """Compression and merged-token use on one split of a base or BPE shard folder of `tok`, and
    how often each id occurs there (merged ids)."""
    model = tok.bpe
    n_merged = model.vocab_size - model.base_vocab_size
    shard_hash = read_manifest(shard_dir).get("tokenizer_hash")
    is_bpe_shard = shard_hash == tok.hash
    bases = tok.base_hashes()
    if not is_bpe_shard and shard_hash not in bases:
        raise ValueError(
            f"{shard_dir} was written by tokenizer {str(shard_hash)[:12]}, neither this BPE tokenizer "
            f"({tok.hash[:12]}) nor its base ({', '.join(sorted(h[:12] for h in bases))})"
        )
    shard = load_split(shard_dir, split, expect_hash=shard_hash)
    offsets = np.asarray(shard.offsets)
    n_base = n_merged_ids = 0
    counts = np.zeros(model.vocab_size, dtype=np.int64)
    for i in range(len(offsets) - 1):
        song = np.asarray(shard.tokens[offsets[i] : offsets[i + 1]], dtype=np.int64)
        if is_bpe_shard:
            merged, base_len = song, model.decode_array(song).size
        else:
            merged, base_len = np.asarray(model.encode(song), dtype=np.int64), song.size
        n_base += base_len
        n_merged_ids += merged.size
        counts += np.bincount(merged, minlength=model.vocab_size)
    used = int((counts[model.base_vocab_size :] > 0).sum())
    return {
        "name": split,
        "shards": "bpe" if is_bpe_shard else "base",
        "songs": len(offsets) - 1,
        "base_tokens": n_base,
        "bpe_tokens": n_merged_ids,
        "compression": round(n_base / max(n_merged_ids, 1), 4),
        "merged_tokens_used": used,
        "merged_tokens_used_fraction": round(used / max(n_merged, 1), 4),
    }, counts


def _top_merges(tok: Tokenizer, counts: np.ndarray | None, top: int) -> list[dict[str, Any]]:
    """The first `top` merged tokens: most frequent first with `counts`, else in rank order."""
    model = tok.bpe
    ids = np.arange(model.base_vocab_size, model.vocab_size)
    if counts is not None:
        ids = ids[np.argsort(-counts[model.base_vocab_size :], kind="stable")]
    return [
        {
            "id": int(i),
            "count": None if counts is None else int(counts[i]),
            "length": len(model.expand(int(i))),
            "tokens": list(tok.tokens(list(model.expand(int(i))))),
        }
        for i in ids[:top]
    ]
