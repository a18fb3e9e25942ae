"""Closed sets of options: one validator, one message, and every Literal-typed dataclass field in
sda_lib checked by it; item representations parsed once; a recommender named by its registry key."""

import dataclasses
import importlib
import pkgutil
from typing import Literal, get_args

import numpy as np
import pytest

import sda_lib
from sda_lib.data.catalogue import DataError
from sda_lib.utils.choices import check_choice, check_fields, literal_fields, options
from sda_lib.utils.registry import Registry

Colour = Literal["red", "green"]


def test_message_names_what_the_options_and_the_value():
    assert check_choice("red", Colour, "colour") == "red"
    with pytest.raises(ValueError) as err:
        check_choice("blue", Colour, "colour")
    assert str(err.value) == "colour must be one of red, green, got 'blue'"
    with pytest.raises(DataError, match=r"^toy size must be one of a, b, got 3$"):
        check_choice(3, ("a", "b"), "toy size", DataError)


def test_options_of_a_literal_an_optional_literal_and_a_mapping():
    assert options(Colour) == ("red", "green")
    assert options(Colour | None) == ("red", "green", None)
    assert options({"x": 1, "y": 2}) == ("x", "y")
    assert check_choice(None, Colour | None, "colour") is None
    with pytest.raises(TypeError, match="not a closed set"):
        options(int)


@dataclasses.dataclass
class Paint:
    colour: Colour = "red"
    finish: Literal["matt", "gloss"] | None = None
    coats: int = 1

    def __post_init__(self):
        check_fields(self)


def test_check_fields_reads_the_annotations():
    assert literal_fields(Paint) == {"colour": ("red", "green"), "finish": ("matt", "gloss", None)}
    Paint(finish="gloss")
    with pytest.raises(ValueError, match=r"^finish must be one of matt, gloss, None, got 'satin'$"):
        Paint(finish="satin")


def _sda_lib_dataclasses():
    """Every dataclass defined in sda_lib with a Literal-typed field."""
    found = {}
    for module in pkgutil.walk_packages(sda_lib.__path__, "sda_lib."):
        if module.name.endswith("__main__"):
            continue
        namespace = importlib.import_module(module.name)
        for obj in vars(namespace).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.name:
                if literal_fields(obj):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_literal_field_in_sda_lib_refuses_an_unknown_value():
    found = _sda_lib_dataclasses()
    assert {
        "sda_lib.method.adapt.AdaptConfig",
        "sda_lib.method.moda.MoDAConfig",
        "sda_lib.method.prompts.Prompts",
        "sda_lib.data.prepare.PrepareParams",
        "sda_lib.recsys.train.TrainConfig",
    } <= set(found)
    checked = 0
    for cls in found.values():
        cls()  # the defaults are among the options
        for name, allowed in literal_fields(cls).items():
            message = f"{name} must be one of {', '.join(map(str, allowed))}, got 'x'"
            with pytest.raises(ValueError) as err:
                cls(**{name: "x"})
            assert str(err.value) == message, cls
            checked += 1
    assert checked >= 10


def test_examples_of_the_one_message():
    from sda_lib.data.prepare import PrepareParams
    from sda_lib.method.adapt import AdaptConfig
    from sda_lib.recsys.train import TrainConfig

    with pytest.raises(ValueError, match=r"^loss must be one of cmsa, infonce, text-views, got 'x'$"):
        AdaptConfig(loss="x")
    with pytest.raises(ValueError, match=r"^recipe must be one of 5core, sda, got 'x'$"):
        PrepareParams(recipe="x")
    with pytest.raises(ValueError, match=r"^improve must be one of any, all, got 'x'$"):
        TrainConfig(improve="x")


def test_option_tables_are_keyed_by_their_literal():
    from sda_lib.data import prepare, toy
    from sda_lib.recsys import presets, sequential

    assert tuple(prepare.RECIPES) == get_args(prepare.Recipe)
    assert tuple(toy.SIZES) == get_args(toy.ToySizeName)
    assert tuple(toy.PREFERENCES) == get_args(toy.Preferences)
    assert tuple(presets.PRESETS) == get_args(presets.PresetName)
    assert tuple(sequential.NEGATIVES) == get_args(sequential.Negatives)


def test_item_repr_parses_once_and_prints_its_text():
    from sda_lib.recsys.base import ITEM_REPRS, ItemRepr, resolve_item_repr

    parsed = {text: ItemRepr.parse(text) for text in ITEM_REPRS}
    assert parsed == {
        "id": ItemRepr(ids=True, features=False),
        "features": ItemRepr(ids=False, features=True),
        "id+features": ItemRepr(ids=True, features=True),
    }
    assert {str(r) for r in parsed.values()} == set(ITEM_REPRS)
    assert ItemRepr.parse(parsed["id"]) is parsed["id"]
    with pytest.raises(ValueError, match=r"^item_repr must be one of id, features, id\+features, got 'ids'$"):
        ItemRepr.parse("ids")
    with pytest.raises(ValueError, match="needs ID embeddings, features or both"):
        ItemRepr(ids=False, features=False)
    assert resolve_item_repr(None, None) == parsed["id"]
    with pytest.raises(ValueError, match="item_repr='features' needs a feature table"):
        resolve_item_repr("features", None)


def test_a_recommender_is_named_by_its_registry_key_alone():
    from sda_lib.recsys.base import RECOMMENDERS, Recommender

    for key in RECOMMENDERS:
        cls = RECOMMENDERS[key]
        assert "name" not in vars(cls), f"{cls.__qualname__} spells its name a second time"
        assert RECOMMENDERS.name_of(cls) == key
    model = object.__new__(RECOMMENDERS["sasrec"])
    assert model.name == "sasrec"

    class Unregistered(Recommender):
        pass

    assert object.__new__(Unregistered).name == "Unregistered"


def test_name_of_gives_the_key_or_the_default():
    things: Registry[object] = Registry("thing")
    marker = object()
    things.register("a", marker)
    assert things.name_of(marker) == "a"
    assert things.name_of(np.float64(1.0)) is None
    assert things.name_of(1, default="none") == "none"
