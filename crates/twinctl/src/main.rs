//! `twinctl`: the operator's command line.
//!
//! `twinctl provision <vehicle-id>` makes the key pair of a vehicle's intra-twin link and
//! writes one key file per end (`<vehicle>.pe.key`, `<vehicle>.dr.key`), mode 0600. Key
//! bytes are never printed; only public keys' fingerprints are.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use twinlink_link::{KeyMaterial, Role, VehicleId};

#[derive(Debug, Parser)]
#[command(name = "twinctl", about = "Operate twinlink twins", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make the key pair of a vehicle's intra-twin link and write both ends' key files.
    Provision {
        /// The vehicle's id (ASCII letters, digits, '_', '-', '.'; 1 to 64 bytes).
        vehicle: String,
        /// Directory to write `<vehicle>.pe.key` and `<vehicle>.dr.key` into.
        #[arg(long, default_value = "keys")]
        out: PathBuf,
        /// Replace existing key files (the old keys stop working).
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twinctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Provision {
            vehicle,
            out,
            force,
        } => provision(&vehicle, &out, force),
    }
}

fn provision(vehicle: &str, out: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let vehicle = VehicleId::new(vehicle)?;
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("creating key directory {}: {e}", out.display()))?;
    let pe_path = out.join(KeyMaterial::file_name(&vehicle, Role::Pe));
    let dr_path = out.join(KeyMaterial::file_name(&vehicle, Role::Dr));
    if !force {
        for path in [&pe_path, &dr_path] {
            if path.exists() {
                anyhow::bail!(
                    "{} exists; pass --force to replace the twin's keys (the old ones stop working)",
                    path.display()
                );
            }
        }
    }
    let (pe, dr) = KeyMaterial::generate_pair(&vehicle)?;
    pe.save(&pe_path, force)?;
    dr.save(&dr_path, force)?;
    println!("provisioned vehicle {vehicle}");
    println!(
        "  PE key: {} (public {})",
        pe_path.display(),
        pe.public_key().fingerprint()
    );
    println!(
        "  DR key: {} (public {})",
        dr_path.display(),
        dr.public_key().fingerprint()
    );
    println!(
        "copy the PE key to the vehicle and the DR key to its twin's host; both are mode 0600"
    );
    Ok(())
}
