"""conf/: every group option composes; the rounds differ by exactly what they document; round 4
has 1.5x round 3's non-embedding parameters at every scale; command-line group choices win
over an experiment's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from model.gpt import GPT
from pianolm.config import model_config, mul_int  # importing it registers the mul_int resolver
from pianolm.training import wandb_mode

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
ROUNDS = ["round1", "round2", "round3", "round4"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def cfg_of(*overrides, out="/tmp/pianolm-unused"):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={out}", *overrides])


def flat(cfg) -> dict:
    """Resolved config as {"a.b.c": value}."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node
    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def diff(a, b) -> set[str]:
    """Keys whose values differ; tokenizer keys at field level (tokenizer.beat_res, not its items)."""
    fa, fb = flat(a), flat(b)
    keys = {k for k in fa.keys() | fb.keys() if fa.get(k, object()) != fb.get(k, object())}
    return {".".join(k.split(".")[:2]) if k.startswith("tokenizer.") else k for k in keys}


def test_rounds_exist():
    assert set(ROUNDS) <= set(EXPERIMENTS)


def preset(scale, depth_factor=1):
    """conf/scale/<scale>.yaml on its own, its depth resolved at `depth_factor`."""
    return OmegaConf.merge(OmegaConf.load(CONF / "scale" / f"{scale}.yaml"), {"depth_factor": depth_factor})


@pytest.mark.parametrize("group", ["scale", "trainer", "logger", "callbacks", "paths", "model", "optim",
                                   "datamodule", "data", "tokenizer"])
def test_every_option_of_every_group_composes_and_resolves(group):
    for option in options(group):
        cfg = cfg_of(f"{group}={option}")
        flat(cfg)                                                   # resolves every interpolation
        assert cfg.model.n_layer == preset(option if group == "scale" else "tiny").model.n_layer


# The group files a scale preset sets keys of (conf/scale/*.yaml are `# @package _global_`).
PRESET_GROUPS = {"model": "model/gpt.yaml", "optim": "optim/adamw.yaml", "trainer": "trainer/default.yaml",
                 "datamodule": "datamodule/default.yaml", "callbacks": "callbacks/default.yaml"}


def yaml_keys(path: Path) -> set[str]:
    """The dotted leaf keys a yaml file sets, interpolations unresolved."""
    out = set()

    def walk(node, prefix):
        for k, v in node.items():
            walk(v, f"{prefix}{k}.") if isinstance(v, dict) else out.add(f"{prefix}{k}")
    walk(OmegaConf.to_container(OmegaConf.load(path), resolve=False), "")
    return out


@pytest.mark.parametrize("scale", options("scale"))
def test_a_scale_preset_sets_only_keys_its_groups_define(scale):
    """A misspelt key in a preset would be a new key that nothing reads: each must exist in the
    yaml of its group."""
    own = yaml_keys(CONF / "scale" / f"{scale}.yaml")
    known = {f"{g}.{k}" for g, f in PRESET_GROUPS.items() for k in yaml_keys(CONF / f)}
    assert own and own <= known, f"scale/{scale}.yaml sets keys no group defines: {sorted(own - known)}"


def test_no_config_reads_the_scale_as_a_table():
    """The scale presets set the keys themselves; nothing interpolates `${scale.…}`."""
    assert not [str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml") if "${scale." in p.read_text()]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_start_global_and_set_tags_and_keep_the_seed(experiment):
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_")
    cfg = cfg_of(f"+experiment={experiment}")
    assert experiment in cfg.tags and cfg.round == experiment
    assert cfg.seed == cfg_of().seed and cfg_of(f"+experiment={experiment}", "seed=7").seed == 7
    assert cfg.logger.wandb.group == experiment


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_state_only_what_they_change(experiment):
    """Every key an experiment file sets differs from what its parent (another experiment it
    builds on, else train.yaml with the same group choices) already gives: no restated defaults."""
    own = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"))
    defaults = own.pop("defaults", [])
    parents = [d for d in defaults if isinstance(d, str) and d != "_self_"]
    groups = [f"{k.split()[-1].lstrip('/')}={v}" for d in defaults if isinstance(d, dict) for k, v in d.items()]
    base = cfg_of(*groups, *(f"+experiment={p}" for p in parents))
    cfg = cfg_of(f"+experiment={experiment}")
    keys = []

    def walk(node, prefix):
        for k, v in node.items():
            walk(v, f"{prefix}{k}.") if isinstance(v, dict) else keys.append(f"{prefix}{k}")
    walk(own, "")
    restated = [k for k in keys if OmegaConf.select(cfg, k) == OmegaConf.select(base, k)]
    # a key that depends on the data set (round1's `data.fraction`) may equal the default on one
    # of them; it restates a default only if it does so on every data set the project runs
    for data in ("bundled", "real"):
        if restated:
            base_d, cfg_d = cfg_of(*groups, f"data={data}", *(f"+experiment={p}" for p in parents)), \
                cfg_of(f"+experiment={experiment}", f"data={data}")
            restated = [k for k in restated if OmegaConf.select(cfg_d, k) == OmegaConf.select(base_d, k)]
    assert not restated, f"{experiment}.yaml restates {restated}"


def test_command_line_group_choice_beats_the_experiments_override():
    cfg = cfg_of("+experiment=round3", "scale=tiny", "data=bundled")
    assert cfg.data.name == "bundled"                               # round3 (via round2) says data: piano
    assert cfg.tokenizer.bpe_vocab_size == 0 and cfg.tokenizer.leading_silence == "trim"
    assert cfg_of("+experiment=round3").data.name == "piano"


def _tokenizer_yaml(name):
    return yaml.safe_load((CONF / "tokenizer" / f"{name}.yaml").read_text())


LOG = {"round", "tags", "logger.wandb.group", "logger.wandb.tags"}


def test_round_diffs_are_exactly_the_documented_ones():
    r = {n: cfg_of(f"+experiment={n}") for n in ROUNDS}
    fine, coarse = _tokenizer_yaml("fine"), _tokenizer_yaml("coarse")
    coarse["bpe_vocab_size"] = r["round2"].tokenizer.bpe_vocab_size
    tokenizer_changes = {f"tokenizer.{k}" for k in fine.keys() | coarse.keys() if fine.get(k) != coarse.get(k)}
    # round 1 -> 2: the tokenizer (fine -> coarse, BPE stays on) and the corpus selection
    assert r["round1"].tokenizer.bpe_vocab_size > 0 and r["round2"].tokenizer.bpe_vocab_size > 0
    assert r["round1"].tokenizer.leading_silence == "keep" and r["round2"].tokenizer.leading_silence == "trim"
    assert list(r["round1"].data.only_sources) == ["maestro", "giantmidi"] and r["round2"].data.only_sources is None
    table = {k for k in diff(r["round1"], r["round2"]) if k.startswith("round1_data.")}  # round1's own table
    assert table and "round1_data" not in r["round2"]
    selection = {"data.only_sources", "data.fraction_seed"}                             # fraction: 1 on piano
    assert diff(r["round1"], r["round2"]) - table == tokenizer_changes | selection | LOG
    for data in ("bundled", "real"):                                 # the other rounds read everything
        r1, r2 = cfg_of("+experiment=round1", f"data={data}"), cfg_of("+experiment=round2", f"data={data}")
        assert (r2.data.only_sources, r2.data.fraction) == (None, 1.0)
        assert diff(r1, r2) - table <= tokenizer_changes | {"data.fraction", "data.only_sources", "data.fraction_seed"} | LOG
    # round 2 -> 3: BPE off, nothing else
    assert r["round3"].tokenizer.bpe_vocab_size == 0
    assert diff(r["round2"], r["round3"]) == {"tokenizer.bpe_vocab_size"} | LOG
    # round 3 -> 4: depth only (the factor round 4 sets, and the layers it gives)
    assert diff(r["round3"], r["round4"]) == {"model.n_layer", "depth_factor"} | LOG


def test_round1c_is_round2s_tokenizer_on_round1s_data():
    """The data-vs-grid arm: against round 1 only the tokenizer differs, against round 2 only the
    data selection, on every data set the project runs (its own copy of round 1's table aside)."""
    fine, coarse = _tokenizer_yaml("fine"), _tokenizer_yaml("coarse")
    for data in ("piano", "bundled", "real"):
        r1, r1c, r2 = (cfg_of(f"+experiment={n}", f"data={data}") for n in ("round1", "round1c", "round2"))
        coarse["bpe_vocab_size"] = r2.tokenizer.bpe_vocab_size
        tokenizer_changes = {f"tokenizer.{k}" for k in fine.keys() | coarse.keys() if fine.get(k) != coarse.get(k)}
        assert diff(r1, r1c) == tokenizer_changes | LOG
        assert OmegaConf.to_container(r1c.tokenizer) == OmegaConf.to_container(r2.tokenizer)
        table = {k for k in diff(r1c, r2) if k.startswith("round1_data.")}
        assert diff(r1c, r2) - table <= {"data.only_sources", "data.fraction", "data.fraction_seed"} | LOG
        assert (r1c.data.only_sources, r1c.data.fraction) == (r1.data.only_sources, r1.data.fraction)
    assert list(r1c.data.only_sources) == ["maestro_v2"]  # the real corpora: MAESTRO alone, as round 1


def _cli_cfg_job(*args) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "hydra.run.dir=/tmp/pianolm-unused",
                          "--cfg", "job", "--resolve"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.mark.slow  # two train.py processes (torch and Lightning imported twice)
def test_cfg_job_of_rounds_3_and_4_on_the_command_line():
    r3, r4 = _cli_cfg_job("+experiment=round3"), _cli_cfg_job("+experiment=round4")
    f3, f4 = flat(OmegaConf.create(r3)), flat(OmegaConf.create(r4))
    assert {k for k in f3 if f3[k] != f4.get(k)} == {"model.n_layer", "depth_factor"} | LOG
    assert f4["model.n_layer"] == 1.5 * f3["model.n_layer"]


@pytest.mark.parametrize("scale", options("scale"))
def test_round4_has_one_and_a_half_times_round3_non_embedding_params(scale):
    counts = {}
    for rnd in ("round3", "round4"):
        cfg = cfg_of(f"+experiment={rnd}", f"scale={scale}")
        with torch.device("meta"):                                 # shapes only, no memory
            counts[rnd] = GPT(model_config(cfg, vocab_size=500)).num_params(non_embedding=True)
    assert counts["round4"] / counts["round3"] == pytest.approx(1.5, rel=0.02)


def test_mul_int_refuses_to_round():
    assert mul_int(4, 1.5) == 6
    with pytest.raises(ValueError, match="whole number"):
        mul_int(5, 1.5)


def test_wandb_mode_is_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    assert wandb_mode("auto") == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("auto") == "offline"                  # the environment wins


def test_each_dataclass_checks_its_own_fields_and_check_config_names_the_key():
    """OptimConfig and GPTConfig refuse a bad field themselves (`field=value: ...`); check_config
    builds them and only renames the field to the config key, so the rule lives in one place."""
    from model import GPTConfig
    from model.lit import OptimConfig
    from pianolm.config import ConfigError, check_config

    with pytest.raises(ValueError, match=r"^min_lr=0.5: must be a number in \[0, lr=0.1\]"):
        OptimConfig(lr=0.1, min_lr=0.5)
    with pytest.raises(ValueError, match=r"^warmup_steps=-1: must be an integer >= 0"):
        OptimConfig(warmup_steps=-1)
    with pytest.raises(ValueError, match=r"^n_embd=10 is not divisible by n_head=3: .*\(e.g. n_head=2\)"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match=r"^n_layer=2.5: must be an integer >= 1"):
        GPTConfig(n_layer=2.5)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["optim.warmup_steps=-1"])
    with pytest.raises(ConfigError, match=r"^optim.warmup_steps=-1: must be an integer >= 0$"):
        check_config(cfg)
