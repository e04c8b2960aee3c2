//! `weft ca init --out DIR` and `weft ca issue --ca DIR --id SPIFFE_ID --out DIR2`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_api::SpiffeId;

use super::{Authority, CA_CERT_FILE, CA_KEY_FILE, CaError};

/// Make a root CA, or issue a certificate by hand.
#[derive(clap::Args, Debug)]
pub struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CaCommand {
    /// Write a new root CA: DIR/ca.pem and DIR/ca-key.pem (the key readable by its owner only)
    Init {
        /// The folder to write
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The trust domain of the ids the CA signs
        #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
        trust_domain: String,
        /// Overwrite files that exist
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate by hand: DIR2/cert.pem (chain), DIR2/key.pem, DIR2/bundle.pem
    Issue {
        /// The CA's folder (see `weft ca init`)
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The certificate's SPIFFE id
        #[arg(long, value_name = "SPIFFE_ID")]
        id: String,
        /// The folder to write
        #[arg(long, value_name = "DIR2")]
        out: PathBuf,
        /// The certificate's lifetime
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = weft_proxy::cli::duration)]
        ttl: Duration,
        /// Make it valid only from that long from now (to stage a certificate, or to see how
        /// peers treat one that is not valid yet)
        #[arg(long, value_name = "DURATION", value_parser = weft_proxy::cli::duration)]
        starts_in: Option<Duration>,
        /// Overwrite files that exist
        #[arg(long)]
        force: bool,
    },
}

/// Runs `weft ca`; returns the exit status (1 when the CA refuses or a file cannot be written).
pub fn run(args: CaArgs) -> u8 {
    let result = match args.command {
        CaCommand::Init { out, trust_domain, force } => init(&out, &trust_domain, force),
        CaCommand::Issue { ca, id, out, ttl, starts_in, force } => issue(&ca, &id, &out, ttl, starts_in, force),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("weft ca: {e}");
            1
        }
    }
}

fn init(out: &Path, trust_domain: &str, force: bool) -> Result<(), CaError> {
    // Validates the trust domain with the same rules as ids.
    SpiffeId::new(trust_domain, "x", "x")?;
    let files = [out.join(CA_CERT_FILE), out.join(CA_KEY_FILE)];
    refuse_overwrite(&files, force)?;
    let (cert, key) = Authority::generate_root(trust_domain)?;
    create_dir(out)?;
    super::write_file(&files[0], &cert, false)?;
    super::write_file(&files[1], &key, true)?;
    println!("wrote {} and {}", files[0].display(), files[1].display());
    Ok(())
}

fn issue(
    ca_dir: &Path,
    id: &str,
    out: &Path,
    ttl: Duration,
    starts_in: Option<Duration>,
    force: bool,
) -> Result<(), CaError> {
    let id = SpiffeId::parse(id)?;
    let files = [out.join("cert.pem"), out.join("key.pem"), out.join("bundle.pem")];
    refuse_overwrite(&files, force)?;
    let authority = Authority::load(ca_dir)?;
    let key = rcgen::KeyPair::generate()?;
    let issued = match starts_in {
        Some(wait) => {
            let start = std::time::SystemTime::now() + wait;
            authority.sign_with_validity(&id, &key, start, (start + ttl).min(authority.not_after()))?
        }
        None => authority.sign(&id, &key, ttl)?,
    };
    create_dir(out)?;
    super::write_file(&files[0], &issued.chain_pem, false)?;
    super::write_file(&files[1], &key.serialize_pem(), true)?;
    super::write_file(&files[2], authority.bundle_pem(), false)?;
    println!("issued {id} valid for {}; wrote cert.pem, key.pem and bundle.pem in {}", format_ttl(ttl), out.display());
    Ok(())
}

fn format_ttl(ttl: Duration) -> String {
    weft_api::duration::format_duration(ttl)
}

fn refuse_overwrite(files: &[PathBuf], force: bool) -> Result<(), CaError> {
    let existing: Vec<PathBuf> = files.iter().filter(|f| f.exists()).cloned().collect();
    if existing.is_empty() || force { Ok(()) } else { Err(CaError::Exists { paths: existing }) }
}

fn create_dir(dir: &Path) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Write { path: dir.to_path_buf(), source })
}
