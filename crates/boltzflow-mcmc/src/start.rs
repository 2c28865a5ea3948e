//! Start configurations from coordinate files (`mcmc.start`).
//!
//! A coordinate file is plain text: one particle per line, its `d` coordinates separated by
//! whitespace (or commas); blank lines and everything after `#` are ignored. A particle
//! system of shape `[n, d]` needs n lines of d numbers; a target of shape `[d]` (the 2D
//! potentials) one line of d numbers. An XYZ-style header is not accepted: write the
//! coordinates only.

use std::path::Path;

use boltzflow_targets::TargetSpec;

use crate::{McmcError, Result};

/// The configuration in `path` for `spec` (flat, row-major), checked against its shape: the
/// number of particles (lines) and of coordinates per particle, and that every value is
/// finite with a finite action.
pub fn read_coordinates(path: &Path, spec: &TargetSpec) -> Result<Vec<f64>> {
    let shown = path.display().to_string();
    let error = |problem: String, fix: &'static str| McmcError::Start {
        path: shown.clone(),
        problem,
        fix,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        error(
            format!("cannot be read ({e})"),
            "give the path of a coordinate file relative to the config file",
        )
    })?;
    let target = spec.build()?;
    let shape = target.shape();
    let (rows, columns) = match shape.as_slice() {
        [n, d] if spec.temperature().is_some() => (*n, *d),
        [d] if spec.temperature().is_some() => (1, *d),
        _ => {
            return Err(error(
                format!("theory `{}` is no particle system", spec.theory()),
                "remove mcmc.start: lattice fields start cold",
            ));
        }
    };
    let mut values = Vec::with_capacity(rows * columns);
    let mut lines = 0;
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        lines += 1;
        let row: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
            .collect();
        if row.len() != columns {
            return Err(error(
                format!(
                    "line {} has {} coordinates but the target's particles have {columns}",
                    number + 1,
                    row.len()
                ),
                "write one particle per line with its coordinates only",
            ));
        }
        for token in row {
            let v: f64 = token.parse().map_err(|_| {
                error(
                    format!("line {}: `{token}` is not a number", number + 1),
                    "write plain decimal coordinates",
                )
            })?;
            if !v.is_finite() {
                return Err(error(
                    format!("line {}: coordinate {v} is not finite", number + 1),
                    "write finite coordinates",
                ));
            }
            values.push(v);
        }
    }
    if lines != rows {
        return Err(error(
            format!("holds {lines} particles (lines) but the target has {rows} (shape {shape:?})"),
            "use a coordinate file of this system, or fix n_particles / n_solvent in the lattice file",
        ));
    }
    if !target.action(&values).is_finite() {
        return Err(error(
            "the configuration has an infinite or undefined action".into(),
            "start from a configuration without overlapping particles",
        ));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use boltzflow_targets::LatticeFile;

    fn spec(text: &str) -> TargetSpec {
        LatticeFile::parse(text).unwrap().target
    }

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("boltzflow-start-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_particles_with_comments_and_commas() {
        let dw4 = spec("theory = \"dw4\"");
        let path = write(
            "dw4.txt",
            "# four particles\n-2 -2\n2, -2\n\n-2 2 # third\n2 2\n",
        );
        let x = read_coordinates(&path, &dw4).unwrap();
        assert_eq!(x, vec![-2.0, -2.0, 2.0, -2.0, -2.0, 2.0, 2.0, 2.0]);
        let well = spec("theory = \"double_well\"");
        let path = write("well.txt", "1.7 0.0\n");
        assert_eq!(read_coordinates(&path, &well).unwrap(), vec![1.7, 0.0]);
    }

    #[test]
    fn mismatches_are_one_line_errors_naming_the_count() {
        let dw4 = spec("theory = \"dw4\"");
        for (text, needle) in [
            (
                "0 0\n1 1\n2 2\n",
                "holds 3 particles (lines) but the target has 4",
            ),
            ("0 0 0\n1 1\n2 2\n3 3\n", "line 1 has 3 coordinates"),
            ("0 0\n1 x\n2 2\n3 3\n", "`x` is not a number"),
        ] {
            let path = write("bad.txt", text);
            let err = read_coordinates(&path, &dw4).unwrap_err().to_string();
            assert!(err.contains(needle) && !err.contains('\n'), "{err}");
        }
        let err = read_coordinates(Path::new("/nonexistent/start.txt"), &dw4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be read"), "{err}");
        let phi4 = spec("theory = \"phi4\"\nshape = [4, 4]\nm2 = 1.0\nlam = 0.0");
        let path = write("phi4.txt", "0 0 0 0\n");
        let err = read_coordinates(&path, &phi4).unwrap_err().to_string();
        assert!(err.contains("no particle system"), "{err}");
    }
}
