"""Shared helpers for the Outpost model-bundle recipes.

Bundle format: see models/README.md. Everything here is deterministic given the inputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from pathlib import Path

import numpy as np

RECIPES_DIR = Path(__file__).resolve().parent
MODELS_DIR = RECIPES_DIR.parent
REPO_DIR = MODELS_DIR.parent
# The shared data lives next to the repository: <repo>/../shared/data
DEFAULT_DATA_DIR = (REPO_DIR / ".." / "shared" / "data").resolve()
DEFAULT_WORK_ROOT = Path(os.environ.get("OUTPOST_RECIPE_WORK", "/tmp/outpost-recipes"))

# Score tolerance of golden.json for the int8 bundles, and why (src/infer/golden.rs: decisions must still match).
GOLDEN_TOLERANCE = 0.15
GOLDEN_TOLERANCE_NOTE = ("int8 kernels of ONNX Runtime differ by CPU (AVX2 vs AVX-512 VNNI): scores measured 0.12 "
                         "apart between two machines; the top label (single-label) and every decision not within "
                         "the tolerance of its threshold (multi-label) must match exactly")
MANIFEST = "manifest.json"


# ----------------------------------------------------------------------------- misc

def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch

        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
    except ImportError:  # pragma: no cover
        pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def floats(arr, ndigits: int | None = None) -> list:
    """float32/float64 array -> nested list of Python floats (exact float32 value as a double)."""
    a = np.asarray(arr, dtype=np.float64)
    if ndigits is not None:
        a = np.round(a, ndigits)
    return a.tolist()


def remove_stray_data_files(folder: Path) -> None:
    """torch.onnx.export / quantisation can leave big '<uuid>.data' files in the cwd."""
    pat = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(\.data)?$")
    for p in Path(folder).iterdir():
        if p.is_file() and pat.match(p.name):
            p.unlink()


# ----------------------------------------------------------------------------- hashing / manifest

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_object(bundle_dir: Path) -> dict:
    """sha256 + size of every file in the bundle folder (recursively) except manifest.json."""
    bundle_dir = Path(bundle_dir)
    out = {}
    for p in sorted(bundle_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(bundle_dir).as_posix()
        if rel == MANIFEST:
            continue
        out[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    return out


def write_manifest(bundle_dir: Path, manifest: dict) -> dict:
    manifest = dict(manifest)
    manifest["files"] = files_object(bundle_dir)
    write_json(Path(bundle_dir) / MANIFEST, manifest)
    return manifest


def verify_manifest(bundle_dir: Path) -> int:
    """Re-read manifest.json and check every listed file (size + sha256); fail on unlisted files."""
    bundle_dir = Path(bundle_dir)
    manifest = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    listed = manifest["files"]
    for rel, entry in listed.items():
        p = bundle_dir / rel
        if not p.is_file():
            raise SystemExit(f"verify: {rel} is listed but missing")
        if p.stat().st_size != entry["size"]:
            raise SystemExit(f"verify: {rel} size {p.stat().st_size} != {entry['size']}")
        if sha256_file(p) != entry["sha256"]:
            raise SystemExit(f"verify: {rel} sha256 differs")
    present = set(files_object(bundle_dir))
    unlisted = present - set(listed)
    if unlisted:
        raise SystemExit(f"verify: unlisted files {sorted(unlisted)}")
    for key in ("backbone", "head"):
        if manifest[key]["file"] not in listed:
            raise SystemExit(f"verify: {key} file not in files")
    for key in ("golden", "reference_stats", "base_data"):
        if manifest.get(key) and manifest[key] not in listed:
            raise SystemExit(f"verify: {key} file not in files")
    return len(listed)


# ----------------------------------------------------------------------------- sampling / stats

def stratified_sample(strata: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Proportional stratified sample of n indices (largest-remainder allocation), sorted."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    values, counts = np.unique(strata, return_counts=True)
    n = min(n, len(strata))
    exact = counts / counts.sum() * n
    alloc = np.floor(exact).astype(int)
    rest = n - alloc.sum()
    order = np.argsort(-(exact - alloc), kind="stable")
    alloc[order[:rest]] += 1
    chosen = []
    for v, k in zip(values, alloc):
        idx = np.flatnonzero(strata == v)
        chosen.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen))


def reference_stats(embeddings: np.ndarray, scores: np.ndarray, multi_label: bool,
                    thresholds=None, bins: int = 10) -> dict:
    """Statistics of the model outputs on validation data (models/README.md, reference_stats.json)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    top = sc.max(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(top, 0.0, 1.0), bins=edges)  # last bin includes 1.0
    if multi_label:
        thr = np.asarray(thresholds, dtype=np.float64)
        freq = (sc >= thr[None, :]).mean(axis=0)
    else:
        freq = np.bincount(sc.argmax(axis=1), minlength=sc.shape[1]) / len(sc)
    return {
        "count": int(len(emb)),
        "embedding_mean": floats(emb.mean(axis=0).astype(np.float32)),
        "embedding_var": floats(emb.var(axis=0).astype(np.float32)),
        "top_score_histogram": {"edges": floats(np.round(edges, 6)), "counts": [int(c) for c in counts]},
        "label_frequencies": floats(np.round(freq, 6)),
    }


def save_base_data(path: Path, embeddings: np.ndarray, labels: np.ndarray) -> None:
    from safetensors.numpy import save_file

    save_file(
        {
            "embeddings": np.ascontiguousarray(embeddings.astype(np.float16)),
            "labels": np.ascontiguousarray(labels.astype(np.uint8)),
        },
        str(path),
    )
    os.chmod(path, 0o644)


# ----------------------------------------------------------------------------- onnx runtime

def ort_session(path: Path, threads: int = 2, spinning: bool = True):
    """CPU session. spinning=False avoids the idle spin of the intra-op pool (much faster when the
    cores are shared with other processes; it does not change results)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def throughput(fn, n_items_per_call: int, calls: int = 20, warmup: int = 3, repeats: int = 3) -> dict:
    """Items/s of fn() (median and best of `repeats` timed runs of `calls` calls)."""
    for _ in range(warmup):
        fn()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(n_items_per_call * calls / (time.perf_counter() - t))
    rates.sort()
    return {"median_per_s": round(rates[len(rates) // 2], 1), "best_per_s": round(rates[-1], 1)}


def pip_freeze_subset(names) -> list:
    from importlib.metadata import version

    return [f"{n}=={version(n)}" for n in names]
