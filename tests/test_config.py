"""Configs (nas.config, nas.yaml_loader): typed blocks, YAML with YAML 1.2 floats and duplicate-key
errors, --set overrides, and the one validation (check_config) - every problem one line naming
the file and the field."""

from __future__ import annotations

import pytest
import yaml
from PIL import Image

from nas.config import Config, dump_config, load_config
from nas.errors import UsageError
from nas.restoration.task import Task


def write(tmp_path, text: str, name: str = "c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_round_trip(tmp_path):
    cfg = load_config(None)
    assert isinstance(cfg.task, Task) and cfg.task.to_dict() == {"name": "sr", "scale": 2}
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("text, value", [
    ("search: {lr: 1e-4}", 1e-4), ("search: {lr: 5E-3}", 5e-3), ("search: {lr: 2.0e-4}", 2e-4),
    ("search: {lr: .5}", 0.5), ("search: {lr: 3}", 3.0)])
def test_scientific_notation_in_files(tmp_path, text, value):
    assert load_config(write(tmp_path, text)).search.lr == value


def test_scientific_notation_in_set():
    cfg = load_config(None, ["search.lr=1e-3", "search.penalty.lambda=2E-2",
                             "search.alpha_steps=400"])
    assert cfg.search.lr == 1e-3 and cfg.search.penalty.lam == 2e-2
    assert cfg.search.alpha_steps == 400 and isinstance(cfg.search.alpha_steps, int)


@pytest.mark.parametrize("text, overrides, message", [
    ("serch: {steps: 3}", (), r"serch: unknown key \(did you mean 'search'\?\)"),
    ("search: {alpha_steps: many}", (), r"search\.alpha_steps: expected an integer, got 'many'"),
    ("search: {steps: 300}", (), r"search\.steps: replaced by search\.supernet_steps and "
                                 r"search\.alpha_steps"),
    ("search: {lr: abc}", (), r"search\.lr: expected a number"),
    ("search: {steps: 3}\nsearch: {lr: 1}\n", (), r"duplicated key 'search' \(first at line 1\), "
                                                 r"again at line 2"),
    ("search:\n  steps: 3\n  steps: 4\n", (), r"duplicated key 'steps'.*line 3"),
    ("search: [1, 2", (), r"invalid YAML at line"),
    ("- a\n- b\n", (), r"top level must be a mapping"),
    ("task: {name: sr, scale: 5}", (), r"task\.scale: must be one of 2, 3, 4"),
    ("task: {name: sr, scal: 2}", (), r"task\.scal: unknown key \(did you mean 'scale'\?\)"),
    ("task: {name: deniose}", (), r"task\.name: unknown task 'deniose' \(did you mean 'denoise'"),
    ("", ("search.lr_size=[a,5]",), r"search\.lr_size: expected \[H, W\] \(positive integers\)"),
    ("", ("search.lr_size=[4]",), r"search\.lr_size: expected \[H, W\]"),
    ("", ("search.steps",), r"--set search\.steps: expected key=value"),
    ("", ("search.largest_path_steps=900",), r"search\.largest_path_steps: must be in 0\.\."),
    ("", ("search.derive=best",), r"search\.derive: 'budget' or 'argmax'"),
    ("", ("search.derive=budget",), r"search\.derive: 'budget' needs search\.penalty\.target"),
    ("", ("score.patch_size=25",), r"score\.patch_size: must be >= 8 and a multiple of 2"),
    ("", ("score.seeds=0",), r"score\.seeds: must be >= 1"),
    ("", ("data.score_fraction=0.9",), r"data\.score_fraction: must be in \[0, 1\) with"),
    ("", ("data.groups=[[astronaut, nobody]]",), r"data\.groups\[0\]: no image 'nobody'"),
    ("", ("search.penalty.kind=hinge",), r"search\.penalty\.target_gflops: required"),
    ("", ("search.penalty.kind=budgt",), r"did you mean 'budget'"),
    ("", ("search.tau.start=0",), r"search\.tau: start and end must be > 0"),
    ("", ("retrain.lr=-1",), r"retrain\.lr: must be > 0"),
    ("", ("retrain.milestones=[1.5]",), r"retrain\.milestones\[0\]: expected a fraction"),
    ("", ("retrain.milestones=[a]",), r"retrain\.milestones\[0\]"),
    ("", ("retrain.val_set=Set6",), r"retrain\.val_set: unknown benchmark set 'Set6' \(did you "
                                    r"mean 'Set5'\?\)"),
    ("", ("space.backbone={preset: edsr-tiny, num_feats: 8}",),
     r"space\.backbone\.num_feats: unknown keyword of backbone 'edsr-tiny' \(did you mean "
     r"'num_feat'\?\)"),
    ("", ("space.backbone={preset: edsr-huge}",), r"space\.backbone: unknown backbone"),
    ("", ("space.ops=[skip, aclaa]",), r"space\.ops: unknown operator 'aclaa' \(did you mean"),
    ("", ("space.keys=[0, two]",), r"space\.keys\[1\]: expected an integer, got .two."),
    ("", ("data.images=[astronot]",), r"data\.images: unknown built-in photo 'astronot' \(did you "
                                      r"mean 'astronaut'\?\)"),
    ("", ("data.patch_size=45",), r"data\.patch_size: 45 is not a multiple of 2"),
    ("", ("data.patch_size=4000",), r"data\.patch_size: 4000 is larger than image"),
    ("", ("data.val_fraction=1.5",), r"data\.val_fraction: must be in \(0, 1\)"),
    ("", ("data.images=[astronaut]",), r"data\.source: builtin: 1 image\(s\), need at least 3"),
    ("", ("name=a/b",), r"name: a non-empty name without '/'"),
])
def test_bad_configs_are_one_line_naming_file_and_field(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(UsageError, match=message) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg


def test_files_that_are_not_configs(tmp_path):
    with pytest.raises(UsageError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(UsageError, match="is a folder, expected a config file"):
        load_config(tmp_path)
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(UsageError, match=r"not a text config file \(invalid UTF-8"):
        load_config(binary)


def test_data_folder_checks(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=r"data\.source: .*no images"):
        load_config(None, [f"data.source={empty}"])
    with pytest.raises(UsageError, match=r"data\.source: .*does not exist"):
        load_config(None, [f"data.source={tmp_path / 'nope'}"])
    small = tmp_path / "small"
    small.mkdir()
    for i, size in enumerate([(64, 64), (64, 64), (30, 40)]):
        Image.new("RGB", size).save(small / f"im{i}.png")
    with pytest.raises(UsageError, match=r"data\.patch_size: 48 is larger than image 'im2' \(30x40\)"):
        load_config(None, [f"data.source={small}"])
    with pytest.raises(UsageError, match=r"score\.patch_size: 48 is larger than image 'im2'"):
        load_config(None, [f"data.source={small}", "data.patch_size=24"])
    cfg = load_config(None, [f"data.source={small}", "data.patch_size=24", "score.patch_size=24"])
    assert cfg.data.source == str(small)


def test_config_to_dict_is_yaml_ready():
    d = Config().to_dict()
    assert d["task"] == {"name": "sr", "scale": 2}
    assert yaml.safe_load(yaml.safe_dump(d)) == d
