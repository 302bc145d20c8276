"""I-FGSM (Kurakin et al. 2017; paper 002c eq. 4) and the adversarial-vulnerability transfer it measures (spec 002c
§2 M2, §4 K2, §6.1).

L∞ attack in pixel space [0, 1] (the net normalises inside, see `nets.Net`), batched, with the model in eval mode.
Gradients are taken with `torch.autograd.grad` w.r.t. the images only: the parameters' `.grad` is never touched.
"Fooled" means the prediction changed from the net's own clean prediction (spec 002c §6.1's pick); the
changed-from-the-label reading is reported beside it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .nets import Net, eval_mode, same_classes


def ifgsm(net: Net, x01: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 5, step_size: float | None = None,
          batch_size: int = 256) -> torch.Tensor:
    """x_{t+1} = clip_[0,1](clip_{x,ε}(x_t + α·sign(∇_x CE(f(x_t), y)))), x_0 = x, α = ε/4 by default, k = 5 steps
    (Kurakin et al. 2017; paper 002c eq. 4; α = ε/4 is spec 002c K2's pick). Same device and dtype as x01."""
    if eps < 0 or steps < 0:
        raise ConfigError(f"I-FGSM needs eps ≥ 0 and steps ≥ 0, got eps={eps}, steps={steps}")
    if len(y) != len(x01):
        raise ConfigError(f"I-FGSM got {len(x01)} images but {len(y)} labels")
    alpha = eps / 4 if step_size is None else float(step_size)
    out = []
    with eval_mode(net.model), torch.enable_grad():
        for i in range(0, len(x01), batch_size):
            x0 = x01[i:i + batch_size].to(net.device).detach()
            target = y[i:i + batch_size].to(net.device).long()
            x = x0.clone()
            for _ in range(steps):
                x.requires_grad_(True)
                loss = F.cross_entropy(net.logits(x), target, reduction="sum")  # per-image gradients, eval mode
                (grad,) = torch.autograd.grad(loss, x)
                x = x.detach() + alpha * grad.sign()
                x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0.0, 1.0)
            out.append(x.detach().to(x01.device, x01.dtype))
    return torch.cat(out) if out else x01.clone()


def fooling_mask(net: Net, x_clean: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor | None = None,
                 batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(f(x_adv) ≠ f(x_clean), f(x_adv) ≠ y) per image as CPU bool masks; the second is None without labels
    (spec 002c §6.1: the first is the pick, the second the alternative reading)."""
    with eval_mode(net.model):
        clean, adv = net.predict(x_clean, batch_size), net.predict(x_adv, batch_size)
    return clean != adv, (None if y is None else adv != y.cpu().long())


def fooling_rate(net: Net, x01: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 5,
                 step_size: float | None = None, batch_size: int = 256, clean: torch.Tensor | None = None) -> float:
    """Fraction of images whose prediction changes under I-FGSM(ε); `clean` = the net's clean predictions, if known."""
    if len(x01) == 0:
        return float("nan")
    with eval_mode(net.model):
        clean = net.predict(x01, batch_size) if clean is None else clean
        adv = net.predict(ifgsm(net, x01, y, eps, steps, step_size, batch_size), batch_size)
    return float((adv != clean).double().mean())


def calibrate_eps(net: Net, x01: torch.Tensor, y: torch.Tensor, target: float = 0.85, steps: int = 5,
                  lo: float = 0.0, hi: float = 0.1, iters: int = 12, tol: float = 0.01, step_size_ratio: float = 0.25,
                  batch_size: int = 256) -> dict:
    """ε with the net's I-FGSM fooling rate ≈ `target` (spec 002c K2: 85 %), by bisection on [lo, hi], assuming the
    rate grows with ε; `hi` doubles (up to 1.0) until it reaches the target. Stops within `tol` or after `iters`
    bisections. Returns `eps`, its `rate` (a fraction), `reached` (|rate − target| ≤ tol; False also when even ε = 1
    falls short, then `eps` = the largest tried), `hi` (the bracket used), `evaluations` [(ε, rate), …]."""
    if not 0 < target <= 1 or tol <= 0 or not 0 <= lo < hi or iters < 0:
        raise ConfigError(f"calibrate_eps needs 0 < target ≤ 1, tol > 0, 0 ≤ lo < hi, iters ≥ 0; got target={target}, "
                          f"tol={tol}, lo={lo}, hi={hi}, iters={iters}")
    with eval_mode(net.model):
        clean = net.predict(x01, batch_size)
    history: list[tuple[float, float]] = []

    def rate(eps: float) -> float:
        r = fooling_rate(net, x01, y, eps, steps, eps * step_size_ratio, batch_size, clean)
        history.append((eps, r))
        return r

    r_hi = rate(hi)
    while r_hi < target - tol and hi < 1.0:
        lo, hi = hi, min(2 * hi, 1.0)
        r_hi = rate(hi)
    bracket = hi

    def result(eps: float, r: float, reached: bool) -> dict:
        return {"eps": eps, "rate": r, "reached": reached, "target": target, "hi": bracket, "evaluations": history}

    if r_hi < target - tol:
        return result(hi, r_hi, False)  # even the largest ε falls short: say so, never clip silently
    if abs(r_hi - target) <= tol:
        return result(hi, r_hi, True)
    for _ in range(iters):
        mid = (lo + hi) / 2
        r = rate(mid)
        if abs(r - target) <= tol:
            return result(mid, r, True)
        lo, hi = (mid, hi) if r < target else (lo, mid)
    eps, r = min(history, key=lambda er: (abs(er[1] - target), er[0]))
    return result(eps, r, False)


def _unique_names(nets: list[Net]) -> list[str]:
    """Each net's name, or `student<i>` when empty or taken by an earlier one."""
    names: list[str] = []
    for i, n in enumerate(nets):
        names.append(n.name if n.name and n.name not in names else f"student{i}")
    return names


def transfer_fooling(teacher: Net, students: list[Net], x01: torch.Tensor, y: torch.Tensor, eps: float,
                     steps: int = 5, step_size: float | None = None, source: Net | None = None,
                     batch_size: int = 256) -> dict:
    """M2: attack `source` (default the teacher; a foreign net for the Fig. 3c control) with I-FGSM(ε), keep the
    images it is fooled on, and report per student the % of kept images whose prediction changes from its own clean
    prediction (paper 002c §4.2, Table 6; spec 002c §2 M2, §6.1). Per student: `fooling_pct`, `kept`, the per-image
    `indicator` (bool over kept images, for bootstrapping) and the vs-label reading `fooling_vs_label_pct`,
    `indicator_vs_label`. Top level: `source_fooling_pct` (over all images), `teacher_fooling_pct` (over kept),
    `kept`, `n`, the `kept_mask` over all images, `eps`."""
    source = teacher if source is None else source
    same_classes(teacher, [*students, *([source] if source is not teacher else [])])
    x_adv = ifgsm(source, x01, y, eps, steps, step_size, batch_size)
    flipped, _ = fooling_mask(source, x01, x_adv, None, batch_size)
    kept = flipped
    xs, xa, ys = x01[kept.to(x01.device)], x_adv[kept.to(x_adv.device)], y.cpu()[kept]

    def pct(mask: torch.Tensor) -> float:
        return float(mask.double().mean() * 100) if len(mask) else float("nan")

    def report(net: Net) -> dict:
        changed, wrong = fooling_mask(net, xs, xa, ys, batch_size)
        return {"fooling_pct": pct(changed), "kept": int(len(changed)), "indicator": changed,
                "fooling_vs_label_pct": pct(wrong), "indicator_vs_label": wrong}

    per_student = {name: report(s) for name, s in zip(_unique_names(students), students)}
    teacher_changed = report(teacher)["indicator"] if source is not teacher else torch.ones(len(ys), dtype=torch.bool)
    return {"source": source.name, "eps": eps, "steps": steps, "step_size": eps / 4 if step_size is None else step_size,
            "n": len(x01), "kept": int(kept.sum()), "kept_mask": kept, "source_fooling_pct": pct(flipped),
            "teacher_fooling_pct": pct(teacher_changed), "students": per_student}
