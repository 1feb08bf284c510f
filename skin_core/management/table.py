"""The cost table: actions x true classes, its validation, its files and the defaults.

See :mod:`skin_core.management` for the decision it feeds and docs/management.md for the
defaults' rationale.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.constants import HAM10000_CLASSES, ISIC2019_CLASSES
from skin_core.errors import ConfigError

#: Management actions, from the most to the least invasive (ties go to the first).
ACTIONS: tuple[str, ...] = ("excise", "monitor", "reassure")

#: The action of a result that gets no suggestion (out of distribution, unreadable).
REFER = "refer"

#: Plain-language name of each action.
ACTION_LABELS: dict[str, str] = {
    "excise": "biopsy / excise",
    "monitor": "short-term follow-up (digital monitoring)",
    "reassure": "reassure (routine care)",
    REFER: "refer for specialist review (no suggestion)",
}

#: Other spellings accepted in a table file (lower-case, spaces / hyphens / underscores alike).
_ACTION_ALIASES: dict[str, str] = {
    "biopsy": "excise", "biopsy/excise": "excise", "biopsy or excise": "excise",
    "excision": "excise", "biopsy excise": "excise",
    "follow up": "monitor", "followup": "monitor", "monitoring": "monitor",
    "short term follow up": "monitor", "digital monitoring": "monitor",
    "routine": "reassure", "reassurance": "reassure", "dismiss": "reassure",
    "discharge": "reassure",
}

#: Default costs (action -> ISIC 2019 class -> cost): illustrative, see docs/management.md.
#: 0 is the right action for the class; an unnecessary excision costs 5, a missed melanoma
#: 100 (20 unnecessary excisions), a missed SCC 80 and a missed BCC 30.
DEFAULT_COSTS: dict[str, dict[str, float]] = {
    "excise": {"MEL": 0, "NV": 5, "BCC": 0, "AK": 2, "BKL": 5, "DF": 5, "VASC": 5, "SCC": 0},
    "monitor": {"MEL": 40, "NV": 1, "BCC": 10, "AK": 0, "BKL": 1, "DF": 1, "VASC": 1,
                "SCC": 30},
    "reassure": {"MEL": 100, "NV": 0, "BCC": 30, "AK": 5, "BKL": 0, "DF": 0, "VASC": 0,
                 "SCC": 80},
}

DEFAULT_NAME = "built-in default (illustrative)"

#: Keys of a table file (YAML or JSON).
_FILE_KEYS = ("name", "description", "kind", "units", "table")

_AKIEC = "AKIEC"
#: Every class code a table may name without a model at hand (upper-case).
_KNOWN = frozenset(ISIC2019_CLASSES) | {c.upper() for c in HAM10000_CLASSES}


# --------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class CostTable:
    """Cost of each action (rows) for each true class (columns); the clinic's to edit.

    Attributes
    ----------
    actions: action codes (a subset of :data:`ACTIONS`, at least two), in display order.
    classes: class codes, as the table or the model spells them (unique ignoring case).
    costs: ``costs[i][j]``, the cost of ``actions[i]`` when the true class is ``classes[j]``;
        finite, 0 or more, not all 0. Units are arbitrary (only ratios matter).
    name: what the table is called (shown with every suggestion).
    source: where it came from (a file, the built-in default, an edit on the page).
    notes: how columns were derived (e.g. ``akiec`` from AK and SCC, rewards to costs).

    Raises
    ------
    ConfigError
        On construction, for an unknown action, a duplicate, a shape mismatch or a value
        that is not a number of 0 or more.
    """

    actions: tuple[str, ...]
    classes: tuple[str, ...]
    costs: tuple[tuple[float, ...], ...]
    name: str = "custom"
    source: str = ""
    notes: tuple[str, ...] = ()
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __hash__(self) -> int:  # computed once: the table keys a cache on every suggestion
        return self._hash

    def __post_init__(self) -> None:
        where = f"cost table '{self.name}'"
        actions = tuple(self.actions)
        if len(actions) < 2:
            raise ConfigError(f"The {where} needs at least two actions (of {', '.join(ACTIONS)}) "
                              f"to choose between; got {list(actions)}.")
        for a in actions:
            if a not in ACTIONS:
                raise ConfigError(_unknown_action(a, where))
        if len(set(actions)) != len(actions):
            raise ConfigError(f"The {where} lists an action twice ({list(actions)}); keep one "
                              "row per action.")
        classes = tuple(str(c) for c in self.classes)
        if not classes:
            raise ConfigError(f"The {where} has no class columns; give a cost for every class "
                              "of the model.")
        upper = [c.upper() for c in classes]
        dup = sorted({c for c in classes if upper.count(c.upper()) > 1})
        if dup:
            raise ConfigError(f"The {where} names class {', '.join(dup)} more than once "
                              "(classes are matched ignoring case); keep one column each.")
        if len(self.costs) != len(actions) or any(len(r) != len(classes) for r in self.costs):
            raise ConfigError(f"The {where} must have {len(actions)} rows of {len(classes)} "
                              "costs (one per action and class).")
        costs = tuple(tuple(_number(v, a, c, where) for v, c in zip(row, classes, strict=True))
                      for row, a in zip(self.costs, actions, strict=True))
        if not any(v > 0 for row in costs for v in row):
            raise ConfigError(f"Every cost in the {where} is 0, so no action is preferred; give "
                              "the wrong actions a positive cost.")
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "costs", costs)
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "_hash", hash((actions, classes, costs, self.name, self.source,
                                                self.notes)))

    # ---- views ----------------------------------------------------------------------------

    def matrix(self) -> np.ndarray:
        """``(A, K)`` float array of the costs (a copy)."""
        return np.array(self.costs, dtype=float)

    def cost(self, action: str, cls: str) -> float:
        """The cost of ``action`` for true class ``cls`` (class matched ignoring case)."""
        i = self.actions.index(canonical_action(action))
        j = [c.upper() for c in self.classes].index(str(cls).upper())
        return self.costs[i][j]

    def to_frame(self) -> Any:
        """The table as a DataFrame: index ``action``, one float column per class (the shape
        ``st.data_editor`` edits and :meth:`from_frame` reads back)."""
        import pandas as pd

        return pd.DataFrame(self.matrix(), index=pd.Index(self.actions, name="action"),
                            columns=list(self.classes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``name, source, kind, actions, classes, table, notes`` (``table``:
        action -> class -> cost, the layout of a table file)."""
        return {"name": self.name, "source": self.source, "kind": "cost",
                "actions": list(self.actions), "classes": list(self.classes),
                "table": {a: dict(zip(self.classes, row, strict=True))
                          for a, row in zip(self.actions, self.costs, strict=True)},
                "notes": list(self.notes)}

    # ---- builders ---------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], *, classes: Sequence[str] | None = None,
                     kind: str = "cost", name: str = "custom", source: str = "",
                     where: str | None = None) -> CostTable:
        """A table from ``action -> class -> value`` (the ``table:`` of a file).

        Parameters
        ----------
        table:
            Action (or an alias such as ``biopsy``, ``follow-up``, ``routine``) -> class ->
            number.
        classes:
            The model's classes: every one must get a cost (directly or through the
            ``akiec`` rule) and a column naming none of them nor an ISIC 2019 / HAM10000 code
            is an error. Without it the table must cover all ISIC 2019 or all HAM10000
            classes.
        kind:
            ``"cost"`` (0 or more, lower is better) or ``"reward"`` (any finite number,
            higher is better; converted per class to the regret ``max_a R[a, k] - R[a, k]``,
            which leaves every Bayes decision unchanged).

        Raises
        ------
        ConfigError
            Unknown action or class, missing class, a value that is not a number of 0 or
            more; the sentence names the cell and the fix.
        """
        where = where or f"cost table '{name}'"
        if kind not in ("cost", "reward"):
            raise ConfigError(f"The {where} has kind '{kind}'; use 'cost' (lower is better) or "
                              "'reward' (higher is better).")
        if not isinstance(table, Mapping) or not table:
            raise ConfigError(f"The {where} must map each action ({', '.join(ACTIONS)}) to a "
                              "mapping of class -> value; got "
                              f"{type(table).__name__ if table else 'nothing'}.")
        actions: list[str] = []
        rows: list[Mapping[str, Any]] = []
        for raw, row in table.items():
            a = canonical_action(raw, where=where)
            if a in actions:
                raise ConfigError(f"The {where} gives action '{a}' twice (as '{raw}' too); keep "
                                  "one row per action.")
            if not isinstance(row, Mapping):
                raise ConfigError(f"The {where}'s row '{raw}' must map class -> value; got "
                                  f"{type(row).__name__}.")
            actions.append(a)
            rows.append(row)
        col_names: list[str] = []
        for row in rows:
            for c in row:
                if str(c).upper() not in {n.upper() for n in col_names}:
                    col_names.append(str(c))
        _check_class_names(col_names, classes, where)
        values = []
        for a, row in zip(actions, rows, strict=True):
            by_upper = {str(c).upper(): v for c, v in row.items()}
            if len(by_upper) != len(row):
                raise ConfigError(f"The {where}'s row '{a}' names a class twice (classes are "
                                  "matched ignoring case); keep one value per class.")
            missing = [c for c in col_names if c.upper() not in by_upper]
            if missing:
                raise ConfigError(f"The {where}'s row '{a}' has no value for class "
                                  f"{', '.join(missing)}; give every action a value for every "
                                  "class.")
            values.append([_number(by_upper[c.upper()], a, c, where,
                                   allow_negative=kind == "reward") for c in col_names])
        notes: tuple[str, ...] = ()
        if kind == "reward":
            r = np.array(values, dtype=float)
            values = (r.max(axis=0, keepdims=True) - r).tolist()
            notes = ("converted from a reward table: cost = the best reward for the class minus "
                     "the action's reward (the same decisions)",)
        out = cls(tuple(actions), tuple(col_names), tuple(tuple(r) for r in values), name=name,
                  source=source, notes=notes)
        if classes is not None:
            out.resolve(classes)  # raises for a class of the model the table does not cover
        else:
            _check_complete(out, where)
        return out

    @classmethod
    def from_frame(cls, frame: Any, *, classes: Sequence[str] | None = None,
                   name: str = "edited", source: str = "edited in the app") -> CostTable:
        """A table from a DataFrame shaped as :meth:`to_frame` (index ``action``, one column
        per class), e.g. what ``st.data_editor`` returns; validated as :meth:`from_mapping`.

        An emptied cell (``None``/NaN) is an error naming the cell.
        """
        import pandas as pd

        if not isinstance(frame, pd.DataFrame):
            raise ConfigError(f"A cost table frame must be a DataFrame; got "
                              f"{type(frame).__name__}.")
        df = frame.set_index("action") if "action" in frame.columns else frame
        mapping = {str(a): {str(c): df.at[a, c] for c in df.columns} for a in df.index}
        return cls.from_mapping(mapping, classes=classes, name=name, source=source)

    # ---- resolution to a model's classes ------------------------------------------------------

    def resolve(self, classes: Sequence[str]) -> CostTable:
        """This table with exactly the model's ``classes`` as columns, in their order and
        spelling (``akiec`` / AK / SCC derived as the module docstring says; columns the
        model lacks dropped). Cached per ``(table, classes)``.

        Raises
        ------
        ConfigError
            A class of the model has no cost in this table.
        """
        return _resolved(self, tuple(str(c) for c in classes))[0]


def _check_class_names(names: Sequence[str], classes: Sequence[str] | None, where: str) -> None:
    """Every column must be a model class or a known ISIC 2019 / HAM10000 code."""
    allowed = set(_KNOWN) | {str(c).upper() for c in classes or ()}
    for c in names:
        if c.upper() not in allowed:
            vocab = (", ".join(str(k) for k in classes) if classes is not None
                     else f"{' '.join(ISIC2019_CLASSES)} or {' '.join(HAM10000_CLASSES)}")
            raise ConfigError(f"The {where} has a column for unknown class '{c}'; rename it to "
                              f"one of {vocab} (case does not matter) or remove it.")


def _check_complete(table: CostTable, where: str) -> None:
    """A table loaded without a model must cover ISIC 2019 or HAM10000 completely."""
    gaps = {}
    for vocab_name, vocab in (("ISIC 2019", ISIC2019_CLASSES), ("HAM10000", HAM10000_CLASSES)):
        cols = _columns(table, vocab)[0]
        gaps[vocab_name] = [c for c, col in zip(vocab, cols, strict=True) if col is None]
        if not gaps[vocab_name]:
            return
    vocab_name, missing = min(gaps.items(), key=lambda kv: len(kv[1]))
    raise ConfigError(f"The {where} has no column for class {', '.join(missing)}; a table must "
                      f"give every {vocab_name} class (or every class of the model) a cost for "
                      "each action.")


def _columns(table: CostTable, classes: Sequence[str]
             ) -> tuple[list[np.ndarray | None], list[str]]:
    """Per class, its cost column (or ``None``), and notes on derived columns."""
    c = table.matrix()
    idx = {name.upper(): j for j, name in enumerate(table.classes)}
    cols: list[np.ndarray | None] = []
    notes: list[str] = []
    for cls in classes:
        key = cls.upper()
        if key in idx:
            cols.append(c[:, idx[key]])
        elif key == _AKIEC and "AK" in idx and "SCC" in idx:
            cols.append(np.maximum(c[:, idx["AK"]], c[:, idx["SCC"]]))
            notes.append(f"{cls}: per action the larger of the AK and SCC costs (HAM10000's "
                         "akiec covers both)")
        elif key in ("AK", "SCC") and _AKIEC in idx:
            cols.append(c[:, idx[_AKIEC]])
            notes.append(f"{cls}: the akiec column (HAM10000's akiec covers AK and SCC)")
        else:
            cols.append(None)
    return cols, notes


@functools.lru_cache(maxsize=64)
def _resolved(table: CostTable, classes: tuple[str, ...]) -> tuple[CostTable, np.ndarray]:
    cols, notes = _columns(table, classes)
    missing = [c for c, col in zip(classes, cols, strict=True) if col is None]
    if missing:
        raise ConfigError(f"The cost table '{table.name}' has no cost for class "
                          f"{', '.join(missing)} of this model; add a column for "
                          f"{'it' if len(missing) == 1 else 'them'} (every class of the model "
                          "needs a cost for each action).")
    m = np.stack(cols, axis=1)  # type: ignore[arg-type]
    if list(classes) == list(table.classes):
        out = table
    else:
        out = CostTable(table.actions, classes, tuple(tuple(r) for r in m.tolist()),
                        name=table.name, source=table.source, notes=(*table.notes, *notes))
    m.setflags(write=False)
    return out, m


def canonical_action(action: Any, *, where: str = "cost table") -> str:
    """The action code for ``action`` or one of its aliases (``biopsy``, ``follow-up``...).

    Raises
    ------
    ConfigError
        Not an action: the sentence names it and lists the actions.
    """
    key = " ".join(str(action).strip().lower().replace("-", " ").replace("_", " ").split())
    if key in ACTIONS:
        return key
    if key in _ACTION_ALIASES:
        return _ACTION_ALIASES[key]
    if key.replace(" ", "") in _ACTION_ALIASES:
        return _ACTION_ALIASES[key.replace(" ", "")]
    raise ConfigError(_unknown_action(action, where))


def _unknown_action(action: Any, where: str) -> str:
    return (f"The {where} has an unknown action '{action}'; use {', '.join(ACTIONS)} (or "
            "biopsy, follow-up, routine) or remove that row.")


def _number(v: Any, action: str, cls: str, where: str, *, allow_negative: bool = False) -> float:
    """One cell as a float, or a sentence naming the cell and the fix."""
    cell = f"The value of '{action}' for class {cls} in the {where}"
    need = "a number" if allow_negative else "a number of 0 or more"
    if isinstance(v, (bool, np.bool_)):
        raise ConfigError(f"{cell} is {v}, not a number; enter {need}.")
    if v is None:
        raise ConfigError(f"{cell} is empty; enter {need}.")
    if isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            raise ConfigError(f"{cell} is the text '{v}', not a number; enter {need}.") from None
    elif isinstance(v, (int, float, np.integer, np.floating)):
        x = float(v)
    else:
        raise ConfigError(f"{cell} is a {type(v).__name__}, not a number; enter {need}.")
    if math.isnan(x):
        raise ConfigError(f"{cell} is empty; enter {need}.")
    if not math.isfinite(x):
        raise ConfigError(f"{cell} is {x}; enter a finite number.")
    if x < 0 and not allow_negative:
        raise ConfigError(f"{cell} is {x:g}, below 0; costs are 0 or more (0 = the right action "
                          "for that class; for a reward table set kind: reward).")
    return x


# --------------------------------------------------------------------------------------------
# defaults, files


@functools.lru_cache(maxsize=1)
def default_cost_table() -> CostTable:
    """The built-in :data:`DEFAULT_COSTS` (illustrative; see docs/management.md)."""
    return CostTable.from_mapping(DEFAULT_COSTS, name=DEFAULT_NAME,
                                  source="skin_core.management.DEFAULT_COSTS")


def load_cost_table(path: str | os.PathLike[str], *, classes: Sequence[str] | None = None
                    ) -> CostTable:
    """Read a table file (``.yaml``/``.yml`` or ``.json``; layout of
    ``configs/management-default.json``)::

        name: my clinic
        kind: cost            # or reward
        table:
          excise:   {MEL: 0, NV: 5, ...}
          monitor:  {...}
          reassure: {...}

    Parameters
    ----------
    classes:
        The model's classes, checked as in :meth:`CostTable.from_mapping`.

    Raises
    ------
    ConfigError
        Missing or unparsable file, an unknown key, action or class, a missing class, a value
        that is not a number of 0 or more.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Cost table file {p} does not exist; check the path "
                          "(configs/management-default.json is an example).")
    return read_cost_table(p.read_bytes(), filename=str(p), classes=classes)


def read_cost_table(data: bytes | str, *, filename: str,
                    classes: Sequence[str] | None = None) -> CostTable:
    """A table from a file's contents (e.g. an upload); ``filename``'s extension says the
    format (``.yaml``/``.yml`` or ``.json``) and it names the table in messages.

    Raises
    ------
    ConfigError
        As :func:`load_cost_table`.
    """
    what = f"Cost table file {filename}"
    suffix = Path(filename).suffix.lower()
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} is not UTF-8 text ({exc.reason}); save it as UTF-8.") from exc
    if suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{what} is not valid JSON ({exc}); fix its syntax.") from exc
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{what} is not valid YAML ({str(exc).splitlines()[0]}); fix its "
                              "syntax.") from exc
    else:
        raise ConfigError(f"{what} must end in .yaml, .yml or .json; got "
                          f"'{Path(filename).suffix or 'no extension'}'.")
    return cost_table_from_document(doc, classes=classes, source=filename,
                                    where=f"cost table {filename}")


def cost_table_from_document(doc: Any, *, classes: Sequence[str] | None = None,
                             source: str = "", where: str = "cost table") -> CostTable:
    """A table from a parsed file (``name``, ``description``, ``kind``, ``units``, ``table``)."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"The {where} must hold a mapping with a 'table:' entry; got "
                          f"{type(doc).__name__}.")
    unknown = [k for k in doc if k not in _FILE_KEYS]
    if unknown:
        raise ConfigError(f"The {where} has unknown key '{unknown[0]}'; the keys are "
                          f"{', '.join(_FILE_KEYS)} (the costs go under 'table:').")
    if "table" not in doc:
        raise ConfigError(f"The {where} has no 'table:' entry; put the action -> class -> cost "
                          "mapping under 'table:'.")
    name = str(doc.get("name") or Path(source).stem or "custom")
    return CostTable.from_mapping(doc["table"], classes=classes, kind=str(doc.get("kind", "cost")),
                                  name=name, source=source, where=where)


def cost_table_yaml(table: CostTable, *, description: str | None = None) -> str:
    """The table as a file :func:`load_cost_table` reads back (for download or saving)."""
    import yaml

    doc: dict[str, Any] = {"name": table.name}
    if description or table.notes:
        doc["description"] = description or "; ".join(table.notes)
    doc["kind"] = "cost"
    doc["units"] = "relative harm; 0 = the right action for that class"
    doc["table"] = {a: {c: _plain_number(v) for c, v in zip(table.classes, row, strict=True)}
                    for a, row in zip(table.actions, table.costs, strict=True)}
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def save_cost_table(table: CostTable, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` atomically as YAML (``.yaml``/``.yml``) or JSON (``.json``)."""
    from skin_core.io import atomic_write_json, atomic_write_text

    p = Path(path)
    if p.suffix.lower() == ".json":
        d = table.to_dict()
        return atomic_write_json(p, {"name": d["name"], "kind": "cost", "table": d["table"]})
    if p.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"Save the cost table as .yaml or .json; got '{p.name}'.")
    return atomic_write_text(p, cost_table_yaml(table))


def _plain_number(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)
