#!/usr/bin/env python3
# Weighted kNN top-1 (cosine, sigma 0.1, k = 200 and 10: the protocol of `sela eval`) on
# the raw pixels and on pool5, fc6 and fc7 of a trained Fashion-MNIST run, computed with
# the PyTorch twin (sela_torch.py) loaded from the run's weights.safetensors. A diagnostic
# for docs/results.md: its fc7 row must equal `sela eval`'s kNN, and the other rows show
# how much each layer keeps. Needs Debian's python3-torch and python3-safetensors.
#   usage: tools/bench/knn_by_layer.py RUNDIR
# Inputs as sela's evaluation transform: 28x28 zero-padded to 32x32, scaled to [0, 1],
# normalised with Fashion-MNIST's mean 0.2860 and std 0.3530.
import gzip, json, os, sys
import numpy as np, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sela_torch import SelaNet
from safetensors.torch import load_file
torch.set_num_threads(1)
run = sys.argv[1]
cfg = json.load(open(run + '/config.json'))
D = '/usr/share/datasets/fashion-mnist/'
def idx(name, off):
    with gzip.open(D + name) as f: return np.frombuffer(f.read(), np.uint8, offset=off)
xtr = idx('train-images-idx3-ubyte.gz', 16).reshape(-1, 28, 28); ytr = idx('train-labels-idx1-ubyte.gz', 8)
xte = idx('t10k-images-idx3-ubyte.gz', 16).reshape(-1, 28, 28); yte = idx('t10k-labels-idx1-ubyte.gz', 8)
def prep(x):
    t = torch.zeros(len(x), 1, 32, 32); t[:, 0, 2:30, 2:30] = torch.from_numpy(x.astype(np.float32) / 255)
    return (t - 0.2860) / 0.3530
model = SelaNet(cfg['arch'], cfg['width_mult'], 1, cfg['clusters'], cfg['dropout'],
                cfg.get('fc_batch_norm', False))
model.load_state_dict(load_file(run + '/weights.safetensors'), strict=True); model.eval()
def feats(x):
    out = {'pool5': [], 'fc6': [], 'fc7': []}
    with torch.no_grad():
        for i in range(0, len(x), 500):
            h = torch.flatten(model.features(prep(x[i:i+500])), 1); out['pool5'].append(h)
            # fc6 and fc7: the outputs of the classifier's first and second ReLU (dropout is
            # off in eval mode; with fc_batch_norm a BatchNorm1d precedes each ReLU).
            relus = []
            for layer in model.classifier:
                h = layer(h)
                if isinstance(layer, torch.nn.ReLU): relus.append(h)
            out['fc6'].append(relus[0]); out['fc7'].append(relus[1])
    return {k: torch.cat(v) for k, v in out.items()}
def knn(ftr, fte, ks=(200, 10), sigma=0.1):
    ftr = torch.nn.functional.normalize(ftr, dim=1); fte = torch.nn.functional.normalize(fte, dim=1)
    res = {}
    ytr_t = torch.from_numpy(ytr.astype(np.int64)); correct = {k: 0 for k in ks}
    for i in range(0, len(fte), 1000):
        sim = fte[i:i+1000] @ ftr.T
        w, j = sim.topk(max(ks), dim=1)
        for k in ks:
            votes = torch.zeros(len(w), 10).scatter_add_(1, ytr_t[j[:, :k]], (w[:, :k] / sigma).exp())
            correct[k] += (votes.argmax(1).numpy() == yte[i:i+1000]).sum()
    return {k: round(100.0 * c / len(fte), 2) for k, c in correct.items()}
print('pixels', knn(prep(xtr).flatten(1), prep(xte).flatten(1)))
ftr, fte = feats(xtr), feats(xte)
for k in ftr: print(k, ftr[k].shape[1], knn(ftr[k], fte[k]))
