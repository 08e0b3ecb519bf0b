"""Command line: `python -m remi encode|decode|info|bpe-info ...` (see `python -m remi -h`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "tokenizer" / "coarse.yaml"


def _tokenizer(path: str | None):
    from .tokenizer import Tokenizer

    cfg = Path(path) if path else DEFAULT_CONFIG
    if not cfg.is_file():
        raise SystemExit(f"error: tokenizer config {cfg} not found (pass --config conf/tokenizer/<name>.yaml or a tokenizer JSON)")
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
    from .midi_io import score_to_midifile

    try:
        score_to_midifile(score).save(str(out))
    except OSError as e:
        raise _UsageError(f"{out}: cannot write ({e.strerror or e})") from None
    print(f"wrote {out}: {len(score)} notes")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bpe-info":
        from .bpe import bpe_info_main

        return bpe_info_main(argv[1:])
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
    sub.add_parser("bpe-info", help="BPE statistics (see remi.bpe)")
    args = p.parse_args(argv)

    from .midi_read import MidiReadError

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


if __name__ == "__main__":
    raise SystemExit(main())
