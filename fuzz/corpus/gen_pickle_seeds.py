"""Writes the pickle fuzz target's seed inputs (run in corpus/pickle/): the shapes of data pickles the loaders read
(CIFAR-100's python version, tieredImageNet's lists of arrays), in protocols 0, 2, 4 and 5."""
import pickle

import numpy as np

cifar = {b"data": np.arange(2 * 12, dtype=np.uint8).reshape(2, 12), b"fine_labels": [3, 7],
         b"filenames": [b"a.png", b"b.png"], "batch_label": "training batch 1 of 1"}
tiered = [np.frombuffer(b"\x89PNG\r\n", dtype=np.uint8), np.zeros(3, dtype=np.uint8)]
labels = {"label_specific": np.array([0, 1, 1], dtype=np.int64), "label_general": [0, 0, 1],
          "ratio": 0.5, "ok": True, "none": None, "pair": (1, -2)}
for name, value in [("cifar", cifar), ("tiered", tiered), ("labels", labels)]:
    for protocol in (0, 2, 4, 5):
        with open(f"{name}_p{protocol}.pkl", "wb") as f:
            pickle.dump(value, f, protocol=protocol)
