//! The conditioner of an affine coupling layer: a periodic conv net from the frozen sites to
//! the scale and shift (s, t) of the active sites (the tutorial's `make_conv_net` with
//! `use_final_tanh = True`, arXiv:2101.08176).
//!
//! ```text
//! h_0 = m                                  (masked field: frozen values, 0 on active sites)
//! h_i = LeakyReLU_0.01(conv_i(h_(i-1)))    i = 1..n_hidden
//! (s, t) = tanh(conv_out(h_n))              (computed on the active sites only)
//! ```
//!
//! # Shapes
//! Feature maps use the batch-innermost layout of [`crate::conv`]: `[channels, V, lanes]`.
//! Input `m`: `[1, V, lanes]`; hidden maps `[hidden[i], V, lanes]`; output `[2, V, lanes]`
//! with channel 0 = s and channel 1 = t (valid on the active sites only).
//!
//! Parameters of one net are a flat slice: for each conv in order, its weight
//! `[c_out, c_in, K, K]` followed by its bias `[c_out]`.

use std::ops::Range;

use crate::conv::{Conv2d, Stencil};
use crate::real::Real;

/// Negative slope of the LeakyReLU (PyTorch's default).
pub const LEAKY_SLOPE: f64 = 0.01;

/// A named range of the flat parameter vector, e.g. `layer3.conv1.weight`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamGroup {
    /// `layer{l}.conv{i}.weight` or `layer{l}.conv{i}.bias`.
    pub name: String,
    /// Indices into the flat parameter vector.
    pub range: Range<usize>,
}

/// Architecture of the conditioner net (shared by every coupling layer).
#[derive(Clone, Debug)]
pub struct ConvNet {
    convs: Vec<Conv2d>,
    /// tanh on the output (affine couplings: bounded s and t); raw output otherwise.
    final_tanh: bool,
    /// Offset of each conv's weight within the net's parameter slice (its bias follows it).
    offsets: Vec<usize>,
    param_len: usize,
}

/// Scratch for [`ConvNet::backward`]: two gradient maps of the widest layer.
#[derive(Clone, Debug, Default)]
pub struct NetScratch<T> {
    current: Vec<T>,
    next: Vec<T>,
}

impl<T: Real> NetScratch<T> {
    /// Scratch for `net` with `lanes` samples per site on `volume` sites.
    pub fn new(net: &ConvNet, volume: usize, lanes: usize) -> Self {
        let len = net.max_channels() * volume * lanes;
        Self {
            current: vec![T::ZERO; len],
            next: vec![T::ZERO; len],
        }
    }
}

impl ConvNet {
    /// 1 -> hidden[0] -> ... -> hidden[n-1] -> `outputs` channels, K^2 = `taps`, with a
    /// final tanh when `final_tanh`.
    pub fn new(hidden: &[usize], taps: usize, outputs: usize, final_tanh: bool) -> Self {
        Self::with_inputs(1, hidden, taps, outputs, final_tanh)
    }

    /// [`ConvNet::new`] with `inputs` input channels (e.g. 2 for the (cos, sin) of the
    /// frozen plaquettes of a gauge-equivariant layer).
    pub fn with_inputs(
        inputs: usize,
        hidden: &[usize],
        taps: usize,
        outputs: usize,
        final_tanh: bool,
    ) -> Self {
        let mut channels = vec![inputs];
        channels.extend_from_slice(hidden);
        channels.push(outputs);
        let convs: Vec<Conv2d> = channels
            .windows(2)
            .map(|c| Conv2d {
                c_in: c[0],
                c_out: c[1],
                taps,
            })
            .collect();
        let mut offsets = Vec::with_capacity(convs.len());
        let mut param_len = 0;
        for conv in &convs {
            offsets.push(param_len);
            param_len += conv.weight_len() + conv.c_out;
        }
        Self {
            convs,
            final_tanh,
            offsets,
            param_len,
        }
    }

    /// The convolutions in order.
    pub fn convs(&self) -> &[Conv2d] {
        &self.convs
    }

    /// Number of parameters of one net.
    pub fn param_len(&self) -> usize {
        self.param_len
    }

    /// The widest feature map (channels).
    pub fn max_channels(&self) -> usize {
        self.convs
            .iter()
            .map(|c| c.c_out.max(c.c_in))
            .max()
            .unwrap_or(1)
    }

    /// Range of conv i's weight within the net's parameter slice.
    pub fn weight_range(&self, i: usize) -> Range<usize> {
        self.offsets[i]..self.offsets[i] + self.convs[i].weight_len()
    }

    /// Range of conv i's bias within the net's parameter slice.
    pub fn bias_range(&self, i: usize) -> Range<usize> {
        let start = self.offsets[i] + self.convs[i].weight_len();
        start..start + self.convs[i].c_out
    }

    /// Named parameter groups of a net whose slice starts at `base`, prefixed `prefix.`.
    pub fn param_groups(&self, prefix: &str, base: usize) -> Vec<ParamGroup> {
        let mut groups = Vec::new();
        for i in 0..self.convs.len() {
            let (w, b) = (self.weight_range(i), self.bias_range(i));
            groups.push(ParamGroup {
                name: format!("{prefix}.conv{i}.weight"),
                range: base + w.start..base + w.end,
            });
            groups.push(ParamGroup {
                name: format!("{prefix}.conv{i}.bias"),
                range: base + b.start..base + b.end,
            });
        }
        groups
    }

    /// Fan-in c_in K^2 of every parameter of the net (for PyTorch's default init
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) of weights and biases).
    pub fn fan_in(&self) -> Vec<usize> {
        let mut fan = Vec::with_capacity(self.param_len);
        for conv in &self.convs {
            fan.extend(std::iter::repeat_n(
                conv.c_in * conv.taps,
                conv.weight_len() + conv.c_out,
            ));
        }
        fan
    }

    /// Parameters of `layers` nets with PyTorch's default conv initialisation, seeded: weights
    /// and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), except that each net's output conv
    /// starts near the identity transform: weights scaled by `near_identity`, biases set to
    /// `identity` (the transform's raw parameters of the identity map). Returns the flat
    /// vector and its named groups (`layer{l}.conv{i}.weight` / `.bias`).
    pub fn init_layers<T: Real>(
        &self,
        layers: usize,
        seed: u64,
        near_identity: f64,
        identity: &[f64],
    ) -> (Vec<T>, Vec<ParamGroup>) {
        use rand::{RngExt, SeedableRng};
        let fan_in = self.fan_in();
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut params = Vec::with_capacity(layers * self.param_len);
        let mut groups = Vec::new();
        let last = self.convs.len() - 1;
        for l in 0..layers {
            let base = params.len();
            groups.extend(self.param_groups(&format!("layer{l}"), base));
            for &fan in &fan_in {
                let bound = 1.0 / (fan as f64).sqrt();
                params.push(T::from_f64(bound * (2.0 * rng.random::<f64>() - 1.0)));
            }
            let w = self.weight_range(last);
            for p in &mut params[base + w.start..base + w.end] {
                *p = T::from_f64(near_identity * p.to_f64());
            }
            let b = self.bias_range(last);
            for (p, &id) in params[base + b.start..base + b.end]
                .iter_mut()
                .zip(identity)
            {
                *p = T::from_f64(id);
            }
        }
        (params, groups)
    }

    /// [`ConvNet::transpose_weights`] of every one of the nets stored back to back in
    /// `params` (for the backward pass), `[params.len()]`.
    pub fn transpose_layers<T: Real>(&self, params: &[T]) -> Vec<T> {
        let mut weights_t = vec![T::ZERO; params.len()];
        for (p, w) in params
            .chunks_exact(self.param_len)
            .zip(weights_t.chunks_exact_mut(self.param_len))
        {
            self.transpose_weights(p, w);
        }
        weights_t
    }

    /// Allocates the activation buffers of one forward pass: `[c_out_i, V, lanes]` per conv.
    pub fn activations<T: Real>(&self, volume: usize, lanes: usize) -> Vec<Vec<T>> {
        self.convs
            .iter()
            .map(|c| vec![T::ZERO; c.c_out * volume * lanes])
            .collect()
    }

    /// Writes the transposed, flipped kernels of every conv (see
    /// [`Conv2d::transpose_weight`]) into `weights_t` at the weights' own offsets.
    pub fn transpose_weights<T: Real>(&self, params: &[T], weights_t: &mut [T]) {
        for (i, conv) in self.convs.iter().enumerate() {
            let r = self.weight_range(i);
            conv.transpose_weight(&params[r.clone()], &mut weights_t[r]);
        }
    }

    /// Forward pass: `activations[i]` receives h_(i+1) (post-activation); the last one holds
    /// (s, t) on the `active` sites.
    ///
    /// Shapes: `params` `[param_len]`, `masked` `[inputs, V, lanes]`.
    pub fn forward<T: Real>(
        &self,
        stencil: &Stencil,
        params: &[T],
        masked: &[T],
        lanes: usize,
        active: &[u32],
        activations: &mut [Vec<T>],
    ) {
        let slope = T::from_f64(LEAKY_SLOPE);
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            let (done, rest) = activations.split_at_mut(i);
            let input: &[T] = if i == 0 { masked } else { &done[i - 1] };
            let out = &mut rest[0];
            let weight = &params[self.weight_range(i)];
            let bias = &params[self.bias_range(i)];
            if i < last {
                conv.forward(
                    stencil,
                    weight,
                    Some(bias),
                    input,
                    lanes,
                    stencil.all_sites(),
                    out,
                );
                for h in out.iter_mut() {
                    if *h < T::ZERO {
                        *h = *h * slope;
                    }
                }
            } else {
                conv.forward(stencil, weight, Some(bias), input, lanes, active, out);
                if !self.final_tanh {
                    continue;
                }
                for plane in out.chunks_exact_mut(stencil.volume() * lanes) {
                    for &site in active {
                        let site = site as usize;
                        for o in &mut plane[site * lanes..(site + 1) * lanes] {
                            *o = o.tanh();
                        }
                    }
                }
            }
        }
    }

    /// Backward pass. On entry `grad_out` (`[outputs, V, lanes]`) holds dL/d(output) on the
    /// active sites and zero elsewhere; it is used as scratch. Accumulates dL/d params into
    /// `grad_params` and *adds* dL/dm on the `frozen` sites into `grad_masked` (`[inputs, V,
    /// lanes]`). `weights_t` comes from [`ConvNet::transpose_weights`].
    ///
    /// The LeakyReLU and tanh derivatives are taken from the saved outputs:
    /// LeakyReLU'(a) = 1 where h > 0, else 0.01; tanh'(a) = 1 - o^2.
    pub fn backward<T: Real>(
        &self,
        stencil: &Stencil,
        weights_t: &[T],
        masked: &[T],
        activations: &[Vec<T>],
        grad_out: &mut [T],
        lanes: usize,
        active: &[u32],
        frozen: &[u32],
        grad_params: &mut [T],
        grad_masked: &mut [T],
        scratch: &mut NetScratch<T>,
    ) {
        let v = stencil.volume();
        let plane = v * lanes;
        let slope = T::from_f64(LEAKY_SLOPE);
        let last = self.convs.len() - 1;
        // tanh' on the active sites (grad_out vanishes elsewhere).
        let tanh_outputs = if self.final_tanh {
            self.convs[last].c_out
        } else {
            0
        };
        for (g, o) in grad_out
            .chunks_exact_mut(plane)
            .take(tanh_outputs)
            .zip(activations[last].chunks_exact(plane))
        {
            for &site in active {
                let r = site as usize * lanes..(site as usize + 1) * lanes;
                for (g, &o) in g[r.clone()].iter_mut().zip(&o[r]) {
                    *g = *g * (T::ONE - o * o);
                }
            }
        }
        let NetScratch { current, next } = scratch;
        for i in (0..self.convs.len()).rev() {
            let conv = self.convs[i];
            let grad_pre: &[T] = if i == last {
                grad_out
            } else {
                &current[..conv.c_out * plane]
            };
            let input: &[T] = if i == 0 { masked } else { &activations[i - 1] };
            let sites = if i == last {
                active
            } else {
                stencil.all_sites()
            };
            let (gw, gb) = grad_params
                [self.offsets[i]..self.offsets[i] + conv.weight_len() + conv.c_out]
                .split_at_mut(conv.weight_len());
            conv.backward_params(stencil, input, grad_pre, lanes, sites, gw, gb);
            let weight_t = &weights_t[self.weight_range(i)];
            if i == 0 {
                let g_in = &mut next[..conv.c_in * plane];
                conv.backward_input(stencil, weight_t, grad_pre, lanes, frozen, g_in);
                for (gm, g_in) in grad_masked
                    .chunks_exact_mut(plane)
                    .zip(g_in.chunks_exact(plane))
                {
                    for &site in frozen {
                        let r = site as usize * lanes..(site as usize + 1) * lanes;
                        for (gm, &g) in gm[r.clone()].iter_mut().zip(&g_in[r]) {
                            *gm += g;
                        }
                    }
                }
            } else {
                let g_in = &mut next[..conv.c_in * plane];
                conv.backward_input(
                    stencil,
                    weight_t,
                    grad_pre,
                    lanes,
                    stencil.all_sites(),
                    g_in,
                );
                // LeakyReLU' from the saved output h_i = activations[i - 1].
                for (g, &h) in g_in.iter_mut().zip(&activations[i - 1]) {
                    if h <= T::ZERO {
                        *g = *g * slope;
                    }
                }
                std::mem::swap(current, next);
            }
        }
    }
}
