"""Balancer.step: the weights a step applied, not the ones a method keeps for the next step."""
import torch

from mtl_train.balancing.base import Balancer


class UpdatesAfter(Balancer):
    """Weights the losses with w, then moves w (as DWA, uncertainty and GradNorm do)."""

    def __init__(self):
        super().__init__(["a", "b"], None)
        self.w = torch.tensor([1.0, 1.0])

    def weights(self):
        return self.w.clone()

    def backward(self, losses, counts, model, out):
        (self.w * losses).sum().backward()
        self.w = self.w + torch.tensor([0.5, -0.5])
        return {}


class DrawsWithin(UpdatesAfter):
    """Sets its weights within the step (as RLW, MGDA and the surgery methods do) and records them."""

    def backward(self, losses, counts, model, out):
        self.w = self.w * 2
        self.applied = self.w.clone()
        (self.w * losses).sum().backward()
        return {}


def test_step_returns_the_weights_that_multiplied_the_losses():
    for bal, first, second in ((UpdatesAfter(), [1.0, 1.0], [1.5, 0.5]), (DrawsWithin(), [2.0, 2.0], [4.0, 4.0])):
        for want in (first, second):
            losses = torch.tensor([0.3, 0.7], requires_grad=True)
            logs, applied = bal.step(losses, torch.tensor([4, 4]), None, {})
            assert logs == {} and applied.tolist() == want == losses.grad.tolist()
