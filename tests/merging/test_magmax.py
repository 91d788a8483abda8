import torch

import weaving
from weaving.merging.methods.magmax import magmax


def test_largest_magnitude_and_later_task_wins_ties():
    a = torch.tensor([1.0, -3.0, 2.0, 0.0])
    b = torch.tensor([-2.0, 3.0, -2.0, 0.0])
    c = torch.tensor([0.5, 1.0, 2.0, -0.0])
    assert torch.equal(magmax([a, b, c], key="w", stats=None), torch.tensor([-2.0, 3.0, 2.0, 0.0]))
    # the tie at index 2 is between a (2.0), b (-2.0) and c (2.0): the last one, c, wins
    assert magmax([a, b], key="w", stats=None)[2] == -2.0


def test_merge(inputs):
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, "magmax")
    stacked = torch.stack([tv["visual.proj.weight"] for tv in tvs])
    index = stacked.abs().argmax(dim=0, keepdim=True)
    expected = pretrained["visual.proj.weight"] + stacked.gather(0, index).squeeze(0)
    torch.testing.assert_close(merged["visual.proj.weight"], expected)
