"""The meta step on a plain PyTorch model: MW-Net with the default (fd), exact and FaMUS meta gradients.

Run: python examples/quickstart.py
"""

import torch
from torch import nn

import famus


class Net(nn.Module):  # any nn.Module: no famus code inside
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def main():
    gen = torch.Generator().manual_seed(0)
    y_clean = torch.randint(0, 3, (512,), generator=gen)
    x = torch.randn(512, 1, 8, 8, generator=gen) + y_clean.view(-1, 1, 1, 1).float()
    y = torch.where(torch.rand(512, generator=gen) < 0.4, torch.randint(0, 3, (512,), generator=gen), y_clean)
    x_meta, y_meta = x[:30], y_clean[:30]  # a small trusted set
    for engine in ("fd", "exact", "famus"):
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        learner = famus.MetaLearner(model, opt, method="mwnet", meta_grad=engine)
        for i in range(40):
            s = slice(30 + (i * 64) % 448, 30 + (i * 64) % 448 + 64)
            stats = learner.step(x[s], y[s], x_meta, y_meta)
        noisy = (y != y_clean)[s]
        model.eval()
        acc = float((model(x).argmax(1) == y_clean).float().mean())
        print(f"{engine:6s} train acc vs clean labels {acc:.3f}  meta loss {float(stats.meta_loss):.3f}  "
              f"mean weight clean {float(stats.weights[~noisy].mean()):.4f} noisy {float(stats.weights[noisy].mean()):.4f}  "
              f"iteration {stats.iteration_s * 1000:.1f} ms  gates {stats.to_dict().get('gates')}")


if __name__ == "__main__":
    main()
