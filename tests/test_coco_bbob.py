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


def test_repeated_runs_are_separate_observed_runs_with_their_own_seeds(tmp_path, monkeypatch):
    # TRIALS > 1 (the full run at d <= 5): each trial is a fresh problem, so COCO logs it
    # as another run on the instance, and each run gets its own seed.
    monkeypatch.chdir(tmp_path)
    suite = cocoex.Suite("bbob", "", "dimensions: 2 instance_indices: 1-2 function_indices: 1")
    observer = cocoex.Observer("bbob", "result_folder: repeats algorithm_name: t")
    seeds, evaluations = [], []

    def runner(problem, offset, seed, budget):
        seeds.append(seed)
        trace = [problem(np.full(2, 0.1 * len(seeds))) - offset for _ in range(3 + len(seeds))]
        evaluations.append(problem.evaluations)
        return trace

    traces, seconds = coco_bbob.run_suite(runner, suite, observer, {2: 3}, 10, 100)
    del observer
    assert seeds == [10, 11, 12, 13, 14, 15]
    assert list(traces) == ["f1-d2"] and [len(t) for t in traces["f1-d2"]] == [4, 5, 6, 7, 8, 9]
    # A fresh problem per run: its counter starts again (+1: the f(x_opt) evaluation).
    assert evaluations == [5, 6, 7, 8, 9, 10]
    assert set(seconds) == {2}
    info = "".join(p.read_text() for p in (tmp_path / "exdata" / "repeats").rglob("*.info"))
    # f1's run list: "data_f1/...dat, 1:<evals>|<f>, 1:..., 2:...": each instance three times.
    runs = [entry.strip().split(":")[0] for entry in info.strip().splitlines()[-1].split(",")[1:]]
    assert runs == ["1", "1", "1", "2", "2", "2"], info


def test_trial_share_reads_one_trial_of_every_instance():
    # Two instances x two trials, run order inst1 t0, inst1 t1, inst2 t0, inst2 t1:
    # trial 0 solves both instances of f1, trial 1 neither (stuck at 10).
    solved, stuck = [1e-9], [10.0]
    traces = {"f1-d2": [solved, stuck, solved, stuck], "f1-d5": [stuck, stuck, stuck, stuck]}
    assert coco_bbob._trial_share(traces, 2, 0, 2) == 1.0
    assert coco_bbob._trial_share(traces, 2, 1, 2) == pytest.approx(
        int(np.sum(10.0 <= coco_bbob.TARGETS)) / 51
    )
