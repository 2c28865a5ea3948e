//! Reverse-KL training of the tutorial flow (Albergo et al. 2021, arXiv:2101.08176) on 2D
//! phi^4 at L = 8, m2 = -4, lam = 8: 16 affine coupling layers, conv nets [8, 8], batch 64,
//! Adam lr 1e-3, seeded. Prints metrics every 500 steps, then ESS/N and the independence
//! Metropolis acceptance estimate on 16,384 fresh samples, and the wall time.
//!
//! Run with `cargo run --release -p boltzflow-flow --example train_phi4 [-- STEPS]`
//! (default 5000 steps; one core: `RAYON_NUM_THREADS=1`).

use std::time::Instant;

use boltzflow_flow::{AdamConfig, AffineFlow, AffineFlowConfig, Trainer, mh_acceptance};
use boltzflow_targets::Target;
use boltzflow_targets::phi4::{Phi4, Phi4Spec};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|e| format!("STEPS `{arg}`: {e}"))?,
        None => 5000,
    };
    let target = Phi4::new(&Phi4Spec {
        shape: vec![8, 8],
        m2: Some(-4.0),
        lam: Some(8.0),
        kappa: None,
        lam_h: None,
    })?;
    let flow = AffineFlow::<f32>::new(&AffineFlowConfig::tutorial([8, 8], 2021))?;
    let mut trainer = Trainer::new(flow, AdamConfig::default())?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(8);
    let start = Instant::now();
    for step in 1..=steps {
        let m = trainer.reverse_kl_step(&target, 64, &mut rng)?;
        if step % 500 == 0 || step == 1 {
            println!(
                "step {step:5}  loss {:8.4} +- {:.4}  ESS/N {:.3}  acceptance {:.3}  |grad| {:.3}  {:.1} s",
                m.loss,
                m.loss_err,
                m.ess_fraction,
                m.acceptance,
                m.grad_norm,
                start.elapsed().as_secs_f64()
            );
        }
    }
    let train_time = start.elapsed().as_secs_f64();
    let n = 16_384;
    let sample_start = Instant::now();
    let (x, log_q) = trainer.flow.sample(n, &mut rng);
    let sample_time = sample_start.elapsed().as_secs_f64();
    let v = trainer.flow.volume();
    let log_w: Vec<f64> = x
        .chunks_exact(v)
        .zip(&log_q)
        .map(|(x, lq)| {
            let x: Vec<f64> = x.iter().map(|&p| p as f64).collect();
            -target.action(&x) - lq
        })
        .collect();
    println!(
        "{steps} steps in {train_time:.1} s ({:.1} steps/s); {n} samples in {sample_time:.2} s",
        steps as f64 / train_time
    );
    println!(
        "ESS/N {:.4}  MH acceptance {:.4}  (on {n} samples)",
        boltzflow_stats::ess_fraction(&log_w),
        mh_acceptance(&log_w)
    );
    Ok(())
}
