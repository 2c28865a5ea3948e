//! Which implementation runs a flow: the hand-written f32 CPU kernels of `boltzflow-flow`
//! (affine or spline couplings with periodic conv conditioners on 2D lattices: the fast path) or
//! `boltzflow-burn` on a burn backend (every coupling, conditioner, mask and objective; CPU
//! ndarray, or CUDA when built with `--features cuda`).
//!
//! `flow.engine = "auto"` (the default) picks the native kernels whenever they implement the
//! requested model and objective, and burn otherwise. Both store the same parameter layout
//! for the affine conv model, so their model files describe the same flow.

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use boltzflow_burn::{
    Activation, BurnModel, Conditioner, CpuBackend, FlowConfig, Mask, Prior, Transform,
};
use boltzflow_flow::flow::NativeCoupling;
use boltzflow_flow::{
    AdamConfig, AffineFlow, AffineFlowConfig, CircleMap, FlowModel, GaugeFlow, GaugeFlowConfig,
    Trainer,
};
use boltzflow_targets::TargetSpec;

use crate::config::{ConditionerKind, Coupling, Engine, FlowSection};

/// Where a burn flow runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// The CPU (native kernels or burn's ndarray backend).
    #[default]
    Cpu,
    /// The first CUDA GPU (burn-cuda; needs a build with `--features cuda`).
    Cuda,
}

/// A flow's architecture as stored in model files.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Architecture {
    /// The hand-written affine conv flow.
    Native(AffineFlowConfig),
    /// A burn flow.
    Burn(FlowConfig),
    /// The hand-written gauge-equivariant U(1) flow.
    Gauge(GaugeFlowConfig),
}

impl Architecture {
    /// The architecture a `[flow]` section asks for on a target of `shape`, with the engine
    /// resolved (`auto`: native when it can run the model and `forward_kl` is false).
    ///
    /// On a `gauge` target (2D U(1) links) `auto` and `native` give the gauge-equivariant
    /// flow, which needs a circle map (`ncp` or `circular_spline`); `burn` runs burn's
    /// circular-spline flow, which is not gauge-equivariant.
    pub fn resolve(
        section: &FlowSection,
        spec: &TargetSpec,
        shape: &[usize],
        forward_kl: bool,
    ) -> Result<Self> {
        let gauge = matches!(spec, TargetSpec::U1(_));
        let section = &section.for_target(spec)?;
        let circle = matches!(section.coupling, Coupling::Ncp | Coupling::CircularSpline);
        if gauge && !circle {
            bail!(
                "flow.coupling = \"{}\" does not map angles: U(1) flows are gauge-equivariant circle maps; set flow.coupling = \"ncp\" (the tutorial's) or \"circular_spline\"",
                coupling_name(section.coupling)
            );
        }
        if gauge && section.engine != Engine::Burn {
            return gauge_config(section, shape, forward_kl).map(Self::Gauge);
        }
        if matches!(section.coupling, Coupling::Ncp) {
            bail!(
                "flow.coupling = \"ncp\" is the circle map of gauge-equivariant U(1) flows (native engine): use it on a U(1) lattice with flow.engine = \"auto\""
            );
        }
        let burn = burn_config(section, shape);
        burn.validate().map_err(|e| anyhow!("[flow]: {e}"))?;
        let native_capable = (matches!(section.coupling, Coupling::Affine)
            || matches!(section.coupling, Coupling::Spline)
                && section.bins <= boltzflow_flow::spline::MAX_BINS)
            && matches!(section.conditioner(), ConditionerKind::Conv)
            && matches!(section.mask(), Mask::Checkerboard)
            && matches!(section.activation, Activation::LeakyRelu)
            && shape.len() == 2
            && section.device == Device::Cpu;
        match section.engine {
            Engine::Native if !native_capable => bail!(
                "flow.engine = \"native\" runs only affine or spline couplings with leaky_relu conv conditioners, checkerboard masks on 2D lattices on the CPU; set flow.engine = \"burn\" (or \"auto\")"
            ),
            Engine::Native if forward_kl => bail!(
                "flow.engine = \"native\" trains by reverse KL only; set flow.engine = \"burn\" (or \"auto\") for train.objective = \"forward\" or \"mix\""
            ),
            Engine::Native => Ok(Self::Native(native_config(section, shape))),
            Engine::Auto if native_capable && !forward_kl => {
                Ok(Self::Native(native_config(section, shape)))
            }
            Engine::Auto | Engine::Burn => Ok(Self::Burn(burn)),
        }
    }

    /// The same architecture on a configuration space of another shape (the lattice is the
    /// only thing that may differ between a model and the one it initialises).
    pub fn reshaped(&self, like: &Self) -> Self {
        match (self, like) {
            (Self::Native(c), Self::Native(l)) => Self::Native(AffineFlowConfig {
                shape: l.shape,
                ..c.clone()
            }),
            (Self::Gauge(c), Self::Gauge(l)) => Self::Gauge(GaugeFlowConfig {
                shape: l.shape,
                ..c.clone()
            }),
            (Self::Burn(c), Self::Burn(l)) => Self::Burn(FlowConfig {
                shape: l.shape.clone(),
                ..c.clone()
            }),
            _ => self.clone(),
        }
    }

    /// A human-readable one-liner: engine, coupling, layers.
    pub fn summary(&self) -> String {
        match self {
            Self::Native(c) => format!(
                "native {:?} flow, {} layers, conv hidden {:?}, kernel {}{}",
                c.coupling,
                c.layers,
                c.hidden,
                c.kernel,
                if c.z2 { ", Z2-equivariant" } else { "" }
            ),
            Self::Burn(c) => format!(
                "burn flow, {} layers, {:?}, {:?}{}",
                c.layers,
                c.transform,
                c.conditioner,
                if c.z2 { ", Z2-equivariant" } else { "" }
            ),
            Self::Gauge(c) => format!(
                "native gauge-equivariant U(1) flow, {} layers, {}, conv hidden {:?}, kernel {}",
                c.layers,
                match c.circle {
                    CircleMap::Ncp { mix } => format!("NCP mixtures of {mix}"),
                    CircleMap::Spline { bins } => format!("circular splines with {bins} bins"),
                },
                c.hidden,
                c.kernel
            ),
        }
    }

    /// A model with fresh parameters on `device`.
    pub fn build(&self, spec: &TargetSpec, device: Device) -> Result<Box<dyn FlowModel>> {
        match self {
            Self::Native(config) => {
                let flow = AffineFlow::<f32>::new(config).map_err(|e| anyhow!("[flow]: {e}"))?;
                Ok(Box::new(
                    Trainer::new(flow, AdamConfig::default()).map_err(|e| anyhow!("{e}"))?,
                ))
            }
            Self::Gauge(config) => Ok(Box::new(
                GaugeFlow::<f32>::new(config).map_err(|e| anyhow!("[flow]: {e}"))?,
            )),
            Self::Burn(config) => match device {
                Device::Cpu => Ok(Box::new(
                    BurnModel::<CpuBackend>::new(config, spec, &Default::default())
                        .map_err(|e| anyhow!("[flow]: {e}"))?,
                )),
                Device::Cuda => cuda_model(config, spec),
            },
        }
    }
}

/// The GPU of this process: device 0 when CUDA_VISIBLE_DEVICES names exactly one (the
/// launcher gave each rank its own, as `srun --gpus-per-task=1` does), otherwise the
/// node-local MPI rank (one process per GPU under `mpirun`; 0 without MPI).
#[cfg(feature = "cuda")]
fn cuda_index() -> usize {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    let listed = visible.split(',').filter(|d| !d.trim().is_empty()).count();
    if listed == 1 {
        0
    } else {
        boltzflow_dist::launcher_local_rank()
    }
}

#[cfg(feature = "cuda")]
fn cuda_model(config: &FlowConfig, spec: &TargetSpec) -> Result<Box<dyn FlowModel>> {
    let device = boltzflow_burn::CudaDevice {
        index: cuda_index(),
    };
    tracing::info!("flow on CUDA device {}", device.index);
    Ok(Box::new(
        BurnModel::<boltzflow_burn::CudaBackend>::new(config, spec, &device)
            .map_err(|e| anyhow!("[flow]: {e}"))?,
    ))
}

#[cfg(not(feature = "cuda"))]
fn cuda_model(_config: &FlowConfig, _spec: &TargetSpec) -> Result<Box<dyn FlowModel>> {
    bail!(
        "flow.device = \"cuda\" but this boltzflow was built without CUDA; rebuild with `cargo build --release --features cuda` or set flow.device = \"cpu\""
    )
}

/// The TOML name of a coupling.
fn coupling_name(coupling: Coupling) -> &'static str {
    match coupling {
        Coupling::Affine => "affine",
        Coupling::Additive => "additive",
        Coupling::Spline => "spline",
        Coupling::CircularSpline => "circular_spline",
        Coupling::Ncp => "ncp",
    }
}

/// The gauge-equivariant flow of a `[flow]` section on U(1) links `[2, L0, L1]`; settings it
/// cannot honour are refused rather than ignored.
fn gauge_config(
    section: &FlowSection,
    shape: &[usize],
    forward_kl: bool,
) -> Result<GaugeFlowConfig> {
    let refuse = |what: &str| -> Result<GaugeFlowConfig> {
        bail!(
            "{what} is not available for gauge-equivariant U(1) flows (native conv conditioners on plaquette stripes, reverse KL, CPU); remove it, or set flow.engine = \"burn\" for a flow that is not gauge-equivariant"
        )
    };
    if forward_kl {
        return refuse("train.objective = \"forward\" or \"mix\"");
    }
    if !matches!(section.conditioner(), ConditionerKind::Conv) {
        return refuse("flow.conditioner = \"mlp\"");
    }
    if !matches!(section.activation, Activation::LeakyRelu) {
        return refuse("a flow.activation other than \"leaky_relu\"");
    }
    if !matches!(section.mask(), Mask::Checkerboard) {
        return refuse("flow.mask");
    }
    if section.z2 {
        return refuse("flow.z2");
    }
    if section.device != Device::Cpu {
        return refuse("flow.device = \"cuda\"");
    }
    let circle = match section.coupling {
        Coupling::Ncp => CircleMap::Ncp { mix: section.mix },
        _ => CircleMap::Spline { bins: section.bins },
    };
    let config = GaugeFlowConfig {
        shape: [shape[1], shape[2]],
        layers: section.layers,
        hidden: section.hidden.clone(),
        kernel: section.kernel,
        circle,
        seed: section.seed,
    };
    Ok(config)
}

fn native_config(section: &FlowSection, shape: &[usize]) -> AffineFlowConfig {
    AffineFlowConfig {
        shape: [shape[0], shape[1]],
        layers: section.layers,
        hidden: section.hidden.clone(),
        kernel: section.kernel,
        seed: section.seed,
        coupling: match section.coupling {
            Coupling::Spline => NativeCoupling::Spline {
                bins: section.bins,
                bound: section.bound,
            },
            _ => NativeCoupling::Affine,
        },
        z2: section.z2,
    }
}

fn burn_config(section: &FlowSection, shape: &[usize]) -> FlowConfig {
    let transform = match section.coupling {
        Coupling::Additive => Transform::Additive,
        Coupling::Affine => Transform::Affine,
        Coupling::Spline => Transform::Spline {
            bins: section.bins,
            bound: section.bound,
        },
        Coupling::CircularSpline | Coupling::Ncp => {
            Transform::CircularSpline { bins: section.bins }
        }
    };
    let conditioner = match section.conditioner() {
        ConditionerKind::Conv => Conditioner::Conv {
            hidden: section.hidden.clone(),
            kernel: section.kernel,
            activation: section.activation,
        },
        ConditionerKind::Mlp => Conditioner::Mlp {
            hidden: section.hidden.clone(),
            activation: section.activation,
        },
    };
    FlowConfig {
        shape: shape.to_vec(),
        layers: section.layers,
        transform,
        conditioner,
        mask: section.mask(),
        z2: section.z2,
        prior: if matches!(section.coupling, Coupling::CircularSpline | Coupling::Ncp) {
            Prior::UniformCircle
        } else {
            Prior::Normal
        },
        centre_of_mass: section.centre_of_mass(),
        seed: section.seed,
    }
}
