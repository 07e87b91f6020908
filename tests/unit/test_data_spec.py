import pytest

from cluster.config import ConfigError
from trainer.data.spec import builtin_specs, load_spec, spec_from_dict

BASE = {
    "name": "t",
    "columns": [{"name": "u", "type": "id"}, {"name": "a", "type": "string"}, {"name": "ts", "type": "timestamp"}],
    "time_column": "ts",
    "event_id": {"derive": ["u", "ts"]},
    "actions": {"column": "a", "values": ["view", "buy"]},
    "label": {"actions": ["buy"]},
    "sparse": [{"name": "user", "column": "u", "dim": 8}],
}


def test_builtin_specs_load():
    assert {"taobao", "movielens100k"} <= set(builtin_specs())
    tb = load_spec("taobao")
    assert [f.name for f in tb.sparse] == ["user", "item", "category"]
    assert tb.label.actions == ("cart", "fav", "buy")
    ml = load_spec("movielens100k")
    assert ml.column_map["user_id"].source_name == "user_id:token"
    assert ml.label.threshold == 4.0


def test_minimal_spec_from_dict():
    spec = spec_from_dict(BASE)
    assert spec.event_id_derive == ("u", "ts")


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"time_column": "nope"}, "time_column names column 'nope'"),
        ({"event_id": {"column": "u", "derive": ["u"]}}, "exactly one of"),
        ({"label": {"actions": ["refund"]}}, "not in actions.values"),
        ({"sparse": [{"name": "user", "column": "u", "dim": 6}]}, "multiple of 4"),
        ({"columns": [{"name": "u", "type": "uuid"}]}, "is not one of"),
        ({"columns": [{"name": "u", "type": "id", "colour": 1}]}, "unknown key"),
        ({"format": "xml"}, "format must be"),
        (
            {"sparse": [{"name": "user", "column": "a", "dim": 8}]},
            "needs an id, int_id, string_id, int or id_list column",
        ),
    ],
)
def test_bad_specs_say_what_to_fix(patch, message):
    with pytest.raises(ConfigError, match=message):
        spec_from_dict({**BASE, **patch})


def test_unknown_spec_name_lists_builtins(tmp_path):
    with pytest.raises(ConfigError, match="built-in"):
        load_spec(str(tmp_path / "missing.yaml"))
