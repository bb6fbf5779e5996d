"""solvers.base.combine: the fused linear combination every update is made of."""
import torch

from solvers.base import afs_pair, combine, derivative


def _terms():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(4)]


def test_combine_equals_the_plain_sum_and_leaves_its_inputs_alone():
    ys = _terms()
    copies = [y.clone() for y in ys]
    for cs in [(1, 0.5, -2.0, 3.0), (0.3, 0.5, -2.0, 3.0), (1, 0, 0, 2.0), (0, 0, 1.5, 0), (0, 0, 0, 0)]:
        out = combine(*zip(cs, ys))
        expect = sum(c * y for c, y in zip(cs, ys))
        torch.testing.assert_close(out, expect, rtol=1e-15, atol=1e-15)
        for y, y0 in zip(ys, copies):
            assert torch.equal(y, y0)                            # the in-place adds went into a fresh output
    assert combine((1, ys[0])) is ys[0]                          # nothing to add: no copy


def test_combine_promotes_dtypes_and_broadcasts_like_the_plain_sum():
    x32 = torch.ones(2, 3, dtype=torch.float32)
    y64 = torch.full((2, 3), 2.0, dtype=torch.float64)
    out = combine((0.5, x32), (1.0, y64))
    assert out.dtype == torch.float64 and torch.equal(out, torch.full((2, 3), 2.5, dtype=torch.float64))
    row = torch.arange(3.0)
    assert torch.equal(combine((2.0, torch.zeros(1, 3)), (1.0, torch.zeros(2, 3)), (1.0, row)),
                       row.expand(2, 3))


def test_combine_with_tensor_coefficients_is_differentiable():
    ys = _terms()
    c = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    combine((1, ys[0]), (c[0], ys[1]), (c[1] * 2, ys[2])).sum().backward()
    torch.testing.assert_close(c.grad, torch.stack([ys[1].sum(), 2 * ys[2].sum()]))


def test_factored_derivatives():
    x = torch.full((2,), 3.0, dtype=torch.float64)
    a, g = derivative(lambda x, s: 0.5 * x, x, 2.0)
    assert a == 0.5 and torch.equal(a * g, (x - 0.5 * x) / 2.0)
    a, g = afs_pair(x, 80.0)
    torch.testing.assert_close(a * g, x / (1 + 80.0 ** 2) ** 0.5, rtol=1e-15, atol=0)
