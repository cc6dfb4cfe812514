"""The backward in two halves (raypar.network.split_backward) gives the gradients of one plain backward."""
import pytest
import torch
from torch import nn

from raypar.network.split_backward import input_grad


class Shared(nn.Module):
    """One Linear used twice, a parameter added straight onto the activations, a frozen one and an unused one."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.offset = nn.Parameter(torch.randn(4, 6))
        self.frozen = nn.Parameter(torch.randn(6, 6), requires_grad=False)
        self.unused = nn.Parameter(torch.randn(3, 3))

    def forward(self, u):
        h = torch.tanh(self.lin(u)) + self.offset
        return self.lin(h) @ self.frozen


class Merged(nn.Module):
    """Weights whose paths meet the input's at the same nodes: one group (w3 joins w1's and w2's, w4 finds it)."""

    def __init__(self):
        super().__init__()
        self.w1, self.w2, self.w3, self.w4 = (nn.Parameter(torch.randn(6, 6)) for _ in range(4))

    def forward(self, u):
        return torch.tanh(u @ (self.w1 + self.w3 + self.w4)) * (u @ (self.w2 + self.w3 + self.w4))


def _conv_net():
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.GroupNorm(2, 8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


@pytest.mark.parametrize("make, shape, amp", [(_conv_net, (4, 4, 8, 8), False), (Shared, (4, 6), False),
                                              (Merged, (4, 6), False), (_conv_net, (4, 4, 8, 8), True)])
def test_input_then_weights_equals_one_backward(make, shape, amp):
    torch.manual_seed(0)
    net = make().train()
    u0 = torch.randn(shape)
    grads = {}
    for split in (False, True):
        torch.manual_seed(1)                                # the same batch statistics and the same upstream gradient
        for p in net.parameters():
            p.grad = torch.ones_like(p) if p.requires_grad else None     # gradients add to what is there
        u = u0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = net(u)
        g = torch.randn(out.shape, dtype=out.dtype)
        if split:
            du, later = input_grad(out, g, u, list(net.parameters()))
            weights = [n for n, p in net.named_parameters() if p.dim() > 1 and p.requires_grad and n != "unused"]
            for n, p in net.named_parameters():             # until the second half runs, only vectors have theirs
                if p.requires_grad:
                    assert torch.equal(p.grad, torch.ones_like(p)) == (n in weights or n == "unused"), n
            later.run()
            assert later.groups == []
        else:
            out.backward(g)
            du = u.grad
        grads[split] = du, {n: p.grad for n, p in net.named_parameters()}
    (du0, g0), (du1, g1) = grads[False], grads[True]
    torch.testing.assert_close(du1, du0, rtol=0, atol=0)
    assert set(g1) == set(g0)
    for n in g0:
        if g0[n] is None:
            assert g1[n] is None, n
        else:
            torch.testing.assert_close(g1[n], g0[n], rtol=1e-6, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")
