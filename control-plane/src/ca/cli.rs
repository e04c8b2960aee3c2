//! `weft ca init --out DIR` and `weft ca issue --ca DIR --id SPIFFE_ID --out DIR2`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_api::SpiffeId;

use super::{Authority, CA_CERT_FILE, CA_KEY_FILE, CaError};

const USAGE: &str = "\
Usage:
  weft ca init --out DIR [--trust-domain DOMAIN] [--force]
      write a new root CA: DIR/ca.pem and DIR/ca-key.pem (the key readable by its owner only)
  weft ca issue --ca DIR --id SPIFFE_ID --out DIR2 [--ttl DURATION] [--starts-in DURATION] [--force]
      issue a certificate by hand: DIR2/cert.pem (chain), DIR2/key.pem, DIR2/bundle.pem;
      the lifetime defaults to 24h; --starts-in makes it valid only from that long from now
      (to stage a certificate, or to see how peers treat one that is not valid yet)
";

pub fn run(args: &[String]) -> u8 {
    let result = match args.first().map(String::as_str) {
        Some("init") => init(&args[1..]),
        Some("issue") => issue(&args[1..]),
        Some("-h" | "--help") => {
            print!("{USAGE}");
            return 0;
        }
        _ => {
            eprint!("{USAGE}");
            return 2;
        }
    };
    match result {
        Ok(()) => 0,
        Err(Failure::Usage(msg)) => {
            eprintln!("weft ca: {msg}\n\n{USAGE}");
            2
        }
        Err(Failure::Ca(e)) => {
            eprintln!("weft ca: {e}");
            1
        }
    }
}

enum Failure {
    Usage(String),
    Ca(CaError),
}

impl From<CaError> for Failure {
    fn from(e: CaError) -> Self {
        Failure::Ca(e)
    }
}

/// Flags of the form `--name VALUE`, and `--force`.
struct Flags {
    values: Vec<(String, String)>,
    force: bool,
}

impl Flags {
    fn parse(args: &[String], known: &[&str]) -> Result<Flags, Failure> {
        let mut flags = Flags { values: Vec::new(), force: false };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "--force" {
                flags.force = true;
            } else if known.contains(&arg.as_str()) {
                let value = it.next().ok_or_else(|| Failure::Usage(format!("{arg} needs a value")))?;
                flags.values.push((arg.clone(), value.clone()));
            } else {
                return Err(Failure::Usage(format!("unknown argument {arg:?}")));
            }
        }
        Ok(flags)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, Failure> {
        self.get(name).ok_or_else(|| Failure::Usage(format!("{name} is required")))
    }
}

fn init(args: &[String]) -> Result<(), Failure> {
    let flags = Flags::parse(args, &["--out", "--trust-domain"])?;
    let out = PathBuf::from(flags.required("--out")?);
    let trust_domain = flags.get("--trust-domain").unwrap_or("cluster.local");
    // Validates the trust domain with the same rules as ids.
    SpiffeId::new(trust_domain, "x", "x").map_err(CaError::from)?;
    let files = [out.join(CA_CERT_FILE), out.join(CA_KEY_FILE)];
    refuse_overwrite(&files, flags.force)?;
    let (cert, key) = Authority::generate_root(trust_domain)?;
    create_dir(&out)?;
    super::write_file(&files[0], &cert, false)?;
    super::write_file(&files[1], &key, true)?;
    println!("wrote {} and {}", files[0].display(), files[1].display());
    Ok(())
}

fn issue(args: &[String]) -> Result<(), Failure> {
    let flags = Flags::parse(args, &["--ca", "--id", "--out", "--ttl", "--starts-in"])?;
    let ca_dir = PathBuf::from(flags.required("--ca")?);
    let id = SpiffeId::parse(flags.required("--id")?).map_err(CaError::from)?;
    let out = PathBuf::from(flags.required("--out")?);
    let ttl = match flags.get("--ttl") {
        Some(t) => weft_api::duration::parse_duration(t).map_err(|e| Failure::Usage(format!("--ttl: {e}")))?,
        None => Duration::from_secs(24 * 3600),
    };
    let files = [out.join("cert.pem"), out.join("key.pem"), out.join("bundle.pem")];
    refuse_overwrite(&files, flags.force)?;
    let authority = Authority::load(&ca_dir)?;
    let key = rcgen::KeyPair::generate().map_err(CaError::from)?;
    let issued = match flags.get("--starts-in") {
        Some(t) => {
            let wait =
                weft_api::duration::parse_duration(t).map_err(|e| Failure::Usage(format!("--starts-in: {e}")))?;
            let start = std::time::SystemTime::now() + wait;
            authority.sign_with_validity(&id, &key, start, (start + ttl).min(authority.not_after()))?
        }
        None => authority.sign(&id, &key, ttl)?,
    };
    create_dir(&out)?;
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
