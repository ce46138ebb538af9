"""k-diffusion's DPM++ 2M with Karras sigmas as a diffusers scheduler.

PuLID v1.1 (ToTheBeginning/PuLID `pulid/pipeline_v1_1.py`, `pulid/utils.py`)
does not sample with a diffusers scheduler: it ships ComfyUI's port of
k-diffusion's `sample_dpmpp_2m` (crowsonkb/k-diffusion `k_diffusion/sampling.py`)
and a discrete-epsilon model wrapper. diffusers' `DPMSolverMultistepScheduler(
use_karras_sigmas=True)` has the same sigmas but another sigma -> timestep map
and initial noise scale, so it does not give the same image. This class computes
what the reference computes, step by step, inside diffusers' pipeline loop:

- training sigmas: betas from the config (for "scaled_linear",
  `linspace(sqrt(beta_start), sqrt(beta_end), N)**2` in float64), their
  cumulative product cast to float32, `sigma = sqrt((1 - a) / a)`;
- sampling sigmas: Karras et al. (2022) eq. 5 between the first and last
  training sigma, rho 7, in float32, then a 0 appended;
- timestep given to the UNet: the integer `argmin |log sigma - log sigma_train|`;
- model input: `x / sqrt(sigma^2 + 1)`; initial latents `noise * sigmas[0]`;
- denoised: `x - eps * sigma` (k-diffusion's CompVisDenoiser; v-prediction uses
  its CompVisVDenoiser, `x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)`);
- update: DPM-Solver++(2M) in log-sigma time `t = -log sigma`, first order on
  the first step (no previous denoised) and the last step returns the denoised.

`model_dtype` names the latents' dtype ("float16" for an fp16 pipeline) so the
timestep map rounds sigma as the reference does (`sigmas[i] * s_in` has the
latents' dtype). Arithmetic follows the reference's dtypes: sigma-derived scalars are float32
0-dim tensors and the latents keep their own dtype (fp16 latents stay fp16, as
in the reference, where `sigma * s_in` takes the latents' dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput

from .errors import BadInput


@dataclass
class KDiffusionSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def training_sigmas(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
                    trained_betas=None) -> torch.Tensor:
    """float32 sigmas of the discrete training schedule (index = timestep)."""
    if trained_betas is not None:
        betas = torch.as_tensor(trained_betas, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        raise BadInput(f"sampler 'kdpmpp_2m_karras' supports beta_schedule 'scaled_linear' or 'linear', "
                       f"not {beta_schedule!r}.")
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def karras_sigmas(sigma_min: torch.Tensor, sigma_max: torch.Tensor, n: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5, n sigmas from sigma_max down to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


# diffusers' own schedulers combine these two mixins, whose `config_name` annotations differ
class KDPMPP2MKarrasScheduler(SchedulerMixin, ConfigMixin):  # type: ignore[misc]
    """DPM++ 2M Karras as k-diffusion / ComfyUI / PuLID v1.1 run it (module docstring)."""

    # built from any base pipeline's scheduler config without warnings about its other keys
    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", trained_betas=None, prediction_type: str = "epsilon",
                 rho: float = 7.0, model_dtype: str = "float32"):
        if model_dtype not in ("float32", "float16", "bfloat16"):
            raise BadInput(f"sampler 'kdpmpp_2m_karras': model_dtype must be float32, float16 or bfloat16, "
                           f"not {model_dtype!r}.")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise BadInput(f"sampler 'kdpmpp_2m_karras' supports prediction_type 'epsilon' or 'v_prediction', "
                           f"not {prediction_type!r}.")
        self.train_sigmas = training_sigmas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.log_train_sigmas = self.train_sigmas.log()
        self.num_inference_steps: int | None = None
        self.sigmas = torch.cat([self.train_sigmas.flip(0), self.train_sigmas.new_zeros([1])])
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._old_denoised: torch.Tensor | None = None

    # ----------------------------------------------------------- schedule
    @property
    def init_noise_sigma(self) -> torch.Tensor:
        # the reference: latents = noise * sigmas[0].to(noise), sigma in the latents' dtype
        return self.sigmas[0].to(getattr(torch, self.config["model_dtype"]))

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The integer training timestep nearest to sigma in log space."""
        dists = sigma.log().to(self.log_train_sigmas.device, torch.float32) - self.log_train_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        if num_inference_steps < 1:
            raise BadInput(f"steps must be at least 1 (got {num_inference_steps}).")
        self.num_inference_steps = num_inference_steps
        sigmas = karras_sigmas(self.train_sigmas[0], self.train_sigmas[-1], num_inference_steps, self.config["rho"])
        # the reference maps `sigmas[i] * s_in`, which has the latents' dtype: fp16 latents round
        # sigma to fp16 first (which can move t by one, e.g. 890 -> 889)
        rounded = sigmas[:-1].to(getattr(torch, self.config["model_dtype"]))
        self.timesteps = self.sigma_to_t(rounded).to(device=device, dtype=torch.int64)
        self.sigmas = sigmas.to(device)
        self._step_index = None
        self._begin_index = None
        self._old_denoised = None

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        schedule_timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = (schedule_timesteps == timestep).nonzero()
        if len(indices) == 0:
            raise BadInput(f"timestep {int(timestep)} is not in this sampler's schedule.")
        # a repeated timestep: the second occurrence, so img2img starting there does not skip a sigma
        return indices[1 if len(indices) > 1 else 0].item()

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    # -------------------------------------------------------------- model
    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index].to(sample.device, sample.dtype)
        return sample / (sigma ** 2 + 1.0) ** 0.5

    def _denoised(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(sample.device, sample.dtype)  # the reference's `sigmas[i] * s_in`, in x's dtype
        if self.config["prediction_type"] == "epsilon":
            return sample - model_output * s
        # k-diffusion CompVisVDenoiser: c_skip = 1/(s^2+1), c_out = -s/sqrt(s^2+1)
        return model_output * (-s / (s ** 2 + 1.0) ** 0.5) + sample * (1.0 / (s ** 2 + 1.0))

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        if self.num_inference_steps is None:
            raise BadInput("the sampler's set_timesteps must run before step.")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        assert i is not None  # set by _init_step_index
        sigma, sigma_next = self.sigmas[i].to(sample.device), self.sigmas[i + 1].to(sample.device)
        denoised = self._denoised(model_output, sample, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            t, t_next = -sigma.log(), -sigma_next.log()
            h = t_next - t
            ratio = (-t_next).exp() / (-t).exp()
            if self._old_denoised is None:
                x = ratio * sample - (-h).expm1() * denoised
            else:
                h_last = t - (-self.sigmas[i - 1].to(sample.device).log())
                r = h_last / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * self._old_denoised
                x = ratio * sample - (-h).expm1() * denoised_d
        self._old_denoised = denoised
        self._step_index = i + 1
        if not return_dict:
            return (x, denoised)
        return KDiffusionSchedulerOutput(prev_sample=x, pred_original_sample=denoised)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """img2img start: x = x0 + noise * sigma at the start timestep (k-diffusion's convention)."""
        sigmas = self.sigmas.to(original_samples.device, original_samples.dtype)
        timesteps = timesteps.to(self.timesteps.device)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t) for t in timesteps.reshape(-1)]
        elif self._step_index is not None:
            idx = [self._step_index] * timesteps.numel()
        else:
            idx = [self._begin_index] * timesteps.numel()
        sigma = sigmas[idx].flatten()
        while sigma.ndim < original_samples.ndim:
            sigma = sigma.unsqueeze(-1)
        return original_samples + noise * sigma

    def __len__(self) -> int:
        return self.config["num_train_timesteps"]
