"""`python -m pianolm COMMAND ...`: one entry, one subcommand per job (`python -m pianolm -h`).

Each command is a function `(argv) -> exit status` in COMMANDS; a new one (export, serve, ...)
is one more entry. Training and sampling stay Hydra apps: `python train.py`, `python sample.py`.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from .checkpoint import read_header
from .errors import InputError
from .runinfo import code_fingerprint


def info(argv: Sequence[str]) -> int:
    """What a checkpoint holds: tokenizer, model config, training step and run config."""
    p = argparse.ArgumentParser(prog="python -m pianolm info", description=info.__doc__)
    p.add_argument("ckpt", help="a .ckpt file or a run folder holding checkpoints/last.ckpt")
    args = p.parse_args(argv)
    head = read_header(args.ckpt)
    cfg = head.raw.get("cfg") or {}
    print(json.dumps({"checkpoint": str(head.path), "global_step": head.raw.get("global_step"),
                      "tokenizer_hash": head.tokenizer.hash, "vocab_size": head.tokenizer.vocab_size,
                      "model_config": head.model_config.to_dict(), "round": cfg.get("round"),
                      "tags": cfg.get("tags")}, indent=2))
    return 0


def fingerprint(argv: Sequence[str]) -> int:
    """The fingerprint of this code (remi/, model/, pianolm/, train.py), as runs record it."""
    argparse.ArgumentParser(prog="python -m pianolm fingerprint", description=fingerprint.__doc__).parse_args(argv)
    print(code_fingerprint())
    return 0


def export(argv: Sequence[str]) -> int:
    """Write a checkpoint as a Hugging Face GPT-2 folder + tokenizer + model card (pianolm.export)."""
    p = argparse.ArgumentParser(prog="python -m pianolm export", description=export.__doc__)
    p.add_argument("ckpt", help="a .ckpt file or a run folder holding checkpoints/last.ckpt")
    p.add_argument("out_dir", help="the folder to write (created if missing; our files in it are replaced)")
    p.add_argument("--no-miditok", action="store_true",
                   help="leave out miditok.json (written by default when the tokenizer has no BPE)")
    args = p.parse_args(argv)
    from .export import export_folder

    out = export_folder(args.ckpt, args.out_dir, miditok=not args.no_miditok)
    print(f"wrote {', '.join(sorted(f.name for f in out.iterdir() if f.is_file()))} to {out}", file=sys.stderr)
    return 0


def serve(argv: Sequence[str]) -> int:
    """A local web page to generate pieces and listen to them (needs the `serve` extra)."""
    from .serve import main as serve_main  # starlette and uvicorn are imported only here

    return serve_main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"info": info, "fingerprint": fingerprint, "export": export,
                                                   "serve": serve}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:<12} {(fn.__doc__ or '').splitlines()[0]}" for name, fn in COMMANDS.items()]
        print("usage: python -m pianolm COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except InputError as e:
        print(f"pianolm {argv[0]}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
