"""The k-diffusion DPM++ 2M Karras scheduler (pipelines/kdiffusion.py) against an
independent restatement of the published sampler: k-diffusion's `get_sigmas_karras`
and `sample_dpmpp_2m` (crowsonkb/k-diffusion `k_diffusion/sampling.py`) with the
discrete-epsilon model wrapper of ToTheBeginning/PuLID `pulid/pipeline_v1_1.py`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

SDXL_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear",
                  "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0,
                  "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                  "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False}


# ------------------------------------------------- the published formulas
def _train_sigmas():
    # SD/SDXL: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2 (float64), alphas_cumprod in float32
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    ac = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)
    return ((1 - ac) / ac) ** 0.5


def _karras(n, smin, smax, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1)])


def _reference_sample(eps_model, noise, steps):
    """k-diffusion's sample_dpmpp_2m on the CompVis epsilon wrapper; returns (x, ts)."""
    train = _train_sigmas()
    log_train = train.log()
    sigmas = _karras(steps, train[0], train[-1])
    x = noise * sigmas[0].to(noise)
    ts, old = [], None
    for i in range(steps):
        s = sigmas[i] * x.new_ones([x.shape[0]])
        t_int = (s.log() - log_train[:, None]).abs().argmin(dim=0)
        ts.append(int(t_int[0]))
        eps = eps_model(x / (s[:, None, None, None] ** 2 + 1) ** 0.5, t_int).to(x.dtype)
        denoised = x - eps * s[:, None, None, None]
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * ((1 + 1 / (2 * r)) * denoised
                                                                      - (1 / (2 * r)) * old)
        old = denoised
    return x, ts


def _fake_eps(x, t):
    """A deterministic, nonlinear stand-in for the UNet that depends on t."""
    tt = t.to(x.dtype).reshape(-1, 1, 1, 1) / 1000
    return torch.tanh(0.7 * x + tt) + 0.3 * torch.sin(3 * x * tt + 1.0) - 0.1 * x.mean(dim=(2, 3), keepdim=True)


def _scheduler(dtype=None):
    from pipelines.samplers import make_scheduler

    return make_scheduler("kdpmpp_2m_karras", SDXL_SCHEDULER, dtype=dtype)


# ------------------------------------------------------------------ tests
def test_sigmas_and_timesteps_are_the_references():
    sched = _scheduler()
    sched.set_timesteps(25)
    s = sched.sigmas
    assert s.dtype == torch.float32 and len(s) == 26 and float(s[-1]) == 0.0
    # sigma(999) = 14.6146 and sigma(0) = 0.0292 of the SDXL schedule, rho 7
    assert [round(float(v), 4) for v in s[:3]] == [14.6146, 12.283, 10.2778]
    assert float(s[-2]) == pytest.approx(0.0292, abs=1e-4)
    train = _train_sigmas()
    assert torch.equal(s, _karras(25, train[0], train[-1]))
    assert float(sched.init_noise_sigma) == float(s[0])
    # integer t = argmin |log sigma - log sigma_train|, so the first step is 999 and the last 0
    expect = [int((math.log(float(v)) - train.log()).abs().argmin()) for v in s[:-1]]
    assert sched.timesteps.tolist() == expect and expect[0] == 999 and expect[-1] == 0
    # diffusers' own DPM++ 2M Karras maps sigmas to other (fractional, rounded) timesteps
    from pipelines.samplers import make_scheduler

    other = make_scheduler("dpmpp_2m_karras", SDXL_SCHEDULER)
    other.set_timesteps(25)
    assert torch.allclose(other.sigmas.float(), s, atol=1e-3)


@pytest.mark.parametrize("steps", [1, 2, 5, 25])
def test_diffusers_style_loop_equals_k_diffusion(steps):
    sched = _scheduler()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps))
    ref, ref_ts = _reference_sample(_fake_eps, noise, steps)

    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma  # diffusers' prepare_latents
    for t in sched.timesteps:  # diffusers' denoising loop
        eps = _fake_eps(sched.scale_model_input(x, t), t.expand(x.shape[0]))
        x = sched.step(eps, t, x, return_dict=False)[0]
    assert sched.timesteps.tolist() == ref_ts
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(x, ref, atol=1e-6, rtol=1e-6)


def test_half_precision_latents_follow_the_references_dtypes():
    """The reference keeps fp16 latents in fp16 (sigma * s_in takes x's dtype, the
    sigma-derived scalars stay float32 0-dim tensors); the scheduler does the same."""
    steps = 8
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)).half()
    ref, ref_ts = _reference_sample(_fake_eps, noise, steps)
    sched = _scheduler(torch.float16)  # the pipeline's dtype: sigma is rounded to it for the t map
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = _fake_eps(sched.scale_model_input(x, t), t.expand(x.shape[0]))
        x = sched.step(eps, t, x, return_dict=False)[0]
    assert x.dtype == ref.dtype == torch.float16 and sched.timesteps.tolist() == ref_ts
    torch.testing.assert_close(x, ref, atol=0, rtol=0)
    # without the dtype, the float32 map differs here by one step (890 vs fp16's 889)
    plain = _scheduler()
    plain.set_timesteps(steps)
    assert plain.timesteps.tolist() != ref_ts


def test_first_order_first_step_and_denoised_last_step():
    sched = _scheduler()
    sched.set_timesteps(3)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    eps = torch.randn_like(x)
    s0, s1 = sched.sigmas[0], sched.sigmas[1]
    out = sched.step(eps, sched.timesteps[0], x)
    # first step: DPM-Solver++ first order, x' = (s1/s0) x - expm1(-h) denoised, h = log(s0/s1)
    d0 = x - eps * s0
    torch.testing.assert_close(out.pred_original_sample, d0)
    torch.testing.assert_close(out.prev_sample, (s1 / s0) * x + (1 - s1 / s0) * d0, atol=1e-5, rtol=1e-5)
    x = out.prev_sample
    x = sched.step(eps, sched.timesteps[1], x).prev_sample
    last = sched.step(eps, sched.timesteps[2], x)
    assert torch.equal(last.prev_sample, x - eps * sched.sigmas[2])  # sigma_next == 0: the denoised


def test_img2img_starts_at_the_begin_index():
    """diffusers' img2img pipelines: set_begin_index, add_noise at that sigma, then
    the remaining steps (the first of them first order)."""
    sched = _scheduler()
    sched.set_timesteps(4)
    sched.set_begin_index(2)
    x0, noise = torch.ones(1, 4, 4, 4), torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    x = sched.add_noise(x0, noise, sched.timesteps[2:3])
    torch.testing.assert_close(x, x0 + noise * sched.sigmas[2])
    eps = torch.full_like(x, 0.5)
    x1 = sched.step(eps, sched.timesteps[2], x).prev_sample
    s2, s3 = sched.sigmas[2], sched.sigmas[3]
    torch.testing.assert_close(x1, (s3 / s2) * x + (1 - s3 / s2) * (x - eps * s2), atol=1e-5, rtol=1e-5)
    assert torch.equal(sched.step(eps, sched.timesteps[3], x1).prev_sample, x1 - eps * s3)


def test_reference_settings_refused_clearly():
    from pipelines.errors import BadInput
    from pipelines.kdiffusion import KDPMPP2MKarrasScheduler

    with pytest.raises(BadInput, match="beta_schedule"):
        KDPMPP2MKarrasScheduler(beta_schedule="squaredcos_cap_v2")
    with pytest.raises(BadInput, match="prediction_type"):
        KDPMPP2MKarrasScheduler(prediction_type="sample")


def test_registered_and_pulid_v11_default():
    from pipelines.identity import get_method_class
    from pipelines.kdiffusion import KDPMPP2MKarrasScheduler
    from pipelines.samplers import SAMPLER_TITLES, SAMPLERS

    assert "kdpmpp_2m_karras" in SAMPLERS and SAMPLER_TITLES["kdpmpp_2m_karras"] == "DPM++ 2M Karras (k-diffusion)"
    assert isinstance(_scheduler(), KDPMPP2MKarrasScheduler)
    assert get_method_class("pulid").recipe_defaults["sampler"] == "kdpmpp_2m_karras"
    assert get_method_class("pulid-v1").recipe_defaults["sampler"] == "dpmpp_2m_trailing"


def test_pulid_generates_with_the_k_diffusion_sampler(make_engine, photos_dir):
    """End to end on the tiny SDXL: PuLID v1.1 with its default sampler, through
    StableDiffusionXLPipeline's loop; the UNet sees the scheduler's integer timesteps."""
    from pipelines.requests import GenerateRequest

    engine = make_engine("kdiff-out")
    pipe = engine.pipeline("sdxl-base")
    seen = []
    req = dict(method="pulid", photos=[str(photos_dir / "astronaut.png")], prompt="p", steps=3, width=64,
               height=64, seed=4, cfg=3.0)
    engine.use_method("pulid", pipe)
    hook = pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(a[1] if len(a) > 1 else kw["timestep"]),
                                               with_kwargs=True)
    try:
        res = engine.generate(GenerateRequest(**req, sampler="kdpmpp_2m_karras"))
    finally:
        hook.remove()
    sched = _scheduler()
    sched.set_timesteps(3)
    assert [int(t) for t in seen] == sched.timesteps.tolist()
    assert res.images[0].recipe["sampler"] == "kdpmpp_2m_karras"
    img = np.asarray(res.images[0].image)
    assert np.isfinite(img).all() and img.std() > 0
    other = np.asarray(engine.generate(GenerateRequest(**req, sampler="dpmpp_2m_karras")).images[0].image)
    assert not np.array_equal(img, other)  # the user can still choose diffusers' DPM++ 2M Karras
