//! Run configs: a TOML recipe that names a lattice file and says how to sample.
//!
//! ```toml
//! lattice = "../lattices/phi4_L8.toml"   # relative to this file
//! [mcmc]
//! sampler = "hmc"
//! seed = 1
//! thermalization = 200
//! draws = 2000
//! ```
//!
//! `--set key=value` overrides any key by its dotted path (`--set mcmc.hmc.n_steps=20`); the
//! value is read as TOML (numbers, booleans, arrays) and otherwise as a string.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use boltzflow_mcmc::McmcConfig;
use boltzflow_targets::LatticeFile;
use boltzflow_targets::spec::one_line;

/// A run config after `--set` overrides, with its lattice file loaded.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Path of the lattice file, relative to the config file.
    pub lattice: PathBuf,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Markov-chain Monte Carlo baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcmc: Option<McmcConfig>,
}

/// A loaded config: the parsed recipe, its resolved TOML text and the lattice it names.
pub struct Loaded {
    /// The recipe.
    pub config: RunConfig,
    /// The recipe as resolved TOML (overrides applied), as stored in output files.
    pub toml: String,
    /// The lattice file.
    pub lattice: LatticeFile,
}

impl Loaded {
    /// Reads `path`, applies `--set` overrides and loads the lattice file it names.
    pub fn read(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read config file {}: {e}", path.display()))?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow!("{}: {}", path.display(), one_line(&e.to_string())))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let config: RunConfig =
            toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    anyhow!("{}: {}", path.display(), one_line(&e.to_string()))
                })?;
        let lattice_path = resolve(path, &config.lattice);
        let lattice = LatticeFile::read(&lattice_path)
            .with_context(|| format!("lattice file named by {}", path.display()))?;
        let toml = toml::to_string(&table).expect("a parsed table serialises");
        Ok(Self {
            config,
            toml,
            lattice,
        })
    }

    /// The `[mcmc]` section, or an error saying the config has none.
    pub fn mcmc(&self, path: &Path) -> Result<&McmcConfig> {
        self.config.mcmc.as_ref().ok_or_else(|| {
            anyhow!(
                "{} has no [mcmc] section; add one (see configs/hmc_phi4_L8.toml)",
                path.display()
            )
        })
    }
}

/// Resolves `relative` against the directory of `config`.
pub fn resolve(config: &Path, relative: &Path) -> PathBuf {
    if relative.is_absolute() {
        relative.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new(".")).join(relative)
    }
}

/// Applies one `key.path=value` override to a TOML table.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let Some((key, value)) = assignment.split_once('=') else {
        bail!("--set {assignment}: expected key=value, e.g. --set mcmc.draws=1000");
    };
    let key = key.trim();
    let value = value.trim();
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {assignment}: empty key segment; use dotted keys like mcmc.hmc.step_size");
    }
    let mut node = table;
    for part in &parts[..parts.len() - 1] {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| anyhow!("--set {assignment}: `{part}` is a value, not a section"))?;
    }
    node.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_values_and_create_sections() {
        let mut t: toml::Table = toml::from_str("[mcmc]\ndraws = 10\n").unwrap();
        apply_override(&mut t, "mcmc.draws=20").unwrap();
        apply_override(&mut t, "mcmc.hmc.step_size = 0.05").unwrap();
        apply_override(&mut t, "mcmc.sampler=hmc").unwrap();
        assert_eq!(t["mcmc"]["draws"].as_integer(), Some(20));
        assert_eq!(t["mcmc"]["hmc"]["step_size"].as_float(), Some(0.05));
        assert_eq!(t["mcmc"]["sampler"].as_str(), Some("hmc"));
        assert!(apply_override(&mut t, "mcmc.draws.x=1").is_err());
        assert!(apply_override(&mut t, "novalue").is_err());
    }
}
