import pytest

from weaving.evaluation import setups


def test_multi_task_merges_everything_once():
    setup = setups.multi_task(["a", "b", "c"])
    assert setup.tasks == ["a", "b", "c"] and setup.mean == "columns"
    assert len(setup.jobs) == 1 and setup.jobs[0].task_vectors == ("a", "b", "c")
    assert [c.name for c in setup.jobs[0].columns] == ["a", "b", "c"]
    assert all(c.classes is None for c in setup.columns)


def test_domain_generalization_leaves_each_task_out():
    setup = setups.domain_generalization(["a", "b", "c"])
    assert [(job.task_vectors, [c.name for c in job.columns]) for job in setup.jobs] == [
        (("b", "c"), ["a"]), (("a", "c"), ["b"]), (("a", "b"), ["c"])]
    assert setup.individual == {"a": "a", "b": "b", "c": "c"}


def test_continual_scores_parts_with_the_full_head():
    setup = setups.continual("digits", splits=5)
    assert setup.tasks == [f"digits_part{i}of5" for i in range(1, 6)]
    assert setup.eval_tasks == ["digits"] and setup.mean == "samples"
    assert [c.classes for c in setup.columns] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert setup.jobs[0].task_vectors == tuple(setup.tasks)


def test_make_setup_by_name():
    assert setups.make_setup("continual", ["digits"], splits=2).tasks == ["digits_part1of2", "digits_part2of2"]
    assert setups.make_setup("domain_generalization", ["a", "b"]).name == "domain_generalization"


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: setups.domain_generalization(["a"]), "at least 2"),
        (lambda: setups.multi_task(["a", "a"]), "repeat"),
        (lambda: setups.continual("digits"), "give splits"),
        (lambda: setups.continual("digits", parts=["digits_rot90"]), "not a class-incremental part"),
        (lambda: setups.make_setup("continual", [], splits=2), "must start with the task"),
        (lambda: setups.make_setup("multitask", ["a"]), "unknown setup"),
    ],
)
def test_bad_setups_are_one_line_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_continual_reports_the_full_task_as_an_extra_column():
    setup = setups.continual("digits", splits=2)
    assert [c.name for c in setup.extra] == ["digits"] and setup.extra[0].classes is None
    assert setup.jobs[0].columns == setup.columns + setup.extra
    tallies = {"digits_part1of2": setups.Tally(9, 10), "digits_part2of2": setups.Tally(1, 30), "digits": setups.Tally(10, 40)}
    assert setup.mean_of(tallies) == pytest.approx(10 / 40)  # samples, not (0.9 + 1/30) / 2
    assert setups.multi_task(["a", "b"]).mean_of({"a": setups.Tally(9, 10), "b": setups.Tally(1, 30)}) == \
        pytest.approx((0.9 + 1 / 30) / 2)
    with pytest.raises(ValueError, match="no tally for columns"):
        setup.mean_of({"digits": setups.Tally(1, 1)})


def test_setup_for_loaders_is_the_comparison_setup_with_the_given_vectors():
    vectors = ["a", "b", "c"]
    assert setups.setup_for_loaders("multi_task", ["a", "b"], vectors) == setups.multi_task(["a", "b"], vectors)
    assert setups.setup_for_loaders("multi_task", vectors, vectors) == setups.make_setup("multi_task", vectors)
    dg = setups.setup_for_loaders("domain_generalization", ["b"], vectors)
    assert [(job.task_vectors, [c.name for c in job.columns]) for job in dg.jobs] == [(("a", "c"), ["b"])]
    assert setups.setup_for_loaders("domain_generalization", vectors, vectors) == \
        setups.make_setup("domain_generalization", vectors)
    parts = [f"digits_part{i}of3" for i in (1, 2, 3)]
    assert setups.setup_for_loaders("continual", ["digits"], parts) == setups.make_setup("continual", ["digits"], splits=3)
    with pytest.raises(ValueError, match="no task vectors for \\['d'\\]"):
        setups.setup_for_loaders("domain_generalization", ["d"], vectors)
    with pytest.raises(ValueError, match="at least two task vectors"):
        setups.setup_for_loaders("domain_generalization", ["a"], ["a"])
    with pytest.raises(ValueError, match="digits_part<i>of<n>"):
        setups.setup_for_loaders("continual", ["digits"], vectors)


def test_continual_has_no_individual_reference_and_merges_incrementally():
    from weaving.evaluation.setups import continual, incremental_stages, multi_task

    setup = continual("digits", 3)
    assert setup.individual == {}  # the parts' own models are different checkpoints: no such row
    stages = incremental_stages(setup)
    assert [stage.jobs[0].task_vectors for stage in stages] == [
        ("digits_part1of3",), ("digits_part1of3", "digits_part2of3"), setup.jobs[0].task_vectors]
    assert all(stage.columns == setup.columns and stage.mean == "samples" for stage in stages)
    with pytest.raises(ValueError, match="incremental stages need a continual setup"):
        incremental_stages(multi_task(["digits"]))
