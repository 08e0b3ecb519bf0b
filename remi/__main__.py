"""Command line: `python -m remi encode|decode|info|bpe-info|key-accuracy ...` (`python -m remi -h`).

The package's command lines live here, so no library module imports another only for its CLI.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .bpe_info import bpe_info
from .corpus.bundled import bundled_files
from .keys import DEFAULT_PROFILE, PROFILES
from .metrics import key_accuracy
from .midi_io import score_to_midifile
from .midi_read import MidiReadError, read_midi
from .paths import default_conf_dir
from .tokenizer import Tokenizer


def _tokenizer(path: str | None) -> Tokenizer:
    """--config, else the coarse tokenizer of the project's conf/ ($PIANOLM_CONF, else ./conf)."""
    cfg = Path(path) if path else default_conf_dir() / "tokenizer" / "coarse.yaml"
    if not cfg.is_file():
        raise SystemExit(f"error: tokenizer config {cfg} not found (pass --config conf/tokenizer/<name>.yaml or a tokenizer JSON, "
                         "or set $PIANOLM_CONF to the project's conf/ folder)")
    return Tokenizer.from_file(cfg)


class _UsageError(Exception):
    """A bad input file or output path: printed as one line, exit status 2."""


def _decode(tok, tokens: Path, out: Path) -> int:
    """A file of space-separated token strings -> a MIDI file."""
    if not tokens.is_file():
        raise _UsageError(f"{tokens}: {'is a folder' if tokens.is_dir() else 'no such file'}; pass a text file of token strings")
    if not out.parent.is_dir():
        raise _UsageError(f"{out}: the output folder {out.parent} does not exist; create it first")
    if out.is_dir():
        raise _UsageError(f"{out} is a folder; pass the path of the .mid file to write")
    try:
        words = tokens.read_text(encoding="utf-8").split()
    except UnicodeDecodeError:
        raise _UsageError(f"{tokens} is not a UTF-8 text file of token strings (binary?)") from None
    except OSError as e:
        raise _UsageError(f"{tokens}: cannot read ({e.strerror or e})") from None
    # A merged BPE token prints as "A+B+C": expand it to base strings.
    base = [w for word in words for w in word.split("+")]
    try:
        ids = tok.ids_from_tokens(base)
    except ValueError as err:
        raise _UsageError(f"{tokens}: {err}") from None
    score = tok.decode_score(ids) if tok.bpe is None else tok.decode_score(tok.bpe.encode(ids))
    try:
        score_to_midifile(score).save(str(out))
    except OSError as e:
        raise _UsageError(f"{out}: cannot write ({e.strerror or e})") from None
    print(f"wrote {out}: {len(score)} notes")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bpe-info":
        return bpe_info_main(argv[1:])
    if argv and argv[0] == "key-accuracy":
        return key_accuracy_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m remi", description="REMI tokenizer for piano MIDI")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode", help="print the token strings of a MIDI file, space-separated, on one line")
    e.add_argument("midi")
    e.add_argument("--config", help="conf/tokenizer/*.yaml or tokenizer JSON (default: coarse)")
    e.add_argument("--no-special", action="store_true", help="omit BOS/EOS")
    d = sub.add_parser("decode", help="turn a file of token strings into a MIDI file")
    d.add_argument("tokens")
    d.add_argument("out")
    d.add_argument("--config")
    i = sub.add_parser("info", help="print the vocabulary size and token types")
    i.add_argument("--config")
    sub.add_parser("bpe-info", help="BPE statistics (see remi.bpe_info)")
    sub.add_parser("key-accuracy", help="key finding vs the key signatures MIDI files state")
    args = p.parse_args(argv)

    tok = _tokenizer(args.config)
    if args.cmd == "encode":
        try:
            ids = tok.encode(args.midi, add_special=not args.no_special)
        except MidiReadError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(" ".join(tok.tokens(ids)))
    elif args.cmd == "decode":
        try:
            return _decode(tok, Path(args.tokens), Path(args.out))
        except _UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    else:
        print(f"vocab_size {tok.vocab_size}")
        print(f"base_vocab_size {tok.base_vocab_size}")
        counts = {}
        for name in tok.vocab.tokens:
            counts[name.split("_")[0]] = counts.get(name.split("_")[0], 0) + 1
        print("token types " + " ".join(f"{k}:{v}" for k, v in counts.items()))
        print(f"ticks_per_beat {tok.ticks_per_beat}")
        print(f"hash {tok.hash}")
    return 0


def bpe_info_main(argv: Sequence[str] | None = None) -> int:
    """`python -m remi bpe-info TOKENIZER.json [SHARD_DIR] [--top N] [--split S] [--json]`."""
    parser = argparse.ArgumentParser(prog="python -m remi bpe-info", description=bpe_info.__doc__)
    parser.add_argument("tokenizer", type=Path, help="tokenizer JSON with a BPE model (Tokenizer.save)")
    parser.add_argument("shard_dir", type=Path, nargs="?", help="shard folder to measure compression on")
    parser.add_argument("--top", type=int, default=20, help="how many merged tokens to list")
    parser.add_argument("--split", default="val", help="which split of SHARD_DIR to measure (default val)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    from .tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    try:
        info = bpe_info(tok, args.shard_dir, top=args.top, split=args.split)
    except ValueError as e:
        print(f"bpe-info: {args.tokenizer}: {e}")
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"BPE {info['hash'][:16]}: {info['base_vocab_size']} base + {info['merged_tokens']} merged = {info['vocab_size']} ids")
    tr = info["training"]
    if tr:
        print(
            f"training: {tr.get('n_sequences', '?')} sequences, {tr.get('n_base_tokens', '?')} base tokens, "
            f"{tr.get('train_seconds', '?')} s, peak RSS {tr.get('peak_rss_mb', '?')} MiB "
            f"(process peak; {tr.get('rss_before_mb', '?')} MiB before training)"
        )
    else:
        print("training: not recorded")
    if "split" in info:
        s = info["split"]
        print(
            f"{s['name']} ({s['shards']} shards, {s['songs']} songs): {s['base_tokens']} base -> {s['bpe_tokens']} BPE tokens, "
            f"compression {s['compression']:.3f} base tokens per token; "
            f"{s['merged_tokens_used']}/{info['merged_tokens']} merged tokens used ({100 * s['merged_tokens_used_fraction']:.1f}%)"
        )
    order = f"by count in {info['split']['name']}" if "split" in info else "in merge order"
    print(f"top {len(info['top_merges'])} merged tokens ({order}):")
    for m in info["top_merges"]:
        count = "" if m["count"] is None else f"{m['count']:>9}  "
        print(f"  {m['id']:>6}  {count}{' '.join(m['tokens'])}")
    return 0


def key_accuracy_main(argv: Sequence[str] | None = None) -> int:
    """`python -m remi key-accuracy [PATH...] [--profiles NAME|all] [--show-misses]`."""
    parser = argparse.ArgumentParser(prog="python -m remi key-accuracy",
                                     description="key finding vs the key signatures MIDI files state")
    parser.add_argument("paths", nargs="*", help="MIDI files or folders (default: the bundled Bach pieces)")
    parser.add_argument("--profiles", default=DEFAULT_PROFILE, help=f"one of {sorted(PROFILES)}, or 'all'")
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args(argv)

    # default: the Bach pieces of the bundled corpus (nearly all four-part chorales), converted once
    paths = [Path(p) for p in args.paths] or [p for p in bundled_files() if p.parent.name == "bach"]
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*.mid*")))
    scores = [(str(f), read_midi(f)) for f in files]
    for profiles in sorted(PROFILES) if args.profiles == "all" else [args.profiles]:
        result = key_accuracy(scores, profiles)
        print(
            f"{profiles}: key finding agrees with the stated signature on {result['agree']}/{result['n']} "
            f"pieces ({100 * result['accuracy']:.1f}%); {result['skipped']} without a key signature skipped"
        )
        if args.show_misses:
            for name, stated, found in result["misses"]:
                print(f"  {name}: stated {stated}, found {found}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
