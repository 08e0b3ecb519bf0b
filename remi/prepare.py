"""Moved to `remi.corpus.prepare` (MIDI folders -> token shards); this name stays for
`python -m remi.prepare` and `from remi.prepare import ...`. The project imports the new home."""
from .corpus.prepare import (
    ENCODER_MODULES,
    KILL_GRACE_S,
    MAX_DEATHS_IN_A_ROW,
    RESULT_FORMAT,
    STAT_KEYS,
    Collection,
    FileEntry,
    FileResult,
    FileTimedOut,
    Prepared,
    ResultLog,
    base_tokenizer,
    code_hash,
    collect,
    data_config_for,
    default_workers,
    encode_bounded,
    encode_file,
    format_table,
    hash_split,
    in_fraction,
    load_tokenizer,
    main,
    prepare,
    prepare_bpe,
    prepare_for_training,
    printable,
    results_dir,
    shard_key,
    timed_out_reason,
    tokenize,
)

__all__ = [
    "ENCODER_MODULES", "STAT_KEYS", "FileEntry", "Collection", "hash_split", "in_fraction",
    "collect", "FileResult", "code_hash", "RESULT_FORMAT", "results_dir", "ResultLog",
    "encode_file", "FileTimedOut", "timed_out_reason", "MAX_DEATHS_IN_A_ROW", "KILL_GRACE_S", "encode_bounded",
    "tokenize", "Prepared", "shard_key", "prepare", "base_tokenizer", "prepare_for_training",
    "prepare_bpe", "load_tokenizer", "data_config_for", "printable", "format_table", "main",
    "default_workers",
]

if __name__ == "__main__":
    raise SystemExit(main())
