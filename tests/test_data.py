"""model.data: training windows are a pure function of (seed, rank, batch number); the validation
set covers every val token exactly once, in order, never crossing a song boundary."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.data import TrainWindows, ValWindows, WindowConfig, WindowDataModule, val_windows


def songs_array(lengths, seed=0):
    """Songs of the given lengths (each BOS=1 ... EOS=2, body ids >= 3) concatenated, with offsets."""
    rng = np.random.default_rng(seed)
    songs = [np.concatenate([[1], rng.integers(3, 50, size=n - 2), [2]]) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.concatenate(songs).astype(np.uint16), offsets


def test_train_windows_are_shifted_slices_of_the_stream():
    tokens, _ = songs_array([300, 500, 200])
    ds = TrainWindows(tokens, block_size=32, batch_size=4, seed=7)
    x, y = ds.batch(3)
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])                        # targets are inputs shifted by one
    stream = torch.from_numpy(tokens.astype(np.int64))
    for row in x:                                                   # every row is a real slice
        starts = [s for s in range(len(tokens) - 32) if torch.equal(stream[s:s + 32], row)]
        assert starts


def test_train_stream_is_a_function_of_seed_rank_and_position():
    tokens, _ = songs_array([400, 400, 400])
    a = TrainWindows(tokens, 16, 8, seed=1, rank=0)
    again = TrainWindows(tokens, 16, 8, seed=1, rank=0, position=lambda: 5)
    other_rank = TrainWindows(tokens, 16, 8, seed=1, rank=1)
    other_seed = TrainWindows(tokens, 16, 8, seed=2, rank=0)
    it = iter(again)
    assert torch.equal(next(it)[0], a.batch(5)[0])                  # resuming at 5 continues with batch 5
    assert torch.equal(next(it)[0], a.batch(6)[0])
    assert not torch.equal(a.batch(0)[0], other_rank.batch(0)[0])   # DDP ranks see different windows
    assert not torch.equal(a.batch(0)[0], other_seed.batch(0)[0])
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])


def test_every_window_start_is_drawn_so_the_last_token_is_a_target_too():
    tokens = np.arange(20, dtype=np.uint16)
    ds = TrainWindows(tokens, block_size=16, batch_size=64, seed=0)  # 4 possible windows of 17
    firsts = {int(ds.batch(k)[0][i, 0]) for k in range(8) for i in range(64)}
    assert firsts == {0, 1, 2, 3}
    _, y = ds.batch(0)
    assert int(y.max()) == 19
    shortest = TrainWindows(np.arange(17, dtype=np.uint16), block_size=16, batch_size=2, seed=0)
    x, y = shortest.batch(0)  # exactly one window: the whole split
    assert x[0].tolist() == list(range(16)) and y[0].tolist() == list(range(1, 17))


def test_a_share_of_windows_begins_at_a_song_start():
    tokens, offsets = songs_array([300, 500, 200, 400])
    plain = TrainWindows(tokens, 32, 64, seed=3)
    ds = TrainWindows(tokens, 32, 64, seed=3, song_starts=offsets[:-1], song_start_share=0.25)
    firsts = torch.cat([ds.batch(k)[0][:, 0] for k in range(20)])
    share = float((firsts == 1).float().mean())  # BOS is id 1, and only song starts hold it
    assert 0.18 < share < 0.32                   # 25% asked, 1,280 windows drawn
    plain_firsts = torch.cat([plain.batch(k)[0][:, 0] for k in range(20)])
    assert float((plain_firsts == 1).float().mean()) < 0.02  # random crops: 4 starts in 1,368
    # A share of 0 is the old stream, bit for bit; song starts too late for a window are never used.
    zero = TrainWindows(tokens, 32, 64, seed=3, song_starts=offsets[:-1], song_start_share=0.0)
    assert torch.equal(zero.batch(4)[0], plain.batch(4)[0])
    with pytest.raises(ValueError, match="needs the training split's song starts"):
        TrainWindows(tokens, 32, 8, seed=3, song_starts=np.array([len(tokens) - 10]), song_start_share=0.5)
    with pytest.raises(ValueError, match="song_start_share"):
        TrainWindows(tokens, 32, 8, seed=3, song_start_share=1.5, song_starts=offsets[:-1])


def test_too_short_training_split_is_a_clear_error():
    with pytest.raises(ValueError, match="block_size"):
        TrainWindows(np.arange(10, dtype=np.uint16), block_size=16, batch_size=2, seed=0)


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_val_windows_predict_every_token_after_bos_exactly_once(block):
    lengths = [5, 64, 65, 130, 2]
    tokens, offsets = songs_array(lengths, seed=3)
    ds = ValWindows(tokens, offsets, block_size=block)
    predicted = []
    for i in range(len(ds)):
        x, y = ds[i]
        n = int((y >= 0).sum())
        assert torch.all(y[n:] == -1) and torch.all(y[:n] >= 0)   # padding only at the end
        assert torch.equal(x[1:n], y[:n - 1])
        song, start, _ = ds.rows[i]
        assert offsets[song] <= start and start + n < offsets[song + 1] + 1  # stays inside its song
        predicted.extend(y[:n].tolist())
    expected = [t for s in range(len(lengths)) for t in tokens[offsets[s] + 1:offsets[s + 1]].tolist()]
    assert predicted == expected                                    # in order, each once, no BOS


def test_val_windows_split_across_ranks_without_overlap():
    tokens, offsets = songs_array([100, 37, 250, 90], seed=4)
    rows = val_windows(offsets, 32)
    shards = [ValWindows(tokens, offsets, 32, rank=r, world_size=3).rows for r in range(3)]
    assert sorted(map(tuple, np.concatenate(shards).tolist())) == sorted(map(tuple, rows.tolist()))


def test_datamodule_without_trainer_serves_rank0_from_position0():
    tokens, offsets = songs_array([300, 300])
    dm = WindowDataModule(tokens, tokens, offsets, WindowConfig(block_size=16, batch_size=3, seed=9))
    x, y = next(iter(dm.train_dataloader()))
    assert torch.equal(x, TrainWindows(tokens, 16, 3, seed=9).batch(0)[0])
    assert dm.state_dict() == {"position": 0, "seed": 9}
    vx, vy = next(iter(dm.val_dataloader()))
    assert vx.shape == (3, 16) and torch.equal(vy[0, :15], vx[0, 1:])


def test_val_songs_subset_is_fixed_spread_and_keeps_whole_songs():
    from model.data import spread_songs, take_songs

    assert spread_songs(10, None).tolist() == list(range(10))
    assert spread_songs(10, 4).tolist() == [0, 3, 6, 9]          # first and last always in
    assert spread_songs(3, 8).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="val_songs"):
        spread_songs(10, 0)
    tokens = np.arange(10)
    offsets = np.array([0, 2, 5, 10])                             # songs [0,1] [2,3,4] [5..9]
    t, o = take_songs(tokens, offsets, np.array([0, 2]))
    assert t.tolist() == [0, 1, 5, 6, 7, 8, 9] and o.tolist() == [0, 2, 7]


def test_transposition_shifts_each_windows_pitches_alone_and_keeps_them_in_range():
    first, last = 30, 41                                            # twelve Pitch ids: 30..41
    tokens, _ = songs_array([400, 400, 400])                        # ids 3..49: some pitches, some not
    plain = TrainWindows(tokens, 32, 256, seed=5)
    moved = TrainWindows(tokens, 32, 256, seed=5, transpose=3, pitch_ids=(first, last))
    x0, y0 = plain.batch(2)
    x, y = moved.batch(2)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(moved.batch(2)[0], x)                        # still a function of the batch number
    w0, w = torch.cat([x0, y0[:, -1:]], 1), torch.cat([x, y[:, -1:]], 1)
    is_pitch = (w0 >= first) & (w0 <= last)
    assert torch.equal(w[~is_pitch], w0[~is_pitch])                 # only pitches move
    assert bool(((w[is_pitch] >= first) & (w[is_pitch] <= last)).all())
    shifts = set()
    for row0, row, p in zip(w0, w, is_pitch):
        d = (row - row0)[p].unique()
        assert len(d) <= 1                                          # one shift per window
        if len(d):
            shifts.add(int(d))
            lo, hi = int(row0[p].min()), int(row0[p].max())
            assert max(-3, first - lo) <= int(d) <= min(3, last - hi)
    assert shifts <= set(range(-3, 4)) and len(shifts) >= 6          # shifts drawn across the range


def test_transposition_near_the_range_edge_and_its_errors():
    from model.data import transpose_windows
    w = np.array([[5, 40, 41, 7], [30, 31, 9, 9], [1, 2, 3, 4]], dtype=np.int64)  # pitches 30..41
    rng = np.random.default_rng(0)
    seen = [set(), set(), set()]
    for _ in range(200):
        out = transpose_windows(w, rng, 4, 30, 41)
        for i in range(3):
            seen[i].add(int((out[i] - w[i]).max() + (out[i] - w[i]).min()))
        np.testing.assert_array_equal(out[2], w[2])                 # no pitch: nothing moves
    assert seen[0] == {-4, -3, -2, -1, 0}                           # at the top: only down
    assert seen[1] == {0, 1, 2, 3, 4}                               # at the bottom: only up
    tokens, _ = songs_array([300])
    with pytest.raises(ValueError, match="Pitch token ids"):
        TrainWindows(tokens, 16, 4, seed=0, transpose=2)
    with pytest.raises(ValueError, match="transpose"):
        TrainWindows(tokens, 16, 4, seed=0, transpose=-1, pitch_ids=(30, 41))
