"""The PyTorch twin of sela's models (models/alexnet.cpp), for baselines and golden data.

Same layers, same order, same parameter names (features.N.*, classifier.N.*,
top_layerT.*), same reference initialisation, so that a state dict moves both ways through
safetensors and a benchmark times the same work.
"""
import torch
import torch.nn as nn

# (width, kernel, stride, padding, max-pool after) per conv block, as in DESIGN.md.
CONV_SPECS = {
    "alexnet": [(96, 11, 4, 2, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False),
                (384, 3, 1, 1, False), (256, 3, 1, 1, True)],
    "alexnet-small": [(64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
                      (256, 3, 1, 1, False), (256, 3, 1, 1, True)],
    "alexnet-32": [(64, 5, 1, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
                   (256, 3, 1, 1, False), (256, 3, 1, 1, True)],
}


def scaled(width, mult):
    return max(1, int(round(width * mult)))


class SelaNet(nn.Module):
    def __init__(self, arch="alexnet-32", width_mult=1.0, in_channels=3, clusters=(128,),
                 dropout=0.5, fc_batch_norm=False):
        super().__init__()
        self.input_size = 32 if arch == "alexnet-32" else 224
        layers, channels, size = [], in_channels, self.input_size
        for width, kernel, stride, padding, pool in CONV_SPECS[arch]:
            width = scaled(width, width_mult)
            layers += [nn.Conv2d(channels, width, kernel, stride, padding),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            size = (size + 2 * padding - kernel) // stride + 1
            if pool:
                layers.append(nn.MaxPool2d(3, 2))
                size = (size - 3) // 2 + 1
            channels = width
        self.features = nn.Sequential(*layers)
        fc = scaled(4096, width_mult)
        def fc_norm():  # sela train --fc-batch-norm on: BatchNorm1d after each fc layer
            return [nn.BatchNorm1d(fc)] if fc_batch_norm else []
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(channels * size * size, fc), *fc_norm(),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(fc, fc), *fc_norm(), nn.ReLU(inplace=True))
        self.heads = len(clusters)
        for t, k in enumerate(clusters):
            setattr(self, "top_layer%d" % t, nn.Linear(fc, k))
        self.initialize()

    def initialize(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, (2.0 / n) ** 0.5)
                m.bias.data.zero_()
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()

    def forward(self, x):
        h = self.classifier(torch.flatten(self.features(x), 1))
        return [getattr(self, "top_layer%d" % t)(h) for t in range(self.heads)]


def sela_loss(logits, targets):
    """Mean over heads of each head's mean cross-entropy (the SeLa representation step)."""
    ce = nn.functional.cross_entropy
    return sum(ce(z, y) for z, y in zip(logits, targets)) / len(logits)
