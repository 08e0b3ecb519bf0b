"""Infilling end to end: train.py with data.infill_share, sample.py's infill=, evaluate.py --infill.

A tiny run trained here with the share on has the Infill tokens; sample.py writes infilled pieces
whose bars outside the range are the input's; evaluate.py's `infill` block has its stated keys and
its bits agree with the model's own likelihood; a model trained without infilling is refused.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import remi
import sample
from experiments.infill_eval import FIGURES, bits_given, evaluate_infill, figures
from model import GPT, GPTConfig
from pianolm.errors import InputError
from pianolm.likelihood import nll_bits_per_piece
from remi.bars import bar_span_ticks, count_bars, notes_outside
from remi.score import Score
from tests.test_sample import (
    ENV,
    ROOT,
    _train_tiny,
    ckpt,  # noqa: F401  (a fixture: a run trained without infilling)
    config,
    write_prompt,
)


@pytest.fixture(scope="session")
def infill_ckpt(tmp_path_factory) -> Path:
    """A tiny run trained with half its windows laid out for infilling, context 256."""
    return _train_tiny(tmp_path_factory.mktemp("tiny_infill_run"), "data.infill_share=0.5", "model.block_size=256")


def test_training_with_a_share_puts_the_tokens_in_the_checkpoint(infill_ckpt, ckpt):  # noqa: F811
    data = torch.load(infill_ckpt, weights_only=True)
    tok = remi.Tokenizer.from_dict(data["tokenizer"])
    plain = remi.Tokenizer.from_dict(torch.load(ckpt, weights_only=True)["tokenizer"])
    assert tok.infill_ids is not None and plain.infill_ids is None
    assert tok.vocab_size == plain.vocab_size + 3 and tok.vocab.tokens[:plain.vocab_size] == plain.vocab.tokens


def test_sample_py_writes_infilled_pieces_that_keep_the_bars_outside(infill_ckpt, tmp_path):
    song = write_prompt(tmp_path / "song.mid", n_bars=8, seed=3)
    out = tmp_path / "out"
    records = sample.sample(config(ckpt=str(infill_ckpt), infill=str(song), infill_bars=[3, 5], n_samples=2,
                                   out_dir=str(out), audio=False, progress=False, seed=4))
    tok = remi.Tokenizer.from_dict(torch.load(infill_ckpt, weights_only=True)["tokenizer"])
    ids = tok.encode(song)
    span = bar_span_ticks(tok, ids, 3, 5)
    assert [r["infill_bars"] for r in records] == [[3, 5], [3, 5]] and records[0]["infill_ticks"] == list(span)
    for r in records:
        got = remi.read_midi(out / r["midi"])
        back = tok.decode_score(tok.encode(got))
        assert count_bars(tok, r["ids"]) == count_bars(tok, ids)
        for kept, new in zip(notes_outside(tok.decode_score(ids), *span), notes_outside(tok.decode_score(r["ids"]), *span)):
            assert np.array_equal(kept, new)
        assert len(back) == len(tok.decode_score(r["ids"]))  # the written file holds the piece
        assert (out / r["png"]).is_file() and (out / r["midi"]).with_suffix(".json").is_file()
    again = sample.sample(config(ckpt=str(infill_ckpt), infill=str(song), infill_bars=[3, 5], n_samples=2,
                                 out_dir=str(tmp_path / "again"), audio=False, progress=False, seed=4))
    assert [r["ids"] for r in again] == [r["ids"] for r in records]


def test_sample_py_refuses_what_infilling_cannot_do(infill_ckpt, ckpt, tmp_path):  # noqa: F811
    song = write_prompt(tmp_path / "song.mid", n_bars=8, seed=3)
    with pytest.raises(InputError, match="trained without infilling"):
        sample.sample(config(ckpt=str(ckpt), infill=str(song), infill_bars=[3, 5], out_dir=str(tmp_path / "a"),
                             audio=False, progress=False))
    with pytest.raises(InputError, match="go together"):
        sample.sample(config(ckpt=str(infill_ckpt), infill=str(song), out_dir=str(tmp_path / "b"), audio=False))
    with pytest.raises(InputError, match="drop prompt="):
        sample.sample(config(ckpt=str(infill_ckpt), infill=str(song), infill_bars=[3, 5], prompt=str(song),
                             out_dir=str(tmp_path / "c"), audio=False))
    with pytest.raises(InputError, match="outside the piece"):
        sample.sample(config(ckpt=str(infill_ckpt), infill=str(song), infill_bars=[7, 9], out_dir=str(tmp_path / "d"),
                             audio=False, progress=False))


# ------------------------------------------------------------------------------ evaluate --infill

TOK = remi.Tokenizer(remi.TokenizerConfig.from_dict(
    {**remi.TokenizerConfig.from_yaml(ROOT / "conf/tokenizer/coarse.yaml").to_dict(), "infill_tokens": True}))


def tiny(block_size: int = 512) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=32)).eval()


def blocks(pitches: list[int], tpb: int = 480) -> Score:
    """One bar per entry: four quarter notes at that pitch (4/4)."""
    rows = [(b * 4 * tpb + q * tpb, b * 4 * tpb + (q + 1) * tpb, p, 80) for b, p in enumerate(pitches) for q in range(4)]
    return Score.from_notes(rows, ticks_per_beat=tpb)


def test_bits_given_is_the_likelihood_of_the_target_after_the_context():
    gpt = tiny()
    ids = TOK.encode(blocks([60, 62, 64, 65, 67, 69]))
    context, target = ids[:20], ids[20:45]
    whole, head = nll_bits_per_piece(gpt, [context + target, context])
    assert bits_given(gpt, context, target) == pytest.approx(whole - head, rel=1e-5)


def test_figures_measure_the_middle_against_its_surroundings_and_the_real_middle():
    real = TOK.encode(blocks([60] * 4 + [72] * 4 + [64] * 4))
    middle = TOK.decode_score(real)
    span = bar_span_ticks(TOK, real, 5, 8)
    real_middle = Score.from_notes(middle.notes[(middle.notes[:, 0] >= span[0]) & (middle.notes[:, 0] < span[1])].tolist(),
                                   ticks_per_beat=middle.ticks_per_beat)
    f = figures(TOK, real, real_middle)
    assert f["join_before"] == 12 and f["join_after"] == 8
    assert f["density_ratio"] == 1 and f["pitch_range_overlap"] == 1
    sparse = TOK.encode(blocks([60] * 4 + [72, 72, 73, 73] + [64] * 4))
    g = figures(TOK, sparse, real_middle)
    assert g["pitch_range_overlap"] == pytest.approx(1 / 2) and g["join_after"] == 9


def test_the_infill_block_covers_the_pieces_that_fit_and_keeps_their_frame():
    gpt = tiny()
    pieces = [(Path(f"p{i}.mid"), TOK.encode(blocks([60 + (i + b) % 7 for b in range(n)])))
              for i, n in enumerate([14, 12, 9, 20])]
    r = evaluate_infill(gpt, TOK, pieces, seed=0, max_new_tokens=200)
    assert r["pieces"] == 3 and r["too_short"] == 1 and r["middle_too_long"] == 0
    assert r["per_piece"]["file"] == ["p0.mid", "p1.mid", "p3.mid"]
    gain = np.array(r["per_piece"]["bits_prefix_only"]) - np.array(r["per_piece"]["bits_with_context"])
    assert r["bits_gain"] == pytest.approx(gain.mean())
    lo, hi = r["bits_gain_ci95"]
    assert lo <= r["bits_gain"] <= hi
    for part in ("infilled", "continuation", "real"):
        assert set(r[part]) == set(FIGURES)
    assert r["real"]["density_ratio"] == 1 and r["real"]["pitch_range_overlap"] == 1
    for k in FIGURES:  # paired per piece: infilled minus continued, over the pieces where both exist
        a, b = (np.array(r["per_piece"][part][k], dtype=float) for part in ("infilled", "continuation"))
        both = np.isfinite(a) & np.isfinite(b)
        d = r["infilled_minus_continued"][k]
        assert d["n"] == both.sum()
        if d["n"]:
            assert d["mean"] == pytest.approx((a - b)[both].mean())
        if d["n"] >= 2:
            assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    for ids, (_, whole) in zip(r["_ids"], [pieces[0], pieces[1], pieces[3]]):
        assert ids["real"] == whole[:len(ids["real"])] and count_bars(TOK, ids["real"]) == 12
        span = bar_span_ticks(TOK, ids["real"], 5, 8)
        assert count_bars(TOK, ids["infilled"]) == 12 and count_bars(TOK, ids["continuation"]) == 12
        for kept, new in zip(notes_outside(TOK.decode_score(ids["real"]), *span),
                             notes_outside(TOK.decode_score(ids["infilled"]), *span)):
            assert np.array_equal(kept, new)
    short = evaluate_infill(tiny(block_size=64), TOK, pieces[:1], max_new_tokens=50)
    assert short["pieces"] == 0 and short["middle_too_long"] == 1
    with pytest.raises(SystemExit, match="without infilling"):
        evaluate_infill(gpt, remi.Tokenizer.from_yaml(ROOT / "conf/tokenizer/coarse.yaml"), pieces)


@pytest.mark.slow  # evaluate.py as a process on the tiny infilling run
def test_evaluate_py_infill_json_has_the_stated_keys(infill_ckpt, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    for i in range(3):
        write_prompt(real / f"piece_{i}.mid", n_bars=14, seed=20 + i)
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "experiments/evaluate.py", str(infill_ckpt), "--real", str(real), "--n", "2",
                           "--max-new-tokens", "64", "--bars", "4", "--infill", "--json", "--out", str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)["infill"]
    assert {"bits_with_context", "bits_prefix_only", "bits_gain", "bits_gain_ci95", "infilled", "continuation",
            "real", "per_piece", "pieces"} <= set(r)
    assert r["pieces"] + r["middle_too_long"] == 3 and all(math.isfinite(x) for x in r["per_piece"]["bits_with_context"])
    assert json.loads((out / "evaluation.json").read_text())["infill"]["pieces"] == r["pieces"]
    assert len(list((out / "infill").glob("pianoroll_*.png"))) == min(4, r["pieces"])


def test_infill_table_prints_each_run_and_the_seed_mean_with_its_spread(tmp_path, capsys):
    from experiments.evaluate import KEY_METRICS
    from experiments.infill_table import main as table

    def run(name, bits, overlap, infill=None):
        r = {"bits_per_note": bits, "grammar_error_rate": 0.004, "continuation": {"key_agree": 0.6},
             "metrics": {k: {"overlap": overlap} for k in KEY_METRICS}}
        if infill:
            r["infill"] = infill
        (tmp_path / name).mkdir()
        (tmp_path / name / "evaluation.json").write_text(json.dumps(r))
        return str(tmp_path / name)

    diff = {"mean": 0.1, "ci95": [0.05, 0.15], "n": 40}
    block = {"bits_with_context": 7.5, "bits_prefix_only": 8.0, "bits_gain": 0.5, "bits_gain_ci95": [0.4, 0.6],
             "infilled": {"key_agree": 0.7, "join_after": 3.0}, "continuation": {"key_agree": 0.6, "join_after": 5.0},
             "infilled_minus_continued": {"key_agree": diff, "join_after": diff}}
    a, b = run("a", 9.0, 0.8), run("b", 9.4, 0.7, block)
    table([f"0={a}", f"0.5={b},{run('c', 9.6, 0.6, block)}"])
    out = capsys.readouterr().out
    assert "| 0 | a | 9.000 | 0.800 | 0.40% | 0.600 | n/a |" in out
    assert "| 0.5 | b | 9.400 | 0.700 |" in out and "7.500 / 8.000 | +0.500 [+0.400, +0.600]" in out
    assert "| bits_per_note | 9.000 | 9.500 (9.400..9.600) |" in out
    with pytest.raises(SystemExit, match="evaluation.json does not exist"):
        table([f"0={tmp_path / 'missing'}"])
    with pytest.raises(SystemExit, match="SHARE=DIR"):
        table([a])
