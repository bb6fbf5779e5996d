"""The distillation loop (paper Algorithm 1) and its settings.

Adam (0.9, 0.999, 1e-8); the learning rate warms up linearly over the first 10% of the steps from 0.1 lr to lr,
then follows a cosine down to 0.01 lr (Appendix D.2); gradients are clipped to norm 1. The FLUX recipe of the
reference (dyweight_flux/train_example.yaml) is the same loop with other settings: optimizer = "adamw",
weight_decay = 5e-2, warmup = 0, lr_final = 0, batch_size = 1 with accumulate = 2, and checkpoint = true
(each network call of the student is recomputed in the backward pass, as its torch.utils.checkpoint does, so
backpropagating through a 12B transformer keeps one call's activations). Every optimiser step averages
`accumulate` batches of teacher pairs (x_T, target) drawn with the run's own generator, runs the student from the
same x_T, and descends

    endpoint (Eq. 10):  L = mean_b dist(x_stu(x_T), x_tea(x_T))   (+ the student's `penalty()` per sample, if any)
    path (Eq. A.15):    L = mean_b [ sum_{j=1}^{N-2} mse(x_stu_j, x_tea(t_j)) + dist(x_stu_{N-1}, x_tea(x_T)) ]

where x_stu_j is the student state after step j (nominally at grid point t_j) and x_tea(t_j) the teacher's state
there (teacher.path_states); the student's states come from its sampling callback. The relative endpoint error
against the teacher on held-out seeds is recorded at
a few checkpoints (the "eval" curve); `keep_best = true` ends with the parameters of the checkpoint where it was
lowest (a validation choice, recorded as "kept_step").

`relaxed_ball = true` is LD3's relaxed objective (docs/learned-solvers.md section 3, trainer.py
`_train_one_round`, `_update_latents`): the student starts from x_T' = sigma_max z' instead of sigma_max z, where
each training sample's z' is kept between batches. Per batch the same backward pass that trains the solver gives
the gradient of the batch's mean loss in each z' (as LD3's one backward pass); z' takes one SGD step (lr
`ball_lr`, default 12/S with S the grid's intervals), is projected onto
||z' - z||_2 <= r (`ball_radius`, default 0.001 numel(z) / S^2) and the move is kept only for samples whose loss
decreased (one more forward pass, counted in the training cost). The held-out evaluation uses the true z; LD3's
moves of the validation noises are not replicated.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields

import torch

from bench.metrics.analytic import relative_l2
from solvers.errors import InputError

from . import losses
from .teacher import take

SUPERVISIONS = ("endpoint", "path")
OPTIMIZERS = ("adam", "adamw")


def default_lr(nfe: int) -> float:
    """Lower learning rates for more steps (Appendix D.2 uses 5e-2 .. 1e-3)."""
    return 2e-2 if nfe <= 3 else 1e-2 if nfe <= 5 else 5e-3 if nfe <= 7 else 3e-3


@dataclass
class Settings:
    """Every option of `distill` besides the target, grid, AFS and seed (None: a default that depends on NFE)."""

    # the student: the learned solver's own structure options (its `structure`, e.g. DyWeight's history, init,
    # time_shift, time_scaling, divisor, time_scale_bounds), passed to its `untrained(...)`
    structure: dict = None
    # the teacher
    teacher: str = "ipndm"
    teacher_steps: int = 35
    teacher_options: dict = None
    teacher_afs: bool = False
    teacher_denoise: bool = True          # final D(x, sigma_min)
    teacher_schedule: str | None = None
    teacher_batch_size: int | None = None  # None: the model's `batch_hint` (500 for the small models)
    # supervision and data
    supervision: str = "endpoint"         # or "path" (Appendix C)
    path_substeps: int = 5                # teacher sub-steps per student interval for path targets
    loss: object = "mse"                  # a registered distance name or a callable
    num_samples: int = 4096               # teacher pairs for training
    eval_samples: int = 256               # held-out teacher pairs for the eval curve
    seed_start: int = 1_000_000_000       # training noise seeds start here (held out from evaluation seeds 0..)
    eval_seed_start: int = 2_000_000_000
    train_seeds: list | None = None       # explicit training seeds instead of seed_start .. + num_samples (e.g. the
    eval_seeds: list | None = None        # samples of one instance class), and held-out seeds likewise
    # optimisation
    steps: int | None = None              # optimiser steps
    batch_size: int = 16
    accumulate: int = 1                   # batches averaged into one optimiser step (FLUX: 2)
    optimizer: str = "adam"               # or "adamw" (decoupled weight decay)
    weight_decay: float = 0.0
    lr: float | None = None
    warmup: float = 0.1
    lr_final: float = 0.01                # the cosine ends at lr_final * lr
    grad_clip: float = 1.0
    checkpoint: bool = False              # recompute each student network call in backward (activation memory)
    student_precision: str = "float32"    # the student's calls without autocast ("model": the model's precision)
    tf32: bool = False                    # TF32 matmuls while training (the reference turns them off)
    eval_every: int | None = None
    keep_best: bool = False               # end with the parameters of the lowest held-out error (validation)
    init_from: dict | None = None         # {"solver": <learned name>, ...its options}: distilled first on the same
                                          # grid; its options() become the student's `init` (its starting point)
    # LD3's relaxed objective: each training noise z has a movable copy z' in a ball around it
    relaxed_ball: bool = False
    ball_radius: float | None = None      # None: LD3's 0.001 * numel(z) / S^2 (S = the student's steps)
    ball_lr: float | None = None          # None: LD3's 12 / S

    @classmethod
    def from_options(cls, options: dict, structure: tuple = ()) -> "Settings":
        """Shared settings from `options`; the keys in `structure` (the learned solver's) go to `structure`."""
        accepted = [f.name for f in fields(cls) if f.name != "structure"]
        unknown = [k for k in options if k not in accepted and k not in structure]
        if unknown:
            raise InputError(f"distill has no option {', '.join(map(repr, unknown))}; accepted: "
                             f"{', '.join([*structure, *accepted])}, cache_dir, cache_id, dtype, noise_shape, afs, "
                             "seed")
        s = cls(**{k: v for k, v in options.items() if k in accepted})
        s.structure = {k: v for k, v in options.items() if k in structure}
        s.teacher_options = dict(s.teacher_options or {})
        return s

    def resolve(self, nfe: int, model_lr: float | None = None, batch_hint: int | None = None) -> "Settings":
        """Check every value; fill the defaults (the student's own structure options are checked by its class,
        `untrained`). model_lr = the paper's learning rate for the model being distilled (Model.distill_lr), else
        the NFE-dependent default;
        batch_hint = the model's batch size for teacher and evaluation runs (Model.batch_hint)."""
        if self.supervision not in SUPERVISIONS:
            raise InputError(f"unknown supervision {self.supervision!r}; accepted: {', '.join(SUPERVISIONS)}")
        self.structure = dict(self.structure or {})
        if self.teacher_batch_size is None:
            self.teacher_batch_size = int(batch_hint or 500)
        for name in ("train_seeds", "eval_seeds"):
            v = getattr(self, name)
            if v is not None:
                if not (isinstance(v, (list, tuple)) and v and all(isinstance(k, int) and not isinstance(k, bool)
                                                                    and k >= 0 for k in v)):
                    raise InputError(f"{name} must be a non-empty list of non-negative integer seeds, got {v!r}")
                setattr(self, name, [int(k) for k in v])
                setattr(self, "num_samples" if name == "train_seeds" else "eval_samples", len(v))
        for name in ("num_samples", "eval_samples", "batch_size", "path_substeps", "teacher_batch_size",
                     "accumulate"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "eval_samples" else 1):
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise InputError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.lr_final, (int, float)) and 0 <= self.lr_final <= 1):
            raise InputError(f"lr_final must be a fraction in [0, 1], got {self.lr_final!r}")
        if self.student_precision not in ("float32", "model"):
            raise InputError(f"student_precision must be \"float32\" or \"model\", got {self.student_precision!r}")
        for name in ("teacher_afs", "teacher_denoise", "checkpoint", "keep_best", "tf32"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        losses.get(self.loss)
        if self.steps is None:
            self.steps = 1000
        if not isinstance(self.steps, int) or self.steps < 1:
            raise InputError(f"steps must be a positive integer, got {self.steps!r}")
        if self.lr is None:
            self.lr = model_lr if model_lr is not None else default_lr(nfe)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.warmup < 1:
            raise InputError(f"warmup must be a fraction in [0, 1), got {self.warmup!r}")
        if self.eval_every is None:
            self.eval_every = max(1, self.steps // 10)
        if not isinstance(self.relaxed_ball, bool):
            raise InputError(f"relaxed_ball must be True or False, got {self.relaxed_ball!r}")
        for name in ("ball_radius", "ball_lr"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and v > 0):
                raise InputError(f"{name} must be a positive number (or unset for LD3's default), got {v!r}")
        return self

    def record(self) -> dict:
        """The settings for metadata["training"]; the distance is recorded as "distance" ("loss" is the curve)."""
        d = asdict(self)
        d["distance"] = losses.get(d.pop("loss"))[0]
        d.update(d.pop("structure") or {})        # the student's structure options sit beside the shared ones
        return d


def seed_lists(settings: Settings) -> tuple[list[int], list[int]]:
    """The training and held-out seeds: the explicit lists, else the ranges from seed_start / eval_seed_start."""
    train = settings.train_seeds or list(range(settings.seed_start, settings.seed_start + settings.num_samples))
    held = settings.eval_seeds or list(range(settings.eval_seed_start,
                                             settings.eval_seed_start + settings.eval_samples))
    return train, held


def lr_factor(step: int, steps: int, warmup: float = 0.1, start: float = 0.1, final: float = 0.01) -> float:
    """Linear warm-up from `start` over the first `warmup` of the steps, then a cosine from 1 down to `final`."""
    w = int(round(warmup * steps))
    if step < w:
        return start + (1 - start) * step / w
    p = (step - w) / max(1, steps - w)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))


def _student_states(student, den, x_T, sigmas, afs, path: bool):
    """The student's final state and, for path supervision, its states x_1 .. x_{N-2} at the interior grid points
    (read by the sampling callback, with their autograd graphs)."""
    if not path:
        return student.sample(den, x_T, sigmas, afs=afs), None
    states = []
    final = student.sample(den, x_T, sigmas, afs=afs, callback=lambda s: states.append(s["x"]))
    return final, states[1:-1]


@torch.no_grad()
def evaluate(student, source, sigmas, afs, data, batch_size: int = 500) -> float:
    """Mean relative endpoint error of the student against the teacher on held-out pairs."""
    errs = []
    conds = source.conditions(data.seeds) if source.model is not None else None
    for lo in range(0, len(data.seeds), batch_size):
        idx = torch.arange(lo, min(lo + batch_size, len(data.seeds)))
        den = source.denoiser(take(conds, idx))
        x = student.sample(den, data.x_T[idx], sigmas, afs=afs)
        errs.append(relative_l2(x.double(), data.targets[idx].double()))
    return float(torch.cat(errs).mean())


def _checkpointed(den):
    """The denoiser recomputed in the backward pass instead of keeping its activations (torch.utils.checkpoint)."""
    from torch.utils.checkpoint import checkpoint

    def recomputed(x, sigma):
        return checkpoint(den, x, sigma, use_reentrant=False)
    recomputed.features = getattr(den, "features", None)
    return recomputed


def optimizer(params, settings: Settings):
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=settings.weight_decay)
    return torch.optim.Adam(params, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=settings.weight_decay)


def train(student, source, sigmas, afs: bool, settings: Settings, train_set, eval_set, path_set=None,
          seed: int = 0, progress=None, memory=None, group=None) -> dict:
    """Optimise the student's Parameters in place; return the training curves. `progress(info)`, if given, is
    called after every optimiser step with {"step", "steps", "loss", "eval" (the latest held-out error or None)}.
    `memory` (bench.distill.memory.MemoryPlan) splits each batch into micro-batches and may checkpoint the network
    calls; `group` (rank, world, all_reduce_sum) trains data-parallel: every rank takes its share of each batch
    and the gradients are summed, so the update is the single process's.

    A distance that reads images (losses.reads_images, e.g. "inception") gets decoded samples: the student's
    through the model's differentiable decoder, the teacher's without gradient (the reference decodes with
    differentiable_decode_first_stage before the Inception features of latent models)."""
    run = _Trainer(student, source, sigmas, afs, settings, train_set, eval_set, path_set, seed, memory, group)
    if run.evaluating:
        run.evaluate(0)
    for step in range(settings.steps):
        total = run.step(step)
        if progress:
            progress({"step": step + 1, "steps": settings.steps, "loss": total,
                      "eval": run.curves["eval_error"][-1] if run.curves["eval_error"] else None})
    return run.finish()


class _Trainer:
    """The state of one distillation (optimiser, schedule, the pairs' order, the best checkpoint, the curves) and
    its parts: one optimiser step (`step`), one batch's backward pass (`accumulate_batch`), the held-out check."""

    def __init__(self, student, source, sigmas, afs, settings, train_set, eval_set, path_set, seed, memory, group):
        self.student, self.source, self.sigmas, self.afs, self.settings = student, source, sigmas, afs, settings
        self.train_set, self.eval_set, self.path_set = train_set, eval_set, path_set
        _, self.distance = losses.get(settings.loss)
        self.images = losses.reads_images(self.distance)
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.opt = optimizer(self.params, settings)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda k: lr_factor(k, settings.steps, settings.warmup, final=settings.lr_final))
        self.gen = torch.Generator().manual_seed(int(seed))
        self.conds = source.conditions(train_set.seeds) if source.model is not None else None
        self.n = len(train_set.seeds)
        self.curves = {"step": [], "loss": [], "lr": [], "eval_step": [], "eval_error": []}
        self.order = torch.randperm(self.n, generator=self.gen)
        self.pos = 0
        self.t0 = time.perf_counter()
        self.evaluating = eval_set is not None and len(eval_set.seeds) > 0
        self.best = None                                         # (held-out error, step, parameters)
        self.ball = _Ball(train_set.x_T, sigmas, settings) if settings.relaxed_ball else None
        self.group = group
        self.world, self.rank = (group.world, group.rank) if group is not None else (1, 0)
        self.micro = memory.micro if memory is not None else None
        self.checkpoint = settings.checkpoint or bool(memory is not None and memory.checkpoint)
        if self.world > 1 and (self.ball is not None or settings.batch_size % self.world):
            raise InputError("data-parallel distillation needs a batch_size that splits over the ranks and no "
                             "relaxed_ball (its per-sample moves live on one process)")

    def sample_loss(self, den, idx, x_T):
        """Per-sample loss of the student from x_T against the teacher's targets of the pairs `idx`."""
        final, mids = _student_states(self.student, den, x_T, self.sigmas, self.afs, self.path_set is not None)
        target = self.train_set.targets[idx]
        if self.images:
            final = self.source.decode(final)
            with torch.no_grad():
                target = self.source.decode(target)
        loss = losses.per_sample(self.distance, final, target)
        penalty = self.student.penalty()                         # the student's own regulariser, per sample
        if penalty is not None:
            loss = loss + penalty.to(loss.device, loss.dtype)
        if mids:
            tea = self.path_set.targets[idx]
            loss = loss + sum(losses.mse(m, tea[:, j]) for j, m in enumerate(mids))
        return loss

    def next_batch(self):
        """The indices of the next batch of training pairs (the same on every rank: one generator)."""
        size = self.settings.batch_size
        if self.pos + size > self.n:                             # a new epoch: reshuffle
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.pos:self.pos + size]
        self.pos += size
        return idx

    def losses_of(self, idx):
        """Per-sample losses of the pairs `idx`, and the relaxed ball's move for them (None without the ball)."""
        den = self.source.denoiser(take(self.conds, idx))
        if self.checkpoint:
            den = _checkpointed(den)
        if self.ball is None:
            return self.sample_loss(den, idx, self.train_set.x_T[idx]), None
        ball = self.ball
        z = ball.start(idx)
        loss = self.sample_loss(den, idx, ball.x_T(idx, z))
        return loss, lambda: ball.move(idx, z, loss.detach(), lambda x: self.sample_loss(den, idx, x))

    def accumulate_batch(self, idx) -> float:
        """Backpropagate the batch's mean loss / accumulate; returns that value. One backward pass for the whole
        batch on one process (the plain path); else this rank's share of the batch in micro-batches, each
        weighted by its share of the batch, so that the summed gradient (over micro-batches and ranks) is the
        batch's."""
        accumulate, micro = self.settings.accumulate, self.micro
        if self.world == 1 and (micro is None or micro >= len(idx)):
            loss, move = self.losses_of(idx)
            loss = loss.mean()
            (loss / accumulate).backward()
            if move is not None:
                move()
            return float(loss.detach()) / accumulate
        share = len(idx) // self.world
        mine = idx[self.rank * share:(self.rank + 1) * share]
        total = 0.0
        for lo in range(0, share, micro or share):
            per, move = self.losses_of(mine[lo:lo + (micro or share)])
            part = per.sum() / (len(idx) * accumulate)
            part.backward()
            total += float(part.detach())
            if move is not None:
                move()
        return total

    def evaluate(self, step: int):
        """Record the held-out error at `step`; with keep_best, remember the parameters if it is the lowest."""
        self.curves["eval_step"].append(step)
        self.curves["eval_error"].append(evaluate(self.student, self.source, self.sigmas, self.afs, self.eval_set,
                                                  self.settings.teacher_batch_size))
        if self.settings.keep_best and (self.best is None or self.curves["eval_error"][-1] < self.best[0]):
            self.best = (self.curves["eval_error"][-1], step,
                         {k: v.detach().clone() for k, v in self.student.state_dict().items()})

    def step(self, step: int) -> float:
        """One optimiser step over `accumulate` batches (summed over the ranks); returns its loss."""
        settings = self.settings
        self.student.begin_step(step, settings.steps)
        self.opt.zero_grad(set_to_none=True)
        with _StudentPrecision(settings):
            total = sum(self.accumulate_batch(self.next_batch()) for _ in range(settings.accumulate))
        if self.world > 1:                                       # data-parallel: the batch's summed gradient
            total = self.group.all_reduce_sum([p.grad for p in self.params if p.grad is not None] +
                                              [torch.tensor([total], dtype=torch.float64)])[-1].item()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, settings.grad_clip)
        self.curves["lr"].append(self.opt.param_groups[0]["lr"])
        self.opt.step()
        self.sched.step()
        self.curves["step"].append(step)
        self.curves["loss"].append(total)
        last = step == settings.steps - 1
        if self.evaluating and ((step + 1) % settings.eval_every == 0 or last):
            self.evaluate(step + 1)
        return total

    def finish(self) -> dict:
        """The curves, with the training time, the kept checkpoint (loaded into the student) and the ball's
        record."""
        self.curves["train_seconds"] = time.perf_counter() - self.t0
        if self.best is not None:
            self.student.load_state_dict(self.best[2])
            self.curves["kept_step"] = self.best[1]
        if self.ball is not None:
            self.curves.update(self.ball.record())
        return self.curves


class _StudentPrecision:
    """The student's network calls in the model's full precision (no autocast: bench.models.devices) and TF32
    matmuls and convolutions off during training, as the reference's training loop (settings `student_precision`,
    `tf32`)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def __enter__(self):
        from bench.models import devices
        self.full = devices.full_precision() if self.settings.student_precision == "float32" else None
        if self.full is not None:
            self.full.__enter__()
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        if not self.settings.tf32:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        return self

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
        if self.full is not None:
            self.full.__exit__(*exc)


class _Ball:
    """The movable training noises of LD3's relaxed objective (module docstring): offsets z' - z per training
    sample, in units of the unit noise z = x_T / sigma_max."""

    def __init__(self, x_T: torch.Tensor, sigmas, settings: Settings):
        steps = len(sigmas) - 1
        self.x_T0, self.sigma_max = x_T, float(sigmas[0])
        self.offsets = torch.zeros_like(x_T)
        self.radius = settings.ball_radius or 0.001 * x_T[0].numel() / steps ** 2
        self.lr = settings.ball_lr or 12.0 / steps
        self.tried = self.kept = 0

    def start(self, idx) -> torch.Tensor:
        return self.offsets[idx].clone().requires_grad_(True)

    def x_T(self, idx, z: torch.Tensor) -> torch.Tensor:
        return self.x_T0[idx] + self.sigma_max * z

    @torch.no_grad()
    def move(self, idx, z: torch.Tensor, loss: torch.Tensor, loss_at) -> None:
        """One SGD step of the offsets (their gradient is set by the batch's backward pass), projected onto the
        ball; kept where the sample's loss decreased."""
        if z.grad is None:
            return
        new = z - self.lr * z.grad
        norm = new.flatten(1).norm(dim=1).clamp_min(1e-300)
        scale = torch.clamp(self.radius / norm, max=1.0).reshape(-1, *[1] * (new.dim() - 1))
        new = new * scale
        better = loss_at(self.x_T(idx, new)) < loss
        self.offsets[idx[better.cpu()]] = new[better]
        self.tried += len(idx)
        self.kept += int(better.sum())

    def record(self) -> dict:
        norms = self.offsets.flatten(1).norm(dim=1)
        return {"ball": {"radius": self.radius, "lr": self.lr, "moves_kept": self.kept, "moves_tried": self.tried,
                         "max_offset": float(norms.max())}}
