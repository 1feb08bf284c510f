"""Resumable steps: skip when up to date, redo on change, --force, interrupted steps redone."""

from __future__ import annotations

import pytest

from skin_core.errors import ConfigError
from skin_core.pipeline import Pipeline, Step


def _steps(calls, *, a_value=1, fail_b=False):
    def run_a(ctx):
        calls.append("a")
        ctx.path("a.txt").write_text(str(a_value))
        return {"value": a_value}

    def run_b(ctx):
        calls.append("b")
        if fail_b:
            raise KeyboardInterrupt  # killed mid-step
        ctx.path("b.txt").write_text(ctx.path("a.txt").read_text() + "+b")
        return {"from_a": ctx.results["a"]["value"]}

    return [Step("a", run_a, outputs=("a.txt",), config={"v": a_value}),
            Step("b", run_b, outputs=("b.txt",), depends_on=("a",))]


def test_second_run_skips_everything(tmp_path):
    calls = []
    Pipeline(tmp_path, _steps(calls)).run()
    out = Pipeline(tmp_path, _steps(calls)).run()
    assert calls == ["a", "b"]
    assert [o.status for o in out] == ["skipped", "skipped"]
    assert out[1].summary == {"from_a": 1}


def test_config_change_reruns_step_and_downstream(tmp_path):
    calls = []
    Pipeline(tmp_path, _steps(calls)).run()
    Pipeline(tmp_path, _steps(calls, a_value=2)).run()
    assert calls == ["a", "b", "a", "b"]
    assert (tmp_path / "b.txt").read_text() == "2+b"


def test_force_and_missing_output(tmp_path):
    calls = []
    Pipeline(tmp_path, _steps(calls)).run()
    Pipeline(tmp_path, _steps(calls)).run(force=["b"])
    assert calls[-1] == "b" and calls.count("a") == 1
    (tmp_path / "a.txt").unlink()
    Pipeline(tmp_path, _steps(calls)).run()
    # a redone because its output is gone, so b (which reads it) is redone too
    assert calls[-2:] == ["a", "b"] and calls.count("b") == 3
    Pipeline(tmp_path, _steps(calls)).run(force=["a"])
    assert calls[-2:] == ["a", "b"] and calls.count("a") == 3
    with pytest.raises(ConfigError, match="Unknown step"):
        Pipeline(tmp_path, _steps(calls)).run(force=["nope"])


def test_interrupted_step_is_redone_and_earlier_kept(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        Pipeline(tmp_path, _steps(calls, fail_b=True)).run()
    out = Pipeline(tmp_path, _steps(calls)).run()
    assert [o.status for o in out] == ["skipped", "ran"]


def test_dependency_order_checked(tmp_path):
    s = _steps([])
    with pytest.raises(ConfigError, match="depends on"):
        Pipeline(tmp_path, [s[1], s[0]])


def test_config_key_order_does_not_matter(tmp_path):
    calls = []

    def run(ctx):
        calls.append(1)
        ctx.path("x.txt").write_text("x")

    Pipeline(tmp_path, [Step("x", run, ("x.txt",), config={"a": 1, "b": {"c": 2, "d": 3}})]).run()
    Pipeline(tmp_path, [Step("x", run, ("x.txt",), config={"b": {"d": 3, "c": 2}, "a": 1})]).run()
    assert calls == [1]
