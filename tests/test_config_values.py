import re

import pytest

from flopwise.config_values import check_value
from flopwise.data.config import load_config as load_pipeline_config
from flopwise.errors import ConfigError
from flopwise.train.config import load_config


@pytest.mark.parametrize("expected", [float, "float"])
def test_ints_widen_to_float_from_types_and_annotation_strings(expected):
    value = check_value("train.lr", 3, expected)
    assert value == 3.0 and isinstance(value, float)


@pytest.mark.parametrize(
    ("value", "expected", "message"),
    [
        (True, int, "x = True: expected int, got bool"),  # bool is an int subclass; still refused
        ("8", "int", "x = '8': expected int, got str"),
        ("yes", bool, "x = 'yes': expected true or false"),
        ("fast", float, "x = 'fast': expected float"),
        (3, str, "x = 3: expected str, got int"),
        (["a", 1], "list[str]", "x = ['a', 1]: expected a list of strings"),
    ],
)
def test_wrong_types_name_the_key_the_value_and_the_expectation(value, expected, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        check_value("x", value, expected)


def test_job_and_pipeline_configs_report_a_wrong_type_alike(tmp_path):
    with pytest.raises(ConfigError, match=r"train.steps = 'ten': expected int, got str"):
        load_config(overrides=['train.steps="ten"'])
    cfg = tmp_path / "p.toml"
    cfg.write_text('[[sources]]\ntype = "files"\npath = "."\nglob = "*.py"\nfiles_per_unit = "many"\n')
    with pytest.raises(ConfigError, match=r"files_per_unit = 'many': expected int, got str"):
        load_pipeline_config(cfg)
