"""Optimizers (foreach, as CUDA resolves them) and the GradScaler, as byte counts.

torch/optim/adam.py ``_multi_tensor_adam`` (non-capturable): state ``exp_avg`` and
``exp_avg_sq`` created lazily at the first step with ``zeros_like`` (one pair per
parameter, in order); ``step`` counters on the host; per step the only temporary
is ``exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)`` (one tensor per
parameter, alive until the step ends); lerp_/mul_/addcmul_/div_/add_/addcdiv_ are
in place. AdamW adds an in-place ``_foreach_mul_`` on the params. SGD with
momentum (torch/optim/sgd.py ``_multi_tensor_sgd``): the first step clones each
gradient into its momentum buffer, later steps update in place.

torch/amp/grad_scaler.py: ``_scale`` (fp32) and ``_growth_tracker`` (int32) at the
first ``scale``; ``outputs * _scale``; per ``unscale_``: ``_scale.double()``,
``.reciprocal()``, ``.float()``, a ``found_inf`` zero and the per-device copies of
both; ``update`` consumes ``found_inf``.
"""

from __future__ import annotations

from planner.analytic import ops as O
from planner.analytic.engine import Sim, T


class Optimizer:
    def __init__(self, sim: Sim, name: str, params: list[T], network: str) -> None:
        self.sim = sim
        self.name = name
        self.params = params
        self.network = network
        self.state: dict[int, list[T]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _tag(self, t: T) -> None:
        info = self.sim.mem.info[t.st.uid]
        info.category = "optimizer_state"
        info.network = self.network

    def step(self) -> None:
        sim = self.sim
        live = [p for p in self.params if p.grad is not None]
        if not live:
            return
        if self.name in ("adam", "adamw"):
            for p in live:
                if id(p) not in self.state:
                    a = sim.new(p.shape, p.dtype, "zeros_like")
                    self._tag(a)
                    b = sim.new(p.shape, p.dtype, "zeros_like")
                    self._tag(b)
                    self.state[id(p)] = [a, b]
            sim.mem.op = "_foreach_sqrt"
            sqrt = [sim.new(p.shape, p.dtype) for p in live]
            del sqrt
        elif self.name == "sgd":
            for p in live:
                if id(p) not in self.state:
                    buf = sim.new(p.shape, p.dtype, "clone")
                    self._tag(buf)
                    self.state[id(p)] = [buf]
        else:  # pragma: no cover - validated by the spec
            raise ValueError(self.name)


class GradScaler:
    def __init__(self, sim: Sim, network: str) -> None:
        self.sim = sim
        self.network = network
        self._scale: T | None = None
        self._growth: T | None = None
        self._found_inf: T | None = None

    def scale(self, loss: T) -> T:
        sim = self.sim
        if self._scale is None:
            self._scale = sim.new((), "f32", "full")
            self._growth = sim.new((), "i32", "full")
            for t in (self._scale, self._growth):
                info = sim.mem.info[t.st.uid]
                info.category = "optimizer_state"
                info.network = self.network
        return O.mul(loss, self._scale)

    def unscale_and_step(self, opt: Optimizer) -> None:
        sim = self.sim
        d = sim.new((), "f64", "_to_copy")
        r = sim.new((), "f64", "reciprocal")
        del d
        inv_scale = sim.new((), "f32", "_to_copy")
        del r
        found_inf = sim.new((), "f32", "full")
        if any(p.grad is not None for p in opt.params):
            dev_found_inf = sim.new((), "f32", "_to_copy")
            dev_inv_scale = sim.new((), "f32", "_to_copy")
            self._found_inf = dev_found_inf
            del dev_inv_scale, dev_found_inf
        del inv_scale, found_inf
        sim.mem.phase = "optimizer"
        opt.step()

    def update(self) -> None:
        self._found_inf = None
