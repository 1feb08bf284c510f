"""Management suggestion: Bayes decision over an editable cost table (skin_core.management)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_core.errors import ConfigError
from skin_core.io import to_json
from skin_core.management import (
    ACTIONS,
    DEFAULT_COSTS,
    REFER,
    CostTable,
    canonical_action,
    cost_table_yaml,
    decision_boundaries,
    default_cost_table,
    load_cost_table,
    read_cost_table,
    save_cost_table,
    suggest_management,
)
from skin_core.predict import PredictionResult

ISIC = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
HAM = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
ROOT = Path(__file__).resolve().parents[1]


def result(probs: dict[str, float], *, meta: dict[str, float] | None = None, refer: bool = False,
           reasons: tuple[str, ...] = (), ood: bool = False, error: str | None = None,
           classes: tuple[str, ...] = ISIC) -> PredictionResult:
    """A hand-made result; classes not named get probability 0."""
    if error:
        return PredictionResult(image="bad.jpg", image_id="bad", error=error)
    full = {c: float(probs.get(c, 0.0)) for c in classes}
    mp = None if meta is None else {c: float(meta.get(c, 0.0)) for c in classes}
    use = mp or full
    label = max(use, key=use.get)
    return PredictionResult(
        image="x.jpg", image_id="x", label=label, probs=full, meta_probs=mp,
        prediction_set=(label,), quality={"blur_score": 0.9, "is_blurry": False},
        referral={"refer": refer or ood, "reasons": list(reasons), "risk": 0.1},
        ood={"score": 0.93, "threshold": 0.71, "flagged": ood} if ood else {})


def expected(table: CostTable, probs: dict[str, float]) -> dict[str, float]:
    """Expected cost of each action, computed independently of the module."""
    return {a: sum(table.cost(a, c) * p for c, p in probs.items()) for a in table.actions}


# ---- Bayes decision ------------------------------------------------------------------------


@pytest.mark.parametrize(("probs", "action"), [
    ({"NV": 0.7, "MEL": 0.2, "BKL": 0.1}, "excise"),     # 20 % melanoma: excise (4.0 < 8.8)
    ({"NV": 0.95, "MEL": 0.05}, "monitor"),              # 5 %: follow up (2.95 < 4.75, 5.0)
    ({"NV": 0.99, "MEL": 0.01}, "reassure"),             # 1 %: routine (1.0 < 1.39)
    ({"BKL": 0.8, "BCC": 0.2}, "monitor"),               # BCC grows slowly: follow up
    ({"BKL": 0.6, "BCC": 0.4}, "excise"),
    ({"AK": 0.9, "BKL": 0.1}, "monitor"),                # AK: treat and follow
])
def test_bayes_decision_picks_the_cheapest_action(probs: dict[str, float], action: str) -> None:
    table = default_cost_table()
    s = suggest_management(result(probs), table)
    want = expected(table, probs)
    assert s.action == action == min(want, key=want.get)
    assert s.expected_costs == pytest.approx(want, abs=1e-12)
    assert set(s.expected_costs) == set(ACTIONS)
    assert s.table.classes == ISIC and s.probability_source == "ensemble"
    assert f"{want[action]:.2f}" in s.reason and "lowest expected cost" in s.reason


def test_meta_probabilities_are_the_ones_decided_on() -> None:
    r = result({"NV": 1.0}, meta={"NV": 0.7, "MEL": 0.3})
    s = suggest_management(r)
    assert s.action == "excise" and s.probability_source == "meta-classifier"
    assert s.probabilities["MEL"] == pytest.approx(0.3)
    assert "meta-classifier" in s.reason


def test_probabilities_are_normalised_before_expected_costs() -> None:
    s = suggest_management(result({"NV": 0.475, "MEL": 0.025}))  # sums to 0.5
    assert s.expected_costs == pytest.approx(expected(default_cost_table(),
                                                      {"NV": 0.95, "MEL": 0.05}))


def test_editing_the_table_changes_the_suggestion() -> None:
    r = result({"NV": 0.95, "MEL": 0.05})
    table = default_cost_table()
    assert suggest_management(r, table).action == "monitor"
    frame = table.to_frame()
    assert list(frame.index) == list(ACTIONS) and list(frame.columns) == list(ISIC)
    frame.loc["monitor", "MEL"] = 100.0  # this clinic cannot do digital monitoring well
    edited = CostTable.from_frame(frame, classes=ISIC)
    s = suggest_management(r, edited)
    assert s.action == "excise"                      # 4.75 < 5.0 (reassure) < 5.95 (monitor)
    assert s.expected_costs["monitor"] == pytest.approx(0.05 * 100 + 0.95 * 1)
    assert s.table.cost("monitor", "MEL") == 100.0 and s.table.name == "edited"
    # The original is untouched (frozen) and still says monitor.
    assert suggest_management(r, table).action == "monitor"


def test_ties_go_to_the_first_action_of_the_table() -> None:
    t = CostTable(("reassure", "excise"), ("MEL", "NV"), ((1.0, 0.0), (0.0, 1.0)))
    assert suggest_management(result({"MEL": 0.5, "NV": 0.5}, classes=("MEL", "NV")),
                              t).action == "reassure"
    t2 = CostTable(("excise", "reassure"), ("MEL", "NV"), ((0.0, 1.0), (1.0, 0.0)))
    assert suggest_management(result({"MEL": 0.5, "NV": 0.5}, classes=("MEL", "NV")),
                              t2).action == "excise"


def test_out_of_distribution_and_unreadable_get_refer_with_the_reason() -> None:
    s = suggest_management(result({"MEL": 0.9, "NV": 0.1}, ood=True))
    assert s.action == REFER and not s.suggested and s.expected_costs == {}
    assert "does not look like the dermoscopic images" in s.reason and "0.93" in s.reason
    bad = suggest_management(result({}, error="bad.jpg is not an image Pillow can read."))
    assert bad.action == REFER and "not an image Pillow can read" in bad.reason
    assert bad.expected_cost_frame()["expected_cost"].isna().all()
    empty = suggest_management(PredictionResult(image="e.jpg", image_id="e"))
    assert empty.action == REFER and "no usable class probabilities" in empty.reason


def test_a_referred_result_keeps_its_suggestion_and_says_it_is_flagged() -> None:
    s = suggest_management(result({"NV": 0.99, "MEL": 0.01}, refer=True,
                                  reasons=("low_quality",)))
    assert s.action == "reassure" and "flagged for referral (low_quality)" in s.reason


def test_suggestion_record_is_plain_data() -> None:
    s = suggest_management(result({"NV": 0.7, "MEL": 0.3}))
    d = json.loads(to_json(s.to_dict()))
    assert d["action"] == "excise" and d["label"] == "biopsy / excise"
    assert d["table"]["table"]["reassure"]["MEL"] == 100.0
    assert d["expected_costs"]["reassure"] == pytest.approx(30.0)
    frame = s.expected_cost_frame()
    assert frame["suggested"].tolist() == [True, False, False]
    with pytest.raises(AttributeError):
        s.action = "monitor"  # type: ignore[misc]


# ---- vocabularies ---------------------------------------------------------------------------


def test_ham10000_classes_match_ignoring_case_and_akiec_takes_the_worse_of_ak_and_scc() -> None:
    r = result({"akiec": 0.5, "nv": 0.5}, classes=HAM)
    s = suggest_management(r)
    assert s.table.classes == HAM
    # akiec = max(AK, SCC) per action: excise 2, monitor 30, reassure 80.
    assert [s.table.cost(a, "akiec") for a in ACTIONS] == [2.0, 30.0, 80.0]
    assert s.expected_costs == pytest.approx({"excise": 3.5, "monitor": 15.5,
                                              "reassure": 40.0})
    assert s.action == "excise"
    assert any("akiec" in n for n in s.table.notes)


def test_an_akiec_column_serves_ak_and_scc() -> None:
    t = CostTable.from_mapping({
        "excise": {"akiec": 1, "bcc": 0, "bkl": 5, "df": 5, "mel": 0, "nv": 5, "vasc": 5},
        "reassure": {"akiec": 9, "bcc": 30, "bkl": 0, "df": 0, "mel": 100, "nv": 0, "vasc": 0},
    })
    r = t.resolve(ISIC)
    assert r.cost("excise", "AK") == r.cost("excise", "SCC") == 1.0
    assert r.cost("reassure", "SCC") == 9.0 and r.actions == ("excise", "reassure")


def test_custom_model_classes_need_a_table_for_them() -> None:
    custom = ("melanoma", "naevus")
    with pytest.raises(ConfigError, match=r"no cost for class melanoma, naevus of this model"):
        suggest_management(result({"melanoma": 0.5, "naevus": 0.5}, classes=custom))
    t = CostTable.from_mapping({"excise": {"melanoma": 0, "naevus": 5},
                                "reassure": {"melanoma": 100, "naevus": 0}}, classes=custom)
    s = suggest_management(result({"melanoma": 0.1, "naevus": 0.9}, classes=custom), t)
    assert s.action == "excise" and s.expected_costs == pytest.approx({"excise": 4.5,
                                                                       "reassure": 10.0})


# ---- validation -----------------------------------------------------------------------------


def _with(action: str, cls: str, value) -> dict:
    table = {a: dict(row) for a, row in DEFAULT_COSTS.items()}
    table[action][cls] = value
    return table


@pytest.mark.parametrize(("table", "message"), [
    ({**DEFAULT_COSTS, "treat": DEFAULT_COSTS["excise"]},
     r"unknown action 'treat'; use excise, monitor, reassure .*or remove that row\.$"),
    ({a: {**row, "MELANOMA": 1} for a, row in DEFAULT_COSTS.items()},
     r"unknown class 'MELANOMA'; rename it to one of MEL NV .* or akiec .*or remove it\.$"),
    ({a: {c: v for c, v in row.items() if c != "SCC"} for a, row in DEFAULT_COSTS.items()},
     r"has no column for class SCC; a table must give every ISIC 2019 class"),
    (_with("excise", "NV", -5), r"'excise' for class NV .* is -5, below 0; costs are 0 or more"),
    (_with("monitor", "MEL", "high"), r"'monitor' for class MEL .* is the text 'high', not a "
                                      r"number; enter a number of 0 or more\.$"),
    (_with("monitor", "MEL", True), r"is True, not a number"),
    (_with("monitor", "MEL", None), r"'monitor' for class MEL .* is empty"),
    (_with("monitor", "MEL", float("inf")), r"is inf; enter a finite number"),
    (_with("monitor", "MEL", [1, 2]), r"is a list, not a number"),
    ({"excise": DEFAULT_COSTS["excise"]}, r"needs at least two actions"),
    ({"excise": DEFAULT_COSTS["excise"], "biopsy": DEFAULT_COSTS["excise"]},
     r"gives action 'excise' twice"),
    ({a: dict.fromkeys(ISIC, 0) for a in ACTIONS}, r"Every cost .* is 0"),
    ({"excise": {**DEFAULT_COSTS["excise"], "mel": 0}, "reassure": DEFAULT_COSTS["reassure"]},
     r"names a class twice"),
])
def test_validation_sentences(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        CostTable.from_mapping(table)
    assert str(info.value).count("\n") == 0


def test_missing_value_in_one_row_and_model_check() -> None:
    t = {a: dict(row) for a, row in DEFAULT_COSTS.items()}
    del t["monitor"]["DF"]
    with pytest.raises(ConfigError, match=r"row 'monitor' has no value for class DF"):
        CostTable.from_mapping(t)
    with pytest.raises(ConfigError, match=r"unknown class 'MELANOMA'; rename it to one of MEL, "
                                          r"NV\b"):
        CostTable.from_mapping({a: {"MELANOMA": 1, "MEL": 1, "NV": 0} for a in ACTIONS},
                               classes=("MEL", "NV"))


def test_an_emptied_editor_cell_is_named() -> None:
    frame = default_cost_table().to_frame()
    frame.loc["reassure", "BCC"] = np.nan
    with pytest.raises(ConfigError, match=r"'reassure' for class BCC .* is empty"):
        CostTable.from_frame(frame)
    # A frame with the action as a column (st.data_editor with hide_index) works too.
    t = CostTable.from_frame(default_cost_table().to_frame().reset_index())
    assert t.costs == default_cost_table().costs


def test_action_aliases() -> None:
    assert canonical_action("Biopsy/Excise") == "excise"
    assert canonical_action("short-term follow-up") == "monitor"
    assert canonical_action("follow_up") == "monitor"
    assert canonical_action("Routine") == "reassure"
    with pytest.raises(ConfigError, match="unknown action 'wait'"):
        canonical_action("wait")


def test_reward_tables_convert_to_costs_with_the_same_decisions() -> None:
    rewards = {"excise": {"MEL": 10, "NV": -2}, "monitor": {"MEL": -5, "NV": 1},
               "reassure": {"MEL": -50, "NV": 2}}
    t = CostTable.from_mapping(rewards, kind="reward", classes=("MEL", "NV"))
    assert t.costs == ((0.0, 4.0), (15.0, 1.0), (60.0, 0.0))
    assert "reward" in t.notes[0]
    rng = np.random.default_rng(0)
    for p in rng.uniform(0, 1, 50):
        probs = {"MEL": float(p), "NV": float(1 - p)}
        reward = {a: sum(rewards[a][c] * q for c, q in probs.items()) for a in rewards}
        s = suggest_management(result(probs, classes=("MEL", "NV")), t)
        assert s.action == max(reward, key=reward.get)


# ---- files --------------------------------------------------------------------------------


def test_the_shipped_default_file_equals_the_built_in_table() -> None:
    shipped = load_cost_table(ROOT / "configs" / "management-default.json")
    built_in = default_cost_table()
    assert shipped.actions == built_in.actions == ACTIONS
    assert shipped.classes == built_in.classes == ISIC
    assert shipped.costs == built_in.costs
    assert shipped.name == built_in.name


def test_yaml_and_json_round_trip(tmp_path: Path) -> None:
    t = CostTable.from_frame(default_cost_table().to_frame().assign(MEL=[0.0, 55.5, 120.0]),
                             name="my clinic")
    for name in ("clinic.yaml", "clinic.json"):
        path = save_cost_table(t, tmp_path / name)
        back = load_cost_table(path, classes=HAM)
        assert back.costs == t.costs and back.classes == t.classes and back.name == "my clinic"
    assert "reassure:" in cost_table_yaml(t)


def test_an_uploaded_table_is_read_from_its_bytes() -> None:
    data = cost_table_yaml(default_cost_table()).encode()
    t = read_cost_table(data, filename="clinic.yml", classes=HAM)
    assert t.costs == default_cost_table().costs and t.source == "clinic.yml"
    with pytest.raises(ConfigError, match=r"^Cost table file up\.yaml is not UTF-8 text"):
        read_cost_table(b"\xff\xfe\x00", filename="up.yaml")


@pytest.mark.parametrize(("name", "text", "message"), [
    ("t.yaml", "table: [1, 2\n", r"is not valid YAML"),
    ("t.json", "{not json", r"is not valid JSON"),
    ("t.txt", "table: {}", r"must end in \.yaml, \.yml or \.json"),
    ("t.yaml", "costs: {}\n", r"unknown key 'costs'; the keys are name, description"),
    ("t.yaml", "name: x\n", r"has no 'table:' entry"),
    ("t.yaml", "- 1\n", r"must hold a mapping with a 'table:' entry"),
    ("t.yaml", "kind: utility\ntable: {excise: {MEL: 0}, reassure: {MEL: 1}}\n",
     r"has kind 'utility'; use 'cost'"),
])
def test_file_errors_are_one_sentence(tmp_path: Path, name: str, text: str, message: str
                                      ) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_cost_table(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_cost_table(tmp_path / "missing.yaml")


# ---- thresholds -----------------------------------------------------------------------------


def test_default_melanoma_versus_naevus_thresholds_match_the_docs() -> None:
    bounds = decision_boundaries(default_cost_table(), "MEL", "NV")
    assert [a for _, _, a in bounds] == ["reassure", "monitor", "excise"]
    assert bounds[0][1] == pytest.approx(1 / 61) and bounds[1][1] == pytest.approx(1 / 11)
    assert bounds[0][0] == 0.0 and bounds[-1][1] == 1.0
    for lo, hi, action in bounds:  # the suggestion agrees inside every interval
        for p in (lo + (hi - lo) * 0.05, (lo + hi) / 2, hi - (hi - lo) * 0.05):
            assert suggest_management(result({"MEL": p, "NV": 1 - p})).action == action
    docs = (ROOT / "docs" / "management.md").read_text(encoding="utf-8")
    for p in (1 / 61, 1 / 11):
        assert f"{100 * p:.1f} %" in docs
    bcc = decision_boundaries(default_cost_table(), "BCC", "BKL")
    scc = decision_boundaries(default_cost_table(), "SCC", "NV")
    for b in (bcc, scc):
        for _, hi, _ in b[:-1]:
            assert f"{100 * hi:.1f} %" in docs
    assert math.isclose(bcc[1][1], 4 / 14) and math.isclose(scc[1][1], 4 / 34)


def test_to_frame_is_what_the_editor_shows() -> None:
    frame = default_cost_table().to_frame()
    assert isinstance(frame, pd.DataFrame) and frame.index.name == "action"
    assert frame.loc["reassure", "MEL"] == 100.0 and frame.dtypes.eq(float).all()
