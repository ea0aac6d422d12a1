import pytest

from flopwise.errors import ConfigError
from flopwise.train.config import config_from_dict, load_config, parse_value


def test_defaults_validate_and_describe_the_demo():
    job = load_config()
    assert job.preset == "tiny" and job.train.steps > 0
    assert job.model_config().lfa is True


def test_toml_then_set_then_direct_overrides(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('preset = "nano"\n[model]\nlfa = false\n[train]\nlr = 1e-3\nsteps = 7\n')
    job = load_config(path, ["train.lr=5e-4", "parallel.tp=2"], **{"train.steps": 9})
    assert (job.preset, job.train.lr, job.train.steps, job.parallel.tp) == ("nano", 5e-4, 9, 2)
    assert job.model_config().lfa is False
    assert config_from_dict(job.to_dict()).to_dict() == job.to_dict()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=fast", "train.lr = 'fast': expected float"),
        ("train.nope=1", "unknown config key 'train.nope'"),
        ("nope.x=1", "unknown config section 'nope'"),
        ("model.hidden=100", "model.hidden = 100: must be divisible by model.heads"),
        ("model.kv_heads=3", "model.kv_heads = 3: must divide model.heads"),
        ("train.steps=0", "train.steps = 0: must be positive"),
        ("train.min_lr=1.0", "train.min_lr = 1.0: must not exceed train.lr"),
        ("parallel.zero=4", "parallel.zero = 4: must be 0, 1, 2 or 3"),
        ("preset=gpt5", "unknown preset 'gpt5'"),
        ("train.lr", "expected KEY=VALUE"),
    ],
)
def test_bad_values_name_the_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_bad_toml_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")


def test_parse_value_reads_toml_literals_and_falls_back_to_strings():
    assert parse_value("3") == 3 and parse_value("1e-3") == 1e-3 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("cpu") == "cpu" and parse_value('"2,2"') == "2,2"
