"""Step time of compress_activations on the main job's setting, for whichever tensorcomp is importable."""
import argparse, copy, statistics, sys, time, json
import torch, torch.nn.functional as F
from torch import nn
from benchmarks._setup import DEFAULTS, pretrained_setup
from benchmarks._models import FineTuneSetting
from tensorcomp.adapters import compress_activations
import numpy as np
a = argparse.Namespace(dataset="digits", data_root=None, model="smallcnn", image_size=32, pretrain_epochs=DEFAULTS["digits"]["pretrain_epochs"], batch_size=128, seed=0, device="cpu", limit_train=None)
setup = pretrained_setup(a)
base = setup.pretrained_model()
x, y = setup.finetune.batch(np.arange(128))
out = {}
for k in (2, 4):
    for bn in ("train", "eval"):
        m = copy.deepcopy(base); s = FineTuneSetting(m, k); s.train()
        if bn == "eval":
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d): mod.eval()
        names = s.trainable_layers
        ctx = compress_activations(m, "hosvd", 0.8, modules=lambda n, mm: n in names)
        times = []
        for i in range(int(sys.argv[1])):
            m.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with ctx:
                loss = F.cross_entropy(m(x), y)
            loss.backward()
            times.append((time.perf_counter() - t0) * 1e3)
        out[f"k{k}-{bn}"] = round(statistics.median(times[1:]), 1)
print(json.dumps(out))
