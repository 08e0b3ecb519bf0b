"""pianolm.api (`pianolm.load` -> PianoLM), pianolm.control (fixed tempo/meter/key) and
`python -m pianolm export`, against small genuine checkpoints written here (no training: random
but non-trivial weights, so every mapping and mask is exercised on real, imperfect generations)."""
from __future__ import annotations

import doctest
import json
from pathlib import Path

import mido
import numpy as np
import pytest
import torch

import pianolm
import pianolm.api
import remi
from model import GPT, GPTConfig
from pianolm import control as ctl
from pianolm.__main__ import main
from pianolm.errors import InputError, PromptError
from pianolm.likelihood import summed_nll_bits
from remi.bars import count_bars

ROOT = Path(__file__).resolve().parents[1]


def tiny_gpt(tok: remi.Tokenizer, seed: int = 0, block_size: int = 96) -> GPT:
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return gpt.eval()


def save_ckpt(path: Path, tok: remi.Tokenizer, gpt: GPT, cfg: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"gpt.{k}": v for k, v in gpt.state_dict().items()}, "tokenizer": tok.to_dict(),
                "tokenizer_hash": tok.hash, "model_config": gpt.config.to_dict(), "global_step": 7,
                "cfg": cfg or {"seed": 3, "round": "test", "data": {"name": "unit", "sources": ["here"]}}}, path)
    return path


def piece(n_bars: int = 6, seed: int = 0, notes_per_beat: int = 1) -> remi.Score:
    """A 4/4 piece at 480 ticks per beat: random pitches of C major, one note per beat."""
    rng = np.random.default_rng(seed)
    step = 480 // notes_per_beat
    rows = [(t, t + step, int(rng.choice([60, 62, 64, 65, 67, 69, 71, 72])), 80)
            for t in range(0, n_bars * 4 * 480, step)]
    return remi.Score.from_notes(rows, ticks_per_beat=480, tempos=[remi.Tempo(0, 100.0)],
                                 time_signatures=[remi.TimeSignature(0, 4, 4)])


@pytest.fixture(scope="module")
def tok() -> remi.Tokenizer:
    return remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")


@pytest.fixture(scope="module")
def bpe_tok(tok) -> remi.Tokenizer:
    return tok.train_bpe([tok.encode(piece(8, seed=s)) for s in range(6)], vocab_size=tok.vocab_size + 24)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tok) -> Path:
    """A run folder: checkpoints/last.ckpt and a metrics.json as train.py writes them."""
    run = tmp_path_factory.mktemp("run")
    save_ckpt(run / "checkpoints" / "last.ckpt", tok, tiny_gpt(tok))
    (run / "metrics.json").write_text(json.dumps({"val_loss": 2.5, "val_bits_per_note": 11.25, "steps": 7,
                                                  "train_songs": 24, "train_notes": 900}))
    return run


@pytest.fixture(scope="module")
def m(run) -> pianolm.PianoLM:
    return pianolm.load(run)


# ------------------------------------------------------------------ docs and loading


def test_the_docstring_examples_run(monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples read conf/tokenizer/coarse.yaml
    result = doctest.testmod(pianolm.api)
    assert result.failed == 0 and result.attempted >= 5


def test_load_takes_a_ckpt_or_a_run_folder_and_says_what_it_loaded(run, tok, m):
    same = pianolm.load(run / "checkpoints" / "last.ckpt")
    idx = torch.tensor([[tok.bos_id, tok.bar_id, tok.bar_id + 1]])
    assert torch.equal(same.model(idx), m.model(idx))
    assert m.tokenizer.hash == tok.hash and m.block_size == 96
    assert m.config["format"] == "checkpoint" and m.config["train_step"] == 7 and m.config["run"]["seed"] == 3
    assert m.config["model"]["n_layer"] == 2


def test_a_missing_checkpoint_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        pianolm.load(tmp_path / "nope.ckpt")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="no tokenizer.json.*pianolm export"):
        pianolm.load(tmp_path)


# ------------------------------------------------------------------ generation


def test_generate_is_seeded_grammatical_and_bar_limited(m):
    a = m.generate(n=3, bars=2, seed=5, max_new_tokens=80)
    ids_a = [r["ids"] for r in m.last]
    b = m.generate(n=3, bars=2, seed=5, max_new_tokens=80)
    assert [r["ids"] for r in m.last] == ids_a
    assert all(isinstance(s, remi.Score) for s in a + b)
    m.generate(n=3, bars=2, seed=6, max_new_tokens=80)
    assert [r["ids"] for r in m.last] != ids_a
    for ids in ids_a:
        assert m.tokenizer.token_errors(ids) == 0.0
        assert 1 <= count_bars(m.tokenizer, ids) <= 2
    unconstrained = m.generate(n=3, bars=2, seed=5, max_new_tokens=80, grammar=False)
    assert len(unconstrained) == 3


def test_api_and_sample_py_draw_the_same_pieces(m, run, tmp_path):
    """sample.py is a command line over the API: same seed and settings -> same ids."""
    from hydra import compose, initialize_config_dir

    import sample

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("sample", overrides=[f"ckpt={run}", f"out_dir={tmp_path}", "n_samples=3", "max_bars=2",
                                           "max_new_tokens=80", "seed=11", "audio=false", "progress=false",
                                           "temperature=0.9", "top_k=40", "device=cpu"])
    records = sample.sample(cfg)
    m.generate(n=3, bars=2, seed=11, max_new_tokens=80, temperature=0.9, top_k=40)
    assert [r["ids"] for r in records] == [r["ids"] for r in m.last]


@pytest.mark.parametrize("which", ["tok", "bpe_tok"])
def test_fixed_tempo_and_meter_hold_in_every_piece(which, request, tmp_path):
    tok = request.getfixturevalue(which)
    m = pianolm.PianoLM(tok, tiny_gpt(tok, seed=1))
    bins = m.tokenizer.vocab.tempos
    want = float(bins[np.argmin(np.abs(60_000_000 / bins - 60_000_000 / 100))])  # nearest in us/quarter
    for meter, (num, den) in (("3/4", (3, 4)), ((6, 8), (6, 8))):
        pieces = m.generate(n=4, bars=3, seed=2, tempo=100, meter=meter, max_new_tokens=90)
        for s, row in zip(pieces, m.last):
            assert {(t.numerator, t.denominator) for t in s.time_signatures} == {(num, den)}
            assert {t.bpm for t in s.tempos} == {want}
            assert tok.token_errors(row["ids"]) == 0.0
            back = remi.read_midi(s.to_midi(tmp_path / "x.mid"))  # and through a MIDI file
            assert {(t.numerator, t.denominator) for t in back.time_signatures} == {(num, den)}
            assert {round(t.bpm, 1) for t in back.tempos} == {round(want, 1)}
    # unfixed, the same model and seed wander: the fixing is what holds them
    free = m.generate(n=4, bars=3, seed=2, max_new_tokens=90)
    assert any({(t.numerator, t.denominator) for t in s.time_signatures} != {(3, 4)} for s in free)


def test_tempo_alone_or_meter_alone(m):
    for s in m.generate(n=3, bars=2, seed=4, tempo=60, max_new_tokens=80):
        assert len({t.bpm for t in s.tempos}) == 1 and abs(s.tempos[0].bpm - 60) < 6
    for s in m.generate(n=3, bars=2, seed=4, meter="2/4", max_new_tokens=80):
        assert {(t.numerator, t.denominator) for t in s.time_signatures} == {(2, 4)}


def test_a_fixed_key_measures_in_that_key_more_often(m):
    kw = dict(n=16, bars=2, seed=9, max_new_tokens=80)
    free, fixed = m.generate(**kw), m.generate(key="D minor", **kw)
    assert ctl.key_share(fixed, "D minor") > ctl.key_share(free, "D minor")
    assert all(s.key_signatures[0].key == "Dm" for s in fixed)
    in_key = ctl.scale_pitch_classes(ctl.parse_key("Dm"))

    def share(scores):
        pcs = np.concatenate([s.notes[:, 2] % 12 for s in scores])
        return np.isin(pcs, list(in_key)).mean()

    assert share(fixed) > share(free)


def test_a_continuation_can_keep_its_prompts_key(m, tmp_path):
    from remi.keys import find_key
    prompt = piece(n_bars=2, seed=3)
    measured = find_key(m.tokenizer.decode_score(m.tokenizer.encode_score(prompt)))
    kw = dict(prompt_bars=2, bars=2, n=12, seed=5, max_new_tokens=80)
    free, kept = m.continue_midi(prompt, **kw), m.continue_midi(prompt, key="prompt", **kw)
    assert all(s.key_signatures[0].key == ctl.key_signature_name(measured) for s in kept)
    in_key = list(ctl.scale_pitch_classes(measured))

    def share(scores):  # the new bars only: the prompt's notes are the same in both
        from remi.metrics import split_at_bar
        pcs = np.concatenate([split_at_bar(s, 2)[1].notes[:, 2] % 12 for s in scores])
        return np.isin(pcs, in_key).mean()

    assert share(kept) > share(free)
    named = m.continue_midi(prompt, key="E major", **kw)
    assert all(s.key_signatures[0].key == "E" for s in named)
    with pytest.raises(InputError, match=r"key='H minor': not a key name"):
        m.continue_midi(prompt, key="H minor", **kw)


@pytest.mark.parametrize("name, tonic, minor", [("D minor", 2, True), ("Dm", 2, True), ("f# major", 6, False),
                                                ("Bb", 10, False), ("ebm", 3, True), ("C min", 0, True)])
def test_key_names(name, tonic, minor):
    k = ctl.parse_key(name)
    assert (k.tonic, k.minor) == (tonic, minor)


@pytest.mark.parametrize("kwargs, message", [
    (dict(meter="5/8"), r"meter='5/8': the tokenizer has no TimeSig_5/8; choose one of \["),
    (dict(meter="three"), r"meter='three': expected 'N/D'"),
    (dict(tempo=1000), r"tempo=1000: must be a number .* within the tokenizer's tempo range 40..240"),
    (dict(key="H minor"), r"key='H minor': not a key name"),
    (dict(n=0), r"n=0: must be an integer >= 1"),
    (dict(top_p=1.5), r"top_p=1.5: must be a number in \(0, 1\]"),
    (dict(min_p=-0.1), r"min_p=-0.1"),
    (dict(bars=0), r"bars/max_bars=0"),
])
def test_bad_generate_arguments_name_themselves(m, kwargs, message):
    with pytest.raises(InputError, match=message):
        m.generate(**kwargs)


# ------------------------------------------------------------------ continuation


def test_continue_midi_takes_any_form_of_prompt_and_keeps_its_bars(m, tmp_path):
    prompt = piece(6, seed=1)
    path = prompt.to_midi(tmp_path / "p.mid")
    kw = dict(prompt_bars=2, bars=2, seed=3, max_new_tokens=80)
    outs = []
    for src in (path, str(path), path.read_bytes(), mido.MidiFile(str(path)), prompt):
        m.continue_midi(src, **kw)
        outs.append(m.last[0]["ids"])
    assert all(o == outs[0] for o in outs)
    got = m.continue_midi(path, n=2, **kw)
    cut = 2 * 4 * m.tokenizer.ticks_per_beat  # the end of the prompt's two 4/4 bars
    two_bars = m.tokenizer.quantize(prompt).notes
    two_bars = two_bars[two_bars[:, 0] < cut]
    assert len(two_bars) == 8
    for s in got:
        assert np.array_equal(s.notes[s.notes[:, 0] < cut], two_bars)
        assert count_bars(m.tokenizer, m.tokenizer.encode(s)) <= 4


def test_bad_prompts_name_the_problem(m, tmp_path):
    (tmp_path / "text.mid").write_text("not a midi file")
    with pytest.raises(PromptError, match=r"text.mid does not parse as MIDI"):
        m.continue_midi(tmp_path / "text.mid")
    with pytest.raises(PromptError, match="does not parse as MIDI"):
        m.continue_midi(b"MThd\x00\x00\x00\x06garbage")
    with pytest.raises(PromptError, match="does not exist"):
        m.continue_midi(tmp_path / "gone.mid")
    with pytest.raises(PromptError, match=r"is a MIDI file path, its bytes, a mido.MidiFile or a remi.Score, not int"):
        m.continue_midi(42)
    dense = piece(8, notes_per_beat=4)
    with pytest.raises(PromptError, match=r"longer than the model's context of 96; use fewer prompt_bars"):
        m.continue_midi(dense, prompt_bars=8)


# ------------------------------------------------------------------ likelihood and helpers


def test_bits_per_note_is_the_validation_measure(m, tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    scores = [piece(5, seed=s) for s in range(3)]
    for i, s in enumerate(scores):
        s.to_midi(folder / f"{i}.mid")
    seqs = [m.tokenizer.encode(s) for s in scores]
    expected = summed_nll_bits(m.model, seqs) / sum(m.tokenizer.count_notes(s) for s in seqs)
    assert m.bits_per_note(folder) == pytest.approx(expected, rel=1e-6)
    assert m.bits_per_note(sorted(folder.iterdir())) == pytest.approx(expected, rel=1e-6)
    assert m.bits_per_note(scores[0]) == pytest.approx(summed_nll_bits(m.model, seqs[:1]) /
                                                       m.tokenizer.count_notes(seqs[0]), rel=1e-6)
    (folder / "broken.mid").write_bytes(b"MThd")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        assert m.bits_per_note(folder) == pytest.approx(expected, rel=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder .*empty holds no .mid/.midi files"):
        m.bits_per_note(tmp_path / "empty")
    with pytest.raises(InputError, match="no piece with notes to measure"):
        m.bits_per_note(folder / "broken.mid")


def test_ids_and_score_round_trip_and_scores_write_midi(m, tmp_path):
    s = m.tokenizer.quantize(piece(3, seed=4))
    assert np.array_equal(m.score(m.ids(s)).notes, s.notes)
    mid = s.to_midifile()
    assert isinstance(mid, mido.MidiFile)
    assert np.array_equal(remi.read_midi(s.to_midi(tmp_path / "a.mid")).notes, s.notes)


# ------------------------------------------------------------------ export


def test_export_command_writes_a_folder_transformers_and_pianolm_read(run, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "config.json", "generation_config.json", "miditok.json", "model.safetensors",
                     "tokenizer.json", "training_config.json"]
    ours = pianolm.load(run)
    idx = torch.randint(0, ours.tokenizer.vocab_size, (2, ours.block_size), generator=torch.Generator().manual_seed(0))
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours.model(idx), atol=1e-5, rtol=1e-5)
    back = pianolm.load(out)
    assert back.tokenizer.hash == ours.tokenizer.hash and back.config["format"] == "huggingface"
    assert back.config["train_step"] == 7 and back.config["run"]["round"] == "test"
    assert torch.equal(back.model(idx), ours.model(idx))
    # the same pieces from either
    ours.generate(n=2, bars=2, seed=1, max_new_tokens=60)
    back.generate(n=2, bars=2, seed=1, max_new_tokens=60)
    assert [r["ids"] for r in back.last] == [r["ids"] for r in ours.last]
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (ours.tokenizer.bos_id, ours.tokenizer.eos_id)
    card = (out / "README.md").read_text()
    assert "| val_bits_per_note | 11.25 |" in card and "unit" in card and "| model.n_layer | 2 |" in card
    miditok = json.loads((out / "miditok.json").read_text())
    assert miditok["_vocab_base"] == {t: i for i, t in enumerate(ours.tokenizer.vocab.tokens)}


def test_export_of_a_bpe_model_leaves_out_miditok_and_says_why(tmp_path, bpe_tok):
    ckpt = save_ckpt(tmp_path / "run" / "last.ckpt", bpe_tok, tiny_gpt(bpe_tok))
    out = tmp_path / "hf"
    assert main(["export", str(ckpt), str(out)]) == 0
    assert not (out / "miditok.json").exists()
    assert "MidiTok cannot load" in (out / "README.md").read_text()
    assert pianolm.load(out).tokenizer.hash == bpe_tok.hash


def test_export_bad_input_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "gone.ckpt"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"pianolm export: error: checkpoint {tmp_path / 'gone.ckpt'} does not exist"


def test_a_key_token_model_is_told_the_key_and_exports_without_miditok(tmp_path, tok):
    import dataclasses
    ktok = remi.Tokenizer(dataclasses.replace(tok.config, key_tokens=True))
    run = tmp_path / "run"
    save_ckpt(run / "checkpoints" / "last.ckpt", ktok, tiny_gpt(ktok, block_size=160))
    km = pianolm.load(run)
    assert km.tokenizer.config.key_tokens and km.tokenizer.hash == ktok.hash
    km.key_penalty = 0.0                                             # the Key tokens are the only control
    kw = dict(prompt_bars=2, bars=3, n=6, seed=2, max_new_tokens=120)
    km.continue_midi(piece(n_bars=3, seed=1), key="F# minor", **kw)
    f_sharp_minor = ktok.vocab.tokens[ktok.key_id(18)]
    new_keys = 0
    for row in km.last:
        keys = [t for t in ktok.tokens(row["ids"]) if t.startswith("Key_")]
        assert keys and set(keys) == {f_sharp_minor}                 # the prompt's bars re-keyed, the new ones held
        new_keys += len(keys) - 2                                    # 2 in the prompt
    assert new_keys >= 1                                             # the model did write some (masked to F# minor)
    km.continue_midi(piece(n_bars=3, seed=1), **kw)                  # no key: the prompt says its own
    from remi.bars import cut_bars
    from remi.keys import find_key
    whole = ktok.encode_score(piece(n_bars=3, seed=1))
    prompt, _ = cut_bars(ktok, whole, 2)
    own = ktok.vocab.tokens[ktok.key_id(find_key(ktok.decode_score(prompt)))]
    assert km.last[0]["ids"][:len(prompt)] == prompt
    assert {t for t in ktok.tokens(prompt) if t.startswith("Key_")} == {own}
    out = tmp_path / "hf"
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), str(out)]) == 0
    assert not (out / "miditok.json").exists()
    assert "has Key tokens" in (out / "README.md").read_text()
    assert pianolm.load(out).tokenizer.hash == ktok.hash
