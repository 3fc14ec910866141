"""Backward of a Newton solve by the adjoint method, not by unrolling the iterations.

At the solution h_t = f(p_t, h_{t-1}), the loss L depends on h directly (g_t = ∂L/∂h_t) and
through every later step.  The total derivative λ_t = dL/dh_t obeys a linear recurrence
backwards in time,

    λ_t = g_t + J_{t+1}ᵀ λ_{t+1},      λ_T = 0,      J_{t+1} = ∂f(p_{t+1}, h_t)/∂h_t,

which is the same kind of scan as a Newton step, run in reverse.  Given λ, every parameter
θ of f, every p_t and h0 get their gradient from one vectorised vector-Jacobian product of
the step over all t:

    dL/dθ = Σ_t (∂f(p_t, h_{t-1})/∂θ)ᵀ λ_t,   dL/dp_t = (∂f/∂p_t)ᵀ λ_t,   dL/dh0 = J_0ᵀ λ_0.

Jacobians are recomputed from the saved states rather than stored, so the memory cost is
the states and p, as for any RNN layer.

Both passes run with autocast off on the inputs' device: the recurrence computes in the dtype
of p (fp32 or fp64), and the training loop calls ``backward()`` inside its autocast region,
which would otherwise run the adjoint's matmuls in bf16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from paralab.models.newton import newton_solve, scan, shift_states

if TYPE_CHECKING:
    from paralab.models.cell import RecurrentCell


def _with_params(cell: RecurrentCell, method: str, params: dict[str, torch.Tensor]):
    """``cell.<method>`` evaluated with ``params`` in place of the cell's own tensors.

    The autograd Function receives the parameters as inputs (so that their gradients are
    routed back); evaluating the cell through them, not through ``cell.A``, keeps that true
    when a wrapper such as FSDP swaps the module's parameter objects between passes.
    """
    caller = _MethodCaller(cell, method)
    prefixed = {f"cell.{name}": tensor for name, tensor in params.items()}
    return lambda *args: torch.func.functional_call(caller, prefixed, args)


class _MethodCaller(torch.nn.Module):
    def __init__(self, cell: RecurrentCell, method: str) -> None:
        super().__init__()
        self.cell = cell
        self.method = method

    def forward(self, *args):
        return getattr(self.cell, self.method)(*args)


def _autocast_off(device: torch.device):
    """Autocast disabled on ``device`` (see the module docstring)."""
    return torch.autocast(device_type=device.type, enabled=False)


class NewtonRecurrence(torch.autograd.Function):
    """states = solve(f, p, h0) in the forward; the adjoint scan in the backward.

    Inputs: the cell, the scan ``backend``, a list that receives the solve's NewtonStats
    (or None), p ``[B, T, G, N]``, h0 ``[B, N]`` or ``[B, N, 2]``, then the cell's recurrent
    parameters in ``cell.recurrent_parameter_names()`` order.  Output: states ``[B, T, ...]``.
    Differentiable once: the backward is not itself differentiable, and double backward
    raises.
    """

    @staticmethod
    def forward(ctx, cell, backend, stats_sink, p, h0, *params):
        named = dict(zip(cell.recurrent_parameter_names(), params))
        with _autocast_off(p.device):
            states, stats = newton_solve(
                _with_params(cell, "transition", named),
                _with_params(cell, "transition_and_jacobian", named),
                p,
                h0,
                cell.newton_settings(),
                backend,
            )
        if stats_sink is not None:
            stats_sink.append(stats)
        ctx.cell, ctx.backend = cell, backend
        ctx.save_for_backward(p, h0, states, *params)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states):
        p, h0, states, *params = ctx.saved_tensors
        cell, names = ctx.cell, ctx.cell.recurrent_parameter_names()
        if states.shape[1] == 0:  # no step: nothing reaches the states
            return None, None, None, *(torch.zeros_like(t) for t in (p, h0, *params))
        with _autocast_off(states.device):
            h_prev = shift_states(states, h0)
            with torch.no_grad():
                _, jac = _with_params(cell, "transition_and_jacobian", dict(zip(names, params)))(
                    p, h_prev
                )
                # λ_t = g_t + J_{t+1}ᵀ λ_{t+1}: coefficient t is J_{t+1}ᵀ, and zero at t = T-1.
                jac_t = jac.transpose(-1, -2) if jac.dim() == states.dim() + 1 else jac
                coeffs = torch.cat([jac_t[:, 1:], torch.zeros_like(jac_t[:, :1])], dim=1)
                grad_states = grad_states.to(states.dtype).contiguous()
                adjoint = scan(coeffs, grad_states, ctx.backend, reverse=True)
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_() for t in (p, h_prev, *params)]
                step = _with_params(cell, "transition", dict(zip(names, leaves[2:])))(*leaves[:2])
                grads = torch.autograd.grad(step, leaves, adjoint, allow_unused=True)
        grad_p, grad_h_prev, *grad_params = grads
        grad_h0 = grad_h_prev[:, 0] if grad_h_prev is not None else None
        grad_params = [
            torch.zeros_like(param) if grad is None else grad
            for param, grad in zip(params, grad_params)
        ]
        return None, None, None, grad_p, grad_h0, *grad_params
