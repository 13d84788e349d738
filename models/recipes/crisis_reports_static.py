"""crisis-reports 1.2.0: the 1.1.0 backbone statically quantised, so reports can be batched.

1.1.0's backbone is *dynamically* quantised (DynamicQuantizeLinear + MatMulInteger): activation
scales are computed per run, so a report's scores depend on the other reports padded into its
batch, and the agent has to run reports one at a time. This recipe:

1. dequantises 1.1.0's backbone: every DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul
   chain becomes a float MatMul with the weights (Wq - zero_point) * scale (exactly the weights
   1.1.0 computes with, so nothing is retrained);
2. quantises that float graph *statically* (`quantize_static`, QDQ, S8 per-channel weights, U8
   activations, MinMax calibration on training messages of the 1.1.0 split), only the 36 weight
   MatMuls (the attention MatMuls stay float, as in 1.1.0): fixed activation scales, so a row's
   result does not depend on its neighbours;
3. checks cosine to the dequantised float graph and to 1.1.0's int8 (one report per run), the
   largest score change between a report alone and in a padded batch, and test micro / macro F1
   with 1.1.0's head and thresholds (the split of crisis_reports.py: seed 20261128, 70/15/15);
4. with `--out DIR`, writes the bundle (1.1.0's files, the new backbone, manifest 1.2.0 with
   `"backbone": {"batch_independent": true}`, golden scores recomputed one report per run).

Run: models/recipes/build.sh crisis-reports-static [--out models/crisis-reports]
Needs only onnx, onnxruntime, numpy and tokenizers (no torch). Seed 20261128.
"""
import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

SEED = 20261128
SPLIT = (0.70, 0.15, 0.15)
CALIB = 512
REPO = Path(__file__).resolve().parents[2]


def load_messages(data_dir: Path):
    with open(data_dir / "crisis_text" / "messages.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    cats = header[3:]
    keep = [i for i, c in enumerate(cats) if c != "child_alone"]
    y = np.array([[int(v) for v in r[3:]] for r in rows], dtype=np.uint8)[:, keep]
    return [r[1] for r in rows], y


def split_rows(n: int):
    perm = np.random.default_rng(SEED).permutation(n)
    n_tr, n_va = int(round(n * SPLIT[0])), int(round(n * SPLIT[1]))
    return np.sort(perm[:n_tr]), np.sort(perm[n_tr:n_tr + n_va]), np.sort(perm[n_tr + n_va:])


def dequantise(src: Path, dst: Path) -> int:
    """1.1.0's dynamic int8 graph -> the float graph it computes (weights dequantised)."""
    m = onnx.load(str(src))
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop, new_nodes, new_inits = set(), {}, []
    for n in g.node:
        if n.op_type != "MatMulInteger":
            continue
        a_q, w_q, _a_zp, w_zp = n.input
        dql = producer[a_q]
        assert dql.op_type == "DynamicQuantizeLinear", dql.op_type
        (cast,) = consumers[n.output[0]]
        (mul,) = consumers[cast.output[0]]
        assert cast.op_type == "Cast" and mul.op_type == "Mul"
        scales = producer[[i for i in mul.input if i != cast.output[0]][0]]
        assert scales.op_type == "Mul"
        w_scale = [i for i in scales.input if i in inits][0]
        wq = numpy_helper.to_array(inits[w_q]).astype(np.float32)
        zp = numpy_helper.to_array(inits[w_zp]).astype(np.float32)
        sc = numpy_helper.to_array(inits[w_scale]).astype(np.float32)
        w = ((wq - zp[None, :]) * sc[None, :]).astype(np.float32)
        name = w_q.replace("_quantized", "_dequantized")
        new_inits.append(numpy_helper.from_array(w, name))
        mm = helper.make_node("MatMul", [dql.input[0], name], [mul.output[0]], name=n.name.replace("_quant", ""))
        new_nodes[id(mul)] = mm
        drop.update({id(n), id(cast), id(scales), id(dql)})
    nodes = []
    for n in g.node:
        if id(n) in new_nodes:
            nodes.append(new_nodes[id(n)])
        elif id(n) not in drop:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return len(new_nodes)


def feeds(batch, names, length=None):
    L = length or max(len(x) for x in batch)
    ids = np.zeros((len(batch), L), np.int64)
    att = np.zeros_like(ids)
    for k, x in enumerate(batch):
        ids[k, :len(x)] = x
        att[k, :len(x)] = 1
    f = {"input_ids": ids, "attention_mask": att}
    if "token_type_ids" in names:
        f["token_type_ids"] = np.zeros_like(ids)
    return f


def quantise(fp32: Path, out: Path, calib_ids, method="minmax", percentile=99.999, keep_float=()):
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    names = {i.name for i in onnx.load(str(fp32)).graph.input}

    class Reader(CalibrationDataReader):
        def __init__(self):
            order = np.argsort([len(x) for x in calib_ids], kind="stable")
            # Percentile calibration stacks every batch's activations: give them one shape
            # (128 tokens, the training length; longer messages cut, with their [SEP] kept).
            fixed = 128 if method == "percentile" else None
            cut = [x if len(x) <= 128 else x[:127] + x[-1:] for x in calib_ids]
            self.batches = [feeds([cut[j] for j in order[i:i + 32]], names, fixed) for i in range(0, len(order), 32)]
            self.i = 0

        def get_next(self):
            if self.i >= len(self.batches):
                return None
            self.i += 1
            return self.batches[self.i - 1]

        def rewind(self):
            self.i = 0

    g = onnx.load(str(fp32)).graph
    inits = {t.name for t in g.initializer}
    weight_mm = [n.name for n in g.node if n.op_type == "MatMul" and any(i in inits for i in n.input)
                 and not any(k in n.name for k in keep_float)]
    extra = {"CalibPercentile": percentile} if method == "percentile" else {}
    cm = CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.MinMax
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=cm, nodes_to_quantize=weight_mm, extra_options=extra)
    m = onnx.load(str(out))
    used = {n.domain for n in m.graph.node} | {""}
    keep = [o for o in m.opset_import if o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return len(weight_mm)


def session(path, threads=2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def embed(sess, ids_list, batch):
    names = {i.name for i in sess.get_inputs()}
    order = np.argsort([len(x) for x in ids_list], kind="stable")
    out = np.empty((len(ids_list), 384), np.float32)
    for i in range(0, len(order), batch):
        sel = order[i:i + batch]
        out[sel] = sess.run(None, feeds([ids_list[j] for j in sel], names))[0]
    return out


def f1(y, p, thr):
    pred = p >= thr[None, :]
    tp = (pred & (y == 1)).sum(0).astype(float)
    fp = (pred & (y == 0)).sum(0).astype(float)
    fn = (~pred & (y == 1)).sum(0).astype(float)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    per = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return round(float(micro), 4), round(float(per.mean()), 4)


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--src", default=str(REPO / "models" / "crisis-reports"), help="the 1.1.0 bundle")
    ap.add_argument("--work", default=os.environ.get("OUTPOST_RECIPE_WORK", "/tmp/outpost-recipes") + "/crisis-static")
    ap.add_argument("--out", default=None, help="write the 1.2.0 bundle here")
    ap.add_argument("--candidate", action="store_true",
                    help="write --out even below 1.1.0's test F1 (a candidate for measurement, never shipped)")
    ap.add_argument("--refit-head", action="store_true",
                    help="refit the head and thresholds on the static backbone's embeddings (1.1.0's recipe: "
                         "standardised one-vs-rest L2 logistic regression, C 0.003, thresholds tuned on validation)")
    ap.add_argument("--calibration", choices=["minmax", "percentile"], default="minmax")
    ap.add_argument("--percentile", type=float, default=99.999)
    ap.add_argument("--keep-float", default="", help="comma-separated name parts of MatMuls left float")
    a = ap.parse_args()
    src, work = Path(a.src), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    man = json.loads((src / "manifest.json").read_text())
    assert man["version"] == "1.1.0", f"expected the 1.1.0 bundle in {src}, found {man['version']}"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / man["text"]["tokenizer"]))
    tok.enable_truncation(man["text"]["max_length"])
    tok.no_padding()
    texts, y = load_messages(Path(a.data_dir))
    tr, va, te = split_rows(len(texts))
    calib = np.random.default_rng(SEED + 7).choice(tr, CALIB, replace=False)
    ids = lambda rows: [e.ids for e in tok.encode_batch([texts[i] for i in rows])]

    t0 = time.time()
    fp32, q = work / "dequantised.onnx", work / "static.onnx"
    n_mm = dequantise(src / man["backbone"]["file"], fp32) if not fp32.exists() else 36
    keep = tuple(k for k in a.keep_float.split(",") if k)
    n_q = quantise(fp32, q, ids(calib), a.calibration, a.percentile, keep)
    print(f"dequantised {n_mm} MatMulInteger, quantised {n_q} MatMul statically ({time.time() - t0:.0f} s)")

    dyn, flt, sta, head = (session(src / man["backbone"]["file"]), session(fp32), session(q),
                           session(src / man["head"]["file"], 1))
    thr = np.array(man["thresholds"], np.float32)
    score = lambda e: head.run(None, {man["head"]["input"]: e})[0]
    te_ids = ids(te)
    t0 = time.time()
    cache = work / "test-embeddings-1.1.0.npy"  # one report per run: slow, and the same every time
    cached = cache.exists()
    e_dyn = np.load(cache) if cached else embed(dyn, te_ids, 1)
    np.save(cache, e_dyn)
    t_dyn = None if cached else time.time() - t0
    t0 = time.time()
    e_sta1 = embed(sta, te_ids, 1)
    t_sta1 = time.time() - t0
    t0 = time.time()
    e_sta = embed(sta, te_ids, 32)
    t_sta = time.time() - t0
    e_flt = embed(flt, te_ids, 32)
    res = {
        "variant": {"calibration": a.calibration, "percentile": a.percentile, "keep_float": list(keep),
                    "quantised_matmuls": n_q},
        "test_reports": len(te),
        "cos_static_vs_float": {"mean": float(cosine(e_sta, e_flt).mean()), "min": float(cosine(e_sta, e_flt).min())},
        "cos_static_vs_1_1_0": {"mean": float(cosine(e_sta, e_dyn).mean()), "min": float(cosine(e_sta, e_dyn).min())},
        "cos_float_vs_1_1_0": {"mean": float(cosine(e_flt, e_dyn).mean()), "min": float(cosine(e_flt, e_dyn).min())},
        "max_score_diff_alone_vs_batch32": float(np.abs(score(e_sta1) - score(e_sta)).max()),
        "test_f1_1_1_0": f1(y[te], score(e_dyn), thr),
        "test_f1_static": f1(y[te], score(e_sta), thr),
        "test_f1_dequantised_float": f1(y[te], score(e_flt), thr),
        "python_ort_2_threads_reports_per_s": {"1.1.0 batch 1": round(len(te) / t_dyn) if t_dyn else "cached", "static batch 1": round(len(te) / t_sta1),
                                              "static batch 32 by length": round(len(te) / t_sta)},
        "sizes": {"1.1.0": (src / man["backbone"]["file"]).stat().st_size, "static": q.stat().st_size},
    }
    refit = None
    if a.refit_head:
        refit = refit_head(sta, ids(tr), ids(va), y[tr], y[va], e_sta, y[te], work)
        res["test_f1_static_refit_head"] = refit["test_f1"]
        res["validation_f1_static_refit_head"] = refit["validation_f1"]
        res["test_f1_static"] = refit["test_f1"]
    print(json.dumps(res, indent=2))
    (work / "results.json").write_text(json.dumps(res, indent=2))
    if a.out:
        write_bundle(src, Path(a.out), q, man, res, tok, head, score, a.candidate, refit)


def refit_head(sta, tr_ids, va_ids, y_tr, y_va, e_te, y_te, work):
    """1.1.0's head recipe on the static backbone's embeddings; returns the head, thresholds,
    F1 and what base data and reference stats need."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import crisis_reports as cr

    t0 = time.time()
    e_tr, e_va = embed(sta, tr_ids, 32), embed(sta, va_ids, 32)
    mu, sd = e_tr.mean(0), e_tr.std(0) + 1e-6
    w, b = cr.fit_ovr((e_tr - mu) / sd, y_tr, 0.003)
    w_f = w / sd[None, :]
    b_f = b - (w * (mu / sd)[None, :]).sum(1)
    sig = lambda e: cr.sigmoid(e.astype(np.float64) @ w_f.T + b_f)
    thr = cr.tune_thresholds(y_va, sig(e_va))
    out = {"w": w_f, "b": b_f, "thresholds": thr, "e_tr": e_tr, "e_va": e_va, "p_va": sig(e_va),
           "validation_f1": f1(y_va, sig(e_va), thr), "test_f1": f1(y_te, sig(e_te), thr),
           "seconds": round(time.time() - t0)}
    print(f"head refit on {len(e_tr)} training embeddings in {out['seconds']} s: validation {out['validation_f1']}, "
          f"test {out['test_f1']}")
    return out


def write_bundle(src, out, backbone, man, res, tok, head, score, candidate=False, refit=None):
    micro, macro = res["test_f1_static"]
    ref_micro, ref_macro = res["test_f1_1_1_0"]
    if (micro < ref_micro or macro < ref_macro) and not candidate:
        sys.exit(f"not shipped: test F1 {micro}/{macro} below 1.1.0's {ref_micro}/{ref_macro}")
    tmp = out.with_name(out.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    shutil.copy(backbone, tmp / man["backbone"]["file"])
    m = dict(man)
    if refit is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import common
        import crisis_reports as cr

        cr.export_head(refit["w"], refit["b"], tmp / man["head"]["file"])
        head = session(tmp / man["head"]["file"], 1)
        score = lambda e: head.run(None, {man["head"]["input"]: e})[0]
        m["thresholds"] = [round(float(t), 2) for t in refit["thresholds"]]
        common.write_json(tmp / man["reference_stats"], common.reference_stats(
            refit["e_va"], refit["p_va"], multi_label=True, thresholds=refit["thresholds"]), indent=None)
        # base data: 1.1.0's stratification (rarest positive label) over the training split
        texts, y = load_messages(Path(REPO.parent / "shared" / "data"))
        tr, _, _ = split_rows(len(texts))
        freq = y[tr].sum(0)
        strata = np.array([int(np.flatnonzero(r)[np.argmin(freq[np.flatnonzero(r)])]) if r.any() else -1
                           for r in y[tr]])
        b_idx = common.stratified_sample(strata, cr.BASE_DATA_ROWS, SEED + 3)
        common.save_base_data(tmp / man["base_data"], refit["e_tr"][b_idx], y[tr][b_idx])
    metrics = json.loads((tmp / "metrics.json").read_text())
    metrics["static_quantisation_1_2_0"] = {k: v for k, v in res.items()}
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    sess = session(backbone, 1)
    gold = json.loads((src / man["golden"]).read_text())
    for c in gold["cases"]:
        e = sess.run(None, feeds([c["token_ids"]], {i.name for i in sess.get_inputs()}))[0]
        c["scores"] = [round(float(v), 6) for v in score(e)[0]]
    gold["note"] = ("scores from Python ONNX Runtime, one report per run, with the statically quantised backbone of "
                    "crisis-reports 1.2.0 (fixed activation scales: the same in any batch)")
    (tmp / man["golden"]).write_text(json.dumps(gold, indent=2))
    m["version"] = "1.2.0"
    m["description"] = man["description"].replace("int8 embedding", "static int8 (QDQ) embedding")
    m["backbone"] = dict(man["backbone"], batch_independent=True)
    files = {}
    for name in sorted(man["files"]):
        p = tmp / name
        files[name] = {"sha256": sha256(p), "size": p.stat().st_size}
    m["files"] = files
    (tmp / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"wrote {out} (1.2.0)")


if __name__ == "__main__":
    main()
