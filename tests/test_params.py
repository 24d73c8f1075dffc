import copy
import dataclasses

import pytest
import yaml

from pipeline.params import Params, ParamsError, load_params, parse_params
from tests.conftest import ROOT, project_params_dict


def test_params_cannot_change_under_a_stage():
    """Every section, at any depth, is a frozen dataclass and holds no list: no code can
    change a value another part of the run reads."""
    seen = []

    def walk(value, key):
        if dataclasses.is_dataclass(value):
            assert type(value).__dataclass_params__.frozen, key
            seen.append(key)
            for field in dataclasses.fields(value):
                walk(getattr(value, field.name), f"{key}.{field.name}")
        elif isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}")
        else:
            assert not isinstance(value, list | set | bytearray), key

    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    walk(params, "params")
    assert "params.model.presets.cpu" in seen and len(seen) >= 10


def _error(mutate) -> str:
    mapping = copy.deepcopy(project_params_dict())
    mutate(mapping)
    with pytest.raises(ParamsError) as caught:
        parse_params(mapping, "params.yaml")
    return str(caught.value)


def test_unknown_key_is_named():
    message = _error(lambda m: m["data"].update(hieght=32))
    assert message.startswith("params.yaml: data.hieght: unknown key")


def test_unknown_section_is_named():
    assert "params.yaml: trian: unknown key" in _error(lambda m: m.update(trian={}))


def test_missing_key_is_named():
    assert "params.yaml: augment.elastic: missing key" in _error(
        lambda m: m["augment"].pop("elastic")
    )


def test_wrong_types_are_named():
    assert "data.height: expected an integer, got '32'" in _error(
        lambda m: m["data"].update(height="32")
    )
    assert "data.height: expected an integer" in _error(lambda m: m["data"].update(height=32.5))
    assert "augment.enabled: expected true or false" in _error(
        lambda m: m["augment"].update(enabled=1)
    )
    assert "synthetic.train_fonts: expected a list" in _error(
        lambda m: m["synthetic"].update(train_fonts="kalam")
    )
    assert "data.source: expected 'synthetic' or 'hub'" in _error(
        lambda m: m["data"].update(source="iam")
    )


def test_yaml_exponent_without_dot_gets_a_hint():
    mapping = yaml.safe_load("x: 5e-4\ny: 5.0e-4")
    assert mapping == {"x": "5e-4", "y": 5.0e-4}  # the YAML 1.1 trap this guards against
    message = _error(lambda m: m["augment"].update(brightness=mapping["x"]))
    assert "augment.brightness: expected a number" in message and "write 5.0e-4" in message


def test_int_is_accepted_for_float():
    mapping = copy.deepcopy(project_params_dict())
    mapping["augment"]["brightness"] = 1
    params = parse_params(mapping)
    assert params.augment.brightness == 1.0 and isinstance(params.augment.brightness, float)


def test_out_of_range_values_are_named():
    assert "data.height: must be >= 8" in _error(lambda m: m["data"].update(height=4))
    assert "data.max_bad_fraction" in _error(lambda m: m["data"].update(max_bad_fraction=1.5))
    assert "augment.probability" in _error(lambda m: m["augment"].update(probability=-0.1))
    assert "preview.variants: must be >= 1" in _error(lambda m: m["preview"].update(variants=0))
    message = _error(lambda m: m["synthetic"].update(join_letters=1.5))
    assert "synthetic.join_letters: must be in [0, 1], got 1.5" in message
    message = _error(lambda m: m["augment"].update(zoom_amount=1.5))
    assert "augment.zoom_amount: must be in [0, 1], got 1.5" in message
    message = _error(lambda m: m["evaluate"].update(lm_word_bonus=-1.0))
    assert "evaluate.lm_word_bonus: must be >= 0" in message


def test_test_fonts_must_be_held_out():
    message = _error(lambda m: m["synthetic"].update(test_fonts=["kalam"]))
    assert "synthetic.test_fonts: must be held out" in message and "kalam" in message


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ParamsError, match=r"missing\.yaml: file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ParamsError, match=r"bad\.yaml: not valid YAML"):
        load_params(bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source": "pages", "pages_dir": ""}, "data.pages_dir: must name a folder of pages"),
        ({"pages_group_regex": "(unclosed"}, "data.pages_group_regex: not a regular expression"),
        ({"pages_split_ratio": [0.8, 0.2]}, "data.pages_split_ratio: needs three shares"),
        ({"pages_split_ratio": [0.8, 0.1, 0.2]}, "data.pages_split_ratio: needs three shares"),
        ({"pages_min_chars": 0}, "data.pages_min_chars: must be >= 1"),
    ],
)
def test_pages_settings_are_checked(change, message):
    assert message in _error(lambda m: m["data"].update(change))


def test_a_batch_budget_must_hold_the_widest_legal_line_as_augmented():
    # the default: 60:1 at 32 px = 1,920 px; padded for the affine step 1,952; stretched
    # by up to 1.25 first, 2,432 px
    def budgets(train: int, evaluate: int, stretch: bool):
        def mutate(m):
            m["train"]["max_batch_pixels"] = train
            m["evaluate"].update(max_batch_pixels=evaluate, scales=[1.0])
            m["augment"].update(stretch=stretch, stretch_amount=0.25)

        return mutate

    error = _error(budgets(10**6, 1919 * 32, False))
    assert "evaluate.max_batch_pixels: 61408 cannot hold" in error and "augmented" not in error
    error = _error(budgets(1951 * 32, 10**6, False))
    assert "train.max_batch_pixels" in error and "= 1920 px, 1952 px once augmented" in error
    assert "2432 px once augmented" in _error(budgets(2431 * 32, 10**6, True))
    mapping = copy.deepcopy(project_params_dict())
    budgets(2432 * 32, 1920 * 32, True)(mapping)
    parse_params(mapping, "params.yaml")  # both fit exactly
    # zoomed by up to 1.5 after the stretch: 1,920 x 1.25 x 1.5 + 32 = 3,632 px, batched
    # padded to 3,648
    mapping["augment"].update(zoom=True, zoom_amount=0.5)
    with pytest.raises(ParamsError, match="3632 px once augmented"):
        parse_params(mapping, "params.yaml")
    mapping["train"]["max_batch_pixels"] = 3648 * 32
    parse_params(mapping, "params.yaml")


def test_reading_sizes_must_hold_the_line_as_stored_and_stay_in_range():
    message = _error(lambda m: m["evaluate"].update(scales=[0.9, 1.1]))
    assert "evaluate.scales: needs 1.0 (each line as stored)" in message
    assert "evaluate.scales" in _error(lambda m: m["evaluate"].update(scales=[1.0, 3.0]))
    # a line read 1.25x as large is 1.25x as wide: the widest legal one must still fit
    widest = 60 * 32  # data.max_aspect_ratio x the cpu preset's height
    error = _error(lambda m: m["evaluate"].update(scales=[1.0, 1.25], max_batch_pixels=widest * 32))
    assert "evaluate.max_batch_pixels" in error and "2400 px read 1.25x as large" in error
