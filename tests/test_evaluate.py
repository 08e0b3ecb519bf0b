"""experiments/evaluate.py: bits per note against a model whose answer is known, the stop rule,
and the command line's JSON contract on a real (tiny) checkpoint and MIDI files written here."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import remi
from experiments.evaluate import KEY_METRICS, stop_after_bars, summed_nll_bits, unigram_bits
from tests.stubs import ZeroLogits
from tests.test_sample import ENV, ROOT, ckpt, write_prompt  # noqa: F401  (ckpt is a fixture)

TOK = remi.Tokenizer.from_yaml(ROOT / "conf/tokenizer/coarse.yaml")


def test_uniform_model_costs_log2_vocab_bits_per_predicted_token():
    model = ZeroLogits(TOK.vocab_size)
    model.config = SimpleNamespace(block_size=16)  # windows of 16: several per sequence
    seqs = [list(np.random.default_rng(i).integers(0, TOK.vocab_size, size=n)) for i, n in enumerate([5, 40, 17])]
    expected = sum(len(s) - 1 for s in seqs) * math.log2(TOK.vocab_size)
    assert summed_nll_bits(model, seqs, batch_size=2) == pytest.approx(expected, rel=1e-6)  # float32 logits


def test_unigram_bits_follow_the_train_counts():
    train = np.array([0, 0, 0, 1])  # add-one counts over V=2: p(0) = 4/6, p(1) = 2/6
    bits = unigram_bits(train, 2, [[1, 0, 1]])
    assert bits == pytest.approx(-math.log2(4 / 6) - math.log2(2 / 6))


def test_stop_after_bars_allows_only_eos_once_the_bars_are_complete():
    allowed = stop_after_bars(TOK, total_bars=2)
    bar = TOK.bar_id
    ids = torch.tensor([[TOK.bos_id, bar, 5, bar, 6, 7], [TOK.bos_id, bar, 5, bar, 6, bar]])
    mask = allowed(ids)
    assert mask[0].all()                                         # two bars: the third may still start
    assert mask[1].sum() == 1 and mask[1, TOK.eos_id]            # a third Bar started: only EOS


@pytest.mark.slow  # end to end: train.py (the ckpt fixture, here trained again) and evaluate.py, each a process
def test_command_line_json_has_the_stated_keys(ckpt, tmp_path):  # noqa: F811
    real = tmp_path / "real"
    real.mkdir()
    for i in range(3):
        write_prompt(real / f"piece_{i}.mid", n_bars=18, notes_per_beat=1 + i % 2, seed=7 + i)
    (real / "piece_broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")  # skipped and said, not fatal
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "experiments/evaluate.py", str(ckpt), "--real", str(real), "--n", "2",
                           "--max-new-tokens", "48", "--bars", "4", "--json", "--out", str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert {"bits_per_note", "metrics", "grammar_error_rate", "empty_pieces", "continuation"} <= set(r)
    assert r["bits_per_note"] > 0 and r["pieces"]["real"] == 3 and r["pieces"]["continued"] == 3
    assert len(r["pieces"]["skipped"]) == 1 and "piece_broken.mid" in r["pieces"]["skipped"][0]
    assert "[evaluate] skipped" in proc.stderr and "piece_broken.mid" in proc.stderr  # said even with --json
    assert set(KEY_METRICS) <= set(r["metrics"])
    for name, m in r["metrics"].items():
        assert set(m) == {"mean", "real_mean", "overlap", "kl"}, name
        assert 0.0 <= m["overlap"] <= 1.0 or math.isnan(m["overlap"]), name
        assert m["kl"] >= 0.0 or math.isnan(m["kl"]), name
    # bits per second: the same bits over the files' seconds; per_piece sums to the totals
    pp = r["per_piece"]
    assert sum(pp["real"]["notes"]) == r["pieces"]["notes"]
    assert sum(pp["real"]["bits"]) / sum(pp["real"]["notes"]) == pytest.approx(r["bits_per_note"])
    assert sum(pp["real"]["bits"]) / sum(pp["real"]["seconds"]) == pytest.approx(r["bits_per_second"])
    assert len(pp["free"]["errors"]) == 2 and len(pp["continuations"]["key_agree"]) == 3
    errors = sum(pp["free"]["errors"]) + sum(pp["continuations"]["errors"])
    tokens = sum(pp["free"]["tokens"]) + sum(pp["continuations"]["tokens"])
    assert errors / tokens == pytest.approx(r["grammar_error_rate"])
    assert 0.0 <= r["grammar_error_rate"] <= 1.0 and 0 <= r["empty_pieces"] <= 2
    assert {"key_agree", "key_agree_real", "tempo_ratio", "density_ratio", "pitch_range_overlap"} <= set(r["continuation"])
    # The real side is the real pieces' first 16 bars, on the tokenizer's grid.
    from remi.bars import cut_bars
    from remi.metrics import continuation_consistency

    tok = remi.Tokenizer.from_dict(torch.load(ckpt, weights_only=True)["tokenizer"])
    real16 = [tok.decode_score(cut_bars(tok, tok.encode(f), 16)[0]) for f in sorted(real.glob("piece_[0-9].mid"))]
    expected = np.mean([continuation_consistency(s, 4)["density_ratio"] for s in real16])
    assert r["continuation"]["density_ratio_real"] == pytest.approx(expected)
    assert json.loads((out / "evaluation.json").read_text())["bits_per_note"] == r["bits_per_note"]
    for rel in r["media"]["midi"]:
        remi.read_midi(out / rel)  # every written piece reads back
    assert (out / "pianoroll_samples.png").is_file() and (out / "pianoroll_continuations.png").is_file()
    report = (out / "report.md").read_text()
    assert "pianoroll_continuations.png" in report and f"{r['bits_per_note']:.4f}" in report
    assert "(3 real pieces" in report and "1 file skipped: unreadable or without notes" in report


def test_a_file_that_is_not_a_checkpoint_stops_with_one_sentence(tmp_path):
    from experiments.evaluate import main

    real = tmp_path / "real"
    real.mkdir()
    write_prompt(real / "piece.mid", n_bars=2)
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(SystemExit, match=r"^evaluate: .*notes.ckpt is not a checkpoint: neither a torch archive"):
        main([str(tmp_path / "notes.ckpt"), "--real", str(real)])
    with pytest.raises(SystemExit, match=r"^evaluate: checkpoint .*gone.ckpt does not exist"):
        main([str(tmp_path / "gone.ckpt"), "--real", str(real)])


def test_grammar_errors_count_only_the_generated_tokens_by_both_definitions():
    from experiments.evaluate import generated_tokens, grammar_error_kinds, grammar_errors
    from tests.test_tokenizer import small_midi

    ids = TOK.encode(small_midi())[:-1]                      # BOS ... (no EOS): grammatical
    vel = next(i for i, t in enumerate(TOK.vocab.tokens) if t.startswith("Velocity_"))
    bad_row = ids[:10] + [vel, TOK.pad_id, vel] + ids[10:]   # two stray Velocity tokens and a PAD
    assert sum(grammar_errors(TOK, [ids], [10]).values()) == 0
    assert generated_tokens(TOK, [ids], [10]) == len(ids) - 10
    syntax = grammar_errors(TOK, [bad_row], [10])
    assert syntax["type"] == 2 and sum(syntax.values()) == 2  # each stray Velocity once, no cascade
    assert generated_tokens(TOK, [bad_row], [10]) == len(bad_row) - 10 - 1  # the PAD is special
    kinds = grammar_error_kinds(TOK, [bad_row, ids], [10, 10])
    assert kinds["type"] >= 2                                 # the strict grammar counts them too
    # errors inside the prompt are not the model's: skipping past them removes them
    assert sum(grammar_errors(TOK, [bad_row], [14]).values()) == 0


def test_follow_key_biases_pitches_outside_the_prompts_key():
    from experiments.evaluate import follow_key_bias
    from tests.test_tokenizer import small_midi

    prompt = TOK.encode(small_midi())[:-1]  # C, E, G, C: C major
    bias = follow_key_bias(TOK, prompt, 3.0)
    pitch = {t: i for i, t in enumerate(TOK.vocab.tokens) if t.startswith("Pitch_")}
    assert bias is not None and bias.shape == (TOK.vocab_size,)
    assert bias[pitch["Pitch_60"]] == 0 and bias[pitch["Pitch_67"]] == 0      # C and G: in the key
    assert bias[pitch["Pitch_61"]] == -3.0 and bias[pitch["Pitch_66"]] == -3.0  # C# and F#: outside
    assert float(bias[[i for t, i in pitch.items()]].min()) == -3.0 and int((bias < 0).sum()) > 0
    assert follow_key_bias(TOK, [TOK.bos_id], 3.0) is None  # no notes, no key
