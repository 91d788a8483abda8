import pytest

import weaving
from weaving.evaluation.search_spaces import DEFAULT_SEARCH_SPACE, default_search_space


def test_multi_task_uses_each_methods_own_range():
    assert default_search_space("ties", "multi_task") == "0.1:1.5:0.1"
    assert default_search_space("pcb", "multi_task") == "0.1:2.5:0.1"
    assert default_search_space("tsv", "multi_task") == "0.5:2.0:0.1"
    assert default_search_space("iso_c", "multi_task") == default_search_space("iso_cts", "multi_task") == "0.1:2.0:0.1"
    assert default_search_space("magmax", "multi_task") == DEFAULT_SEARCH_SPACE


@pytest.mark.parametrize("setup", ["continual", "domain_generalization"])
def test_other_setups_use_the_standard_range(setup):
    assert {default_search_space(m, setup) for m in weaving.METHODS} == {DEFAULT_SEARCH_SPACE}


def test_every_default_space_parses():
    for method in weaving.METHODS:
        values = weaving.parse_lambdas(default_search_space(method))
        assert values[0] > 0 and len(values) >= 10


def test_unknown_setup_lists_the_known_ones():
    with pytest.raises(ValueError, match="multi_task, continual, domain_generalization"):
        default_search_space("ties", "multitask")
