"""One loader for every YAML: found by name or path, YAML errors with their line, every validation
problem on its own line with the file and the key."""

from __future__ import annotations

import pytest

from lrpipe.config_files import ConfigError, read_yaml
from lrpipe.errors import InputError
from lrpipe.pipelines import translate as tr
from lrpipe.pipelines.mix_recipe import load_mix_recipe
from lrpipe.training.config import load_config


def test_yaml_syntax_errors_name_file_line_and_column(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nkind: [qa\nmode: chat\n")
    with pytest.raises(ConfigError, match=r"r.yaml: invalid YAML at line \d+, column \d+"):
        tr.load_recipe(str(p))
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="a recipe is a mapping of keys, not list"):
        tr.load_recipe(str(p))
    with pytest.raises(InputError, match="cannot read the filter chain"):
        read_yaml(tmp_path / "missing.yaml", "filter chain")


def test_every_problem_on_its_own_line_with_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("lr: fast\nwarmup_ratio: 3\nmicro_batch: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p), {})
    lines = str(e.value).splitlines()
    assert len(lines) == len(e.value.problems) >= 2
    assert all(line.startswith(f"{p}: ") for line in lines)
    assert "invalid training configuration" in lines[0]
    assert any("micro_batch" in line for line in lines) and any("lr" in line for line in lines)


def test_shipped_files_by_name_and_unknown_names_list_them():
    assert tr.load_recipe("a-okvqa").name == "a-okvqa" and load_mix_recipe("mm-stage2").name == "mm-stage2"
    with pytest.raises(InputError, match=r"no mixture recipe 'nope' \(have: .*captions-80-20"):
        load_mix_recipe("nope")
