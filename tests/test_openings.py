"""experiments/openings.py: the bars before a piece's first note, counted in generated openings
and in a shard folder's train songs (BPE expanded), with Wilson intervals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import remi
from experiments import openings
from remi import shards
from tests.test_api import piece, save_ckpt, tiny_gpt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok() -> remi.Tokenizer:
    return remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")


def opening(tok: remi.Tokenizer, empty_bars: int) -> list[int]:
    """BOS, `empty_bars` bars without a note, then a bar with two notes."""
    def first(prefix: str) -> str:
        return next(n for n in tok.vocab.tokens if n.startswith(prefix))

    bar = ["Bar_None", "TimeSig_4/4"]
    note = [first("Velocity_"), first("Duration_")]
    notes = ["Position_0", first("Tempo_"), "Pitch_60", *note, "Position_2", "Pitch_64", *note]
    return [tok.bos_id] + tok.ids_from_tokens(bar * empty_bars + bar + notes)


def test_bars_before_the_first_note_are_counted_in_base_ids(tok):
    for empty in (0, 1, 4):
        assert openings.bars_before_first_note(opening(tok, empty), tok) == empty + 1
    no_note = [tok.bos_id] + tok.ids_from_tokens(["Bar_None", "TimeSig_4/4"] * 3)
    assert openings.bars_before_first_note(no_note, tok) is None


def test_summary_shares_and_wilson_intervals():
    s = openings.summarize([1, 1, 2, 3, 5, None, 1, 1])
    assert s["n"] == 8 and s["no_note"] == 1 and s["max_bars"] == 5
    assert s["histogram"] == {"1": 4, "2": 1, "3": 1, "5": 1}
    at2, at5 = s["shares"]["at_least_2_bars"], s["shares"]["at_least_5_bars"]
    assert at2["count"] == 3 and at2["share"] == pytest.approx(3 / 7)
    assert at5["count"] == 1
    lo, hi = at2["ci95"]
    assert lo < 3 / 7 < hi and 0 < lo and hi < 1
    # Wilson's interval of 0 of n is [0, ~3.84/n]: not the degenerate [0, 0] of the plain one
    lo0, hi0 = openings.wilson(0, 1000)
    assert lo0 == 0 and 0.003 < hi0 < 0.005


def test_data_openings_expand_bpe_and_read_every_train_song(tmp_path, tok):
    songs = [np.array(opening(tok, e) + [tok.eos_id]) for e in (0, 2, 0, 5)]
    bpe = tok.train_bpe([s[1:-1] for s in songs] * 4 + [tok.encode(piece(6, seed=s))[1:-1] for s in range(3)],
                        vocab_size=tok.vocab_size + 16)
    merged = [np.array(bpe.bpe.encode(s.tolist())) for s in songs]
    assert any(len(m) < len(s) for m, s in zip(merged, songs)), "BPE merged nothing: the test would not test it"
    folder = shards.write_shards(tmp_path / "s", {"train": (merged, [2] * 4)}, bpe.vocab_size,
                                 {"tokenizer": bpe.to_dict(), "tokenizer_hash": bpe.hash})
    assert openings.data_openings(folder) == [1, 3, 1, 6]


def test_the_command_samples_n_openings_and_repeats_with_its_seed(tmp_path, tok):
    ckpt = save_ckpt(tmp_path / "last.ckpt", tok, tiny_gpt(tok))
    argv = [f"tiny={ckpt}", "--n", "12", "--max-new-tokens", "24", "--seed", "3"]
    first = openings.main(argv + ["--json", str(tmp_path / "a.json")])["tiny"]
    again = openings.main(argv + ["--json", str(tmp_path / "b.json")])["tiny"]
    assert first["n"] == 12 and first["no_note"] + sum(first["histogram"].values()) == 12
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    assert first == again
    assert len(first["next_bar_after_empty_bars"]) == 3 and all(0 <= p <= 1 for p in first["next_bar_after_empty_bars"])


def test_bad_labels_are_named(tmp_path):
    with pytest.raises(SystemExit, match="LABEL=PATH"):
        openings.main(["just/a/path.ckpt"])
    with pytest.raises(SystemExit, match="does not exist"):
        openings.main(["r=" + str(tmp_path / "missing.ckpt")])


def test_next_bar_after_empty_bars_is_the_models_own_probability(tmp_path, tok):
    import pianolm

    m = pianolm.load(save_ckpt(tmp_path / "plain.ckpt", tok, tiny_gpt(tok)))
    probs = openings.next_bar_after_empty_bars(m, k_max=2)
    ts = tok.ids_from_tokens(["TimeSig_4/4"])[0]
    with torch.no_grad():
        logits = m.model(torch.tensor([[tok.bos_id, tok.bar_id, ts, tok.bar_id, ts]]))[0]
    direct = torch.softmax(logits.float(), dim=-1)[:, tok.bar_id]
    assert probs == pytest.approx([float(direct[2]), float(direct[4])], rel=1e-5)
    # with BPE a context cut after a TimeSig is tokenized unlike inside a song: no figure
    bpe = tok.train_bpe([opening(tok, e)[1:] for e in (0, 1, 2, 3)] * 4, vocab_size=tok.vocab_size + 12)
    assert openings.next_bar_after_empty_bars(pianolm.load(save_ckpt(tmp_path / "bpe.ckpt", bpe, tiny_gpt(bpe)))) is None
