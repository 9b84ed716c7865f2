"""Config files, overrides and the messages for bad input."""

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mec.config import CONFIG_DIR, ConfigError, _describe, load_config

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def test_every_shipped_config_loads():
    assert {"digits", "cifar10", "imagenet-100ep", "imagenet-800ep"} <= set(SHIPPED)
    for name in SHIPPED:
        cfg = load_config(name)
        assert cfg.name == name


def test_released_recipe_values():
    cfg = load_config("imagenet-100ep")
    assert cfg.lr == pytest.approx(2.0)  # 0.5 x 1024 / 256
    assert cfg.loss.eps**2 == pytest.approx(64)  # the released code's --eps 64
    assert (cfg.loss.order, cfg.loss.lambda_warmup_factor, cfg.loss.lambda_warmup_epochs) == (4, 8, 10)
    lars = load_config("imagenet-800ep")
    assert (lars.optim.name, lars.optim.batch_size, lars.optim.base_lr) == ("lars", 4096, 0.3)
    assert lars.loss.eps**2 / lars.model.embedding_dim == pytest.approx(0.06, rel=1e-3)


def test_overrides_are_typed_and_nested():
    cfg = load_config("digits", ["loss.eps=0.5", "loss.order=null", "optim.epochs=3",
                                 "data.augment_options.crop_scale=[0.5, 1.0]"])
    assert cfg.loss.eps == 0.5 and cfg.loss.order is None and cfg.optim.epochs == 3
    assert cfg.data.augment_options["crop_scale"] == [0.5, 1.0]
    assert cfg.flat()["loss.eps"] == 0.5


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("loss.epz=1", "unknown key 'loss.epz' (allowed at loss: eps, order"),
        ("optim.name=adam", "bad value for 'optim.name': Input should be 'sgd' or 'lars'; got 'adam'"),
        ("loss.eps=-1", "bad value for 'loss.eps'"),
        ("loss.side=diagonal", "'auto', 'batch' or 'feature'"),
        ("optim.batch_size=many", "bad value for 'optim.batch_size'"),
        ("nonsense", "not of the form section.key=value"),
        ("loss.eps.inner=3", "'eps' is a value, not a section"),
        # A union: one line at the key the user wrote, no pydantic branch names ('constrained-int'), what any
        # branch accepts, and no "(and 1 more problem(s))" for the other branch.
        ("data.num_workers=-2", "digits.yaml with data.num_workers=-2: data.num_workers: expected an int >= 0 or "
                                "'auto', got -2"),
        ("data.num_workers=true", "data.num_workers: expected an int >= 0 or 'auto', got True"),  # not 1 worker
        ("data.num_workers=many", "data.num_workers: expected an int >= 0 or 'auto', got 'many'"),
    ],
)
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=None) as info:
        load_config("digits", [override])
    assert expected in str(info.value)
    assert "constrained-" not in str(info.value) and "literal[" not in str(info.value)
    assert "more problem" not in str(info.value)  # a union's other branch is no second problem


class _Unions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sizes: dict[str, Annotated[int, Field(gt=0, le=8)] | Literal["auto"]] = {}
    crops: list[tuple[float, float] | Literal["full"]] = []
    eps: Annotated[float, Field(gt=0)] | list[Annotated[float, Field(gt=0)]] = 1.0


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({"sizes": {"a": 2, "b": 9}}, "x.yaml: sizes.b: expected an int > 0 and <= 8 or 'auto', got 9"),
        ({"crops": ["full", "wide"]}, "x.yaml: crops.1: expected a list or 'full', got 'wide'"),
        ({"eps": [0.5, -1.0]}, "x.yaml: eps: expected a number > 0 or a list, got [0.5, -1.0]"),
        ({"eps": -1, "sizes": {"a": 0}}, "x.yaml: sizes.a: expected an int > 0 and <= 8 or 'auto', got 0 (and 1 "
                                         "more problem(s))"),
    ],
)
def test_any_union_is_one_line_at_the_users_key_without_branch_names(tree, expected):
    with pytest.raises(ValidationError) as info:
        _Unions.model_validate(tree)
    assert _describe(info.value, "x.yaml", _Unions) == expected


def test_bad_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found; give a YAML file's path or one of: .*digits"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=f"config file '{tmp_path}' is a folder"):
        load_config(tmp_path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"empty.yaml: empty; expected a mapping of sections"):
        load_config(empty)
    twice = tmp_path / "twice.yaml"
    twice.write_text("optim:\n  epochs: 2\noptim:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: line 3: key 'optim' given twice in one section$"):
        load_config(twice)
    with pytest.raises(ConfigError, match=r"digits.yaml with optim.epochs=abc: bad value for 'optim.epochs'"):
        load_config("digits", ["optim.epochs=abc"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    flat = tmp_path / "list.yaml"
    flat.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(flat)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("optim:\n  epochs: 2\n  warmup_epochs: 5\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: .*warmup_epochs \(5.0\) must not exceed epochs \(2\)"):
        load_config(wrong)


def test_symmetric_architecture_needs_the_teacher_off():
    with pytest.raises(ConfigError, match="architecture=symmetric has no teacher .* set model.use_teacher=false"):
        load_config("imagenet-100ep", ["model.architecture=symmetric"])
    cfg = load_config("imagenet-100ep", ["model.architecture=symmetric", "model.use_teacher=false"])
    assert cfg.model.architecture == "symmetric"
