"""BERT as Hugging Face transformers builds it, in plain torch (transformers is not a dependency of
vramplan), for the published-figures benchmark (benchmarks/bench_published.py).

Transcribed from transformers' ``models/bert/modeling_bert.py`` (2.11 .. 4.16, the versions of the
published runs): ``BertEmbeddings`` (word + position + token-type embeddings, LayerNorm, dropout),
``BertSelfAttention`` in its eager form (Q, K, V Linear; ``transpose_for_scores`` views;
``matmul(q, k^T) / sqrt(head)`` + the additive mask; softmax; dropout; ``matmul(probs, v)``;
``permute(0, 2, 1, 3).contiguous()``), ``BertSelfOutput`` / ``BertOutput`` (dense, dropout,
LayerNorm of the residual sum), ``BertIntermediate`` (dense, GELU), ``BertPooler`` (first token,
dense, tanh), ``BertModel.forward``'s defaults when only ``input_ids`` is given (an all-ones
``attention_mask`` made as ``torch.ones(input_shape)``, ``token_type_ids`` zeros, the extended mask
``(1.0 - mask[:, None, None, :]) * -10000.0``) and ``BertForSequenceClassification`` (dropout,
Linear(hidden, num_labels), cross-entropy).

Knobs: the ``BertConfig`` sizes (bert-base-uncased: hidden 768, 12 layers, 12 heads, intermediate
3072; bert-large-uncased: 1024, 24, 16, 4096; vocabulary 30,522; 512 positions), ``seq`` (tokens
per sequence) and ``mode``:

* ``train``: Trainer's step on ``BertForSequenceClassification`` (2 labels): forward on
  ``input_ids`` and ``labels`` only, backward, ``clip_grad_norm_(1.0)`` (TrainingArguments'
  ``max_grad_norm``), AdamW without weight decay (TrainingArguments' defaults; transformers' own
  AdamW loops over the parameters one by one, hence ``foreach=False``). ``--precision amp-fp16``
  is ``fp16=True`` (native AMP + GradScaler), ``--checkpoint BertLayer`` is
  ``gradient_checkpointing=True`` (one checkpoint per ``BertLayer``; transformers 4.16 used the
  reentrant form, vramplan wraps non-reentrant), ``--accum N`` is ``gradient_accumulation_steps``,
  ``--knob optim=adafactor`` is ``optim="adafactor"``: transformers' own ``Adafactor`` as the Trainer
  makes it (``scale_parameter=False, relative_step=False``, lr 5e-5, no first moment), transcribed
  below from ``transformers/optimization.py`` ``Adafactor.step``.
* ``infer``: PyTorchBenchmark's inference measurement (transformers 2.11): ``BertModel`` (no
  head) in eval mode, one forward under ``torch.no_grad()``, inputs ``torch.randint`` token ids.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Embeddings(nn.Module):
    def __init__(self, vocab, hidden, positions):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(0.1)
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)), persistent=False)

    def forward(self, input_ids, token_type_ids):
        seq = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(self.position_ids[:, :seq])
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads, self.head = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(0.1)

    def split(self, x):
        return x.view(x.shape[0], x.shape[1], self.heads, self.head).permute(0, 2, 1, 3)

    def forward(self, h, mask):
        q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head)
        probs = self.dropout(F.softmax(scores + mask, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.shape[0], ctx.shape[1], -1)


class AddNorm(nn.Module):
    """BertSelfOutput / BertOutput: dense, dropout, LayerNorm(x + residual)."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertLayer(nn.Module):
    def __init__(self, hidden, heads, intermediate):
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.attention_output = AddNorm(hidden, hidden)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = AddNorm(intermediate, hidden)

    def forward(self, h, mask):
        a = self.attention_output(self.attention(h, mask), h)
        return self.output(F.gelu(self.intermediate(a)), a)


class Bert(nn.Module):
    def __init__(self, vocab, hidden, layers, heads, intermediate, positions, labels):
        super().__init__()
        self.embeddings = Embeddings(vocab, hidden, positions)
        self.layer = nn.ModuleList(BertLayer(hidden, heads, intermediate) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.labels = labels
        if labels:  # BertForSequenceClassification's head
            self.dropout = nn.Dropout(0.1)
            self.classifier = nn.Linear(hidden, labels)

    def forward(self, input_ids):
        shape = input_ids.shape
        attention_mask = torch.ones(shape, device=input_ids.device)
        token_type_ids = torch.zeros(shape, dtype=torch.long, device=input_ids.device)
        mask = (1.0 - attention_mask[:, None, None, :].to(self.pooler.weight.dtype)) * -10000.0
        h = self.embeddings(input_ids, token_type_ids)
        for layer in self.layer:
            h = layer(h, mask)
        pooled = torch.tanh(self.pooler(h[:, 0]))
        return self.classifier(self.dropout(pooled)) if self.labels else (h, pooled)


class Adafactor(torch.optim.Optimizer):
    """transformers.optimization.Adafactor.step with the Trainer's options (beta1 None: no first
    moment; weight decay 0; relative_step and scale_parameter off: the lr as given): per parameter,
    factored second moments (a row and a column vector) for matrices, a full one otherwise, and the
    temporaries its update makes (grad**2 + eps; the row/column approximation; the update's RMS)."""

    def __init__(self, params, lr=5e-5, eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8):
        super().__init__(params, dict(lr=lr, eps=eps, clip_threshold=clip_threshold, decay_rate=decay_rate))

    @staticmethod
    def _rms(t):
        return t.norm(2) / (t.numel() ** 0.5)

    @staticmethod
    def _approx_sq_grad(row, col):
        r = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
        return torch.mul(r, col.unsqueeze(-2).rsqrt())

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                factored = grad.dim() >= 2
                if not state:
                    state["step"] = 0
                    if factored:
                        state["exp_avg_sq_row"] = torch.zeros(grad.shape[:-1]).to(grad)
                        state["exp_avg_sq_col"] = torch.zeros(grad.shape[:-2] + grad.shape[-1:]).to(grad)
                    else:
                        state["exp_avg_sq"] = torch.zeros_like(grad)
                    state["RMS"] = 0
                state["step"] += 1
                state["RMS"] = self._rms(p)
                beta2t = 1.0 - math.pow(state["step"], group["decay_rate"])
                update = (grad**2) + group["eps"][0]
                if factored:
                    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
                    row.mul_(beta2t).add_(update.mean(dim=-1), alpha=1.0 - beta2t)
                    col.mul_(beta2t).add_(update.mean(dim=-2), alpha=1.0 - beta2t)
                    update = self._approx_sq_grad(row, col)
                    update.mul_(grad)
                else:
                    sq = state["exp_avg_sq"]
                    sq.mul_(beta2t).add_(update, alpha=1.0 - beta2t)
                    update = sq.rsqrt().mul_(grad)
                update.div_((self._rms(update) / group["clip_threshold"]).clamp_(min=1.0))
                update.mul_(group["lr"])
                p.add_(-update)


def networks(hidden: int = 768, layers: int = 12, heads: int = 12, intermediate: int = 3072,
             vocab: int = 30522, positions: int = 512, mode: str = "train", optim: str = "adamw"):
    if mode not in ("train", "infer"):
        raise ValueError(f"mode: {mode!r} (valid: train, infer)")
    if optim not in ("adamw", "adafactor"):
        raise ValueError(f"optim: {optim!r} (valid: adamw, adafactor)")
    net = Bert(vocab, hidden, layers, heads, intermediate, positions, 2 if mode == "train" else 0)
    net.optim = optim
    if mode == "infer":
        net.eval()
        net.requires_grad_(False)
        # a step file needs an optimizer: SGD over one stand-in element (one 512-byte block) that
        # the inference step never touches
        return {"bert": net, "stub": nn.Linear(1, 1, bias=False)}
    return {"bert": net}


def optimizers(nets):
    if "stub" in nets:  # inference: nothing of BERT's to optimise
        return {"stub": torch.optim.SGD(nets["stub"].parameters(), lr=0.0)}
    if nets["bert"].optim == "adafactor":
        return {"bert": Adafactor(nets["bert"].parameters(), lr=5e-5)}
    return {"bert": torch.optim.AdamW(nets["bert"].parameters(), lr=5e-5, weight_decay=0.0, foreach=False)}


def batch(batch_size: int = 4, seq: int = 512, vocab: int = 30522, mode: str = "train"):
    ids = torch.randint(100, min(30000, vocab), (batch_size, seq), device="cuda")
    return {"input_ids": ids, "labels": torch.randint(0, 2, (batch_size,), device="cuda")}


def step(nets, opts, batch, vp):
    net = nets["bert"]
    if "stub" in opts:
        with torch.no_grad():
            out = net(batch["input_ids"])
        vp.keep.out = out  # PyTorchBenchmark keeps the outputs until the call returns
        # vramplan needs a backward and a step: on the 1-element stand-in (a few 512-byte blocks)
        vp.zero_grad(opts["stub"])
        vp.backward(nets["stub"].weight.sum(), opts["stub"])
        vp.step(opts["stub"])
        return
    vp.zero_grad(opts["bert"])
    with vp.autocast():
        logits = net(batch["input_ids"])
        loss = F.cross_entropy(logits.view(-1, 2), batch["labels"].view(-1))
    vp.backward(loss, opts["bert"])
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    vp.step(opts["bert"])
