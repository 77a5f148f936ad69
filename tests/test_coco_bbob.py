"""COCO smoke test: evopes BIPOP on bbob functions at d = 2, one instance, observed by COCO."""

import numpy as np
import pytest

cocoex = pytest.importorskip("cocoex")

from evopes.bench import coco_bbob  # noqa: E402


def test_bipop_solves_sphere_and_coco_logs_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # COCO writes to exdata/<result_folder> under the cwd
    suite = cocoex.Suite("bbob", "", "dimensions: 2 instance_indices: 1 function_indices: 1")
    observer = cocoex.Observer("bbob", "result_folder: evopes algorithm_name: t")
    problem = next(iter(suite))
    offset = coco_bbob._f_opt(problem)
    problem.observe_with(observer)
    trace = coco_bbob.run_evopes(problem, offset, 0, 1000)
    evaluations = problem.evaluations
    problem.free()
    ert, solved = coco_bbob._summary([trace])
    # Sphere at d = 2 from U[-4, 4]^2, sigma 2: ~250 evaluations to 1e-8 (pycma ~250).
    assert min(trace) <= coco_bbob.TARGET
    assert ert is not None and 100 <= ert <= 600
    assert solved == 1.0
    # Every evaluation went through COCO (and its observer) and nothing else.
    assert evaluations == len(trace) + 1  # + the f(x_opt) evaluation before observing
    data = list((tmp_path / "exdata" / "evopes").rglob("*.dat"))
    info = list((tmp_path / "exdata" / "evopes").rglob("*.info"))
    assert data and info
    assert "f1" in data[0].name.lower() or "f001" in data[0].name.lower()


def test_summary_counts_targets_and_ert():
    # One instance reaches 1e-8 at evaluation 3, the other stops at 1e-3 after 5.
    reached = [10.0, 1e-2, 1e-9, 1e-10]
    stuck = [10.0, 1.0, 1e-3, 1e-3, 1e-3]
    ert, solved = coco_bbob._summary([reached, stuck])
    assert ert == (3 + 5) / 1
    targets_stuck = int(np.sum(1e-3 <= coco_bbob.TARGETS))
    assert solved == pytest.approx((51 + targets_stuck) / 102)


def test_padding_rows_are_not_evaluated_or_counted():
    # BIPOP's padding members arrive as NaN rows (evopes.strategies.restarts): COCO must
    # count only the real evaluations, so the callback skips them.
    calls = []
    coco_bbob._Current.problem = lambda x: calls.append(x) or float(np.sum(x**2))
    coco_bbob._Current.offset, coco_bbob._Current.trace = 1.0, []
    population = np.array([[1.0, 2.0], [np.nan, np.nan], [0.0, 1.0]], np.float32)
    values = coco_bbob._evaluate(population)
    assert len(calls) == 2 and coco_bbob._Current.trace == [4.0, 0.0]
    np.testing.assert_array_equal(values, np.array([4.0, np.nan, 0.0], np.float32))
