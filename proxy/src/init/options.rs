//! `weft-proxy init`'s flags, parsed and checked into [`Options`] (every problem at once).

use std::net::IpAddr;

/// Which iptables backend programs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Legacy when the namespace already holds legacy rules, else nft.
    Auto,
    Nft,
    Legacy,
}

/// A port or an inclusive range of ports, as `--skip-*-ports` take them (`8080` or `9000-9010`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// A destination subnet not to redirect, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// What to program (or remove).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Never redirected inbound, so kubelet probes and scrapes reach it.
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_subnets: Vec<Subnet>,
    pub ipv6: bool,
    pub mode: Mode,
    pub cleanup: bool,
    pub dry_run: bool,
}

impl Options {
    /// Options with the defaults of the contract and `uid` as the proxy's uid.
    pub fn new(proxy_uid: u32) -> Options {
        Options {
            proxy_uid,
            proxy_gid: None,
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_subnets: Vec::new(),
            ipv6: false,
            mode: Mode::Auto,
            cleanup: false,
            dry_run: false,
        }
    }

    /// Parses the flags after `init`. Errors list every problem, one per line.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options::new(0);
        let mut uid = None;
        let mut errors = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = || inline.clone().or_else(|| it.next().cloned());
            match flag {
                "--ipv6" => opts.ipv6 = true,
                "--cleanup" => opts.cleanup = true,
                "--dry-run" => opts.dry_run = true,
                "--proxy-uid"
                | "--proxy-gid"
                | "--inbound-port"
                | "--outbound-port"
                | "--admin-port"
                | "--skip-inbound-ports"
                | "--skip-outbound-ports"
                | "--skip-subnets"
                | "--mode" => {
                    let Some(v) = value() else {
                        errors.push(format!("{flag} needs a value"));
                        continue;
                    };
                    let parsed = match flag {
                        "--proxy-uid" => v.parse().map(|n| uid = Some(n)).map_err(|_| "a number"),
                        "--proxy-gid" => v.parse().map(|n| opts.proxy_gid = Some(n)).map_err(|_| "a number"),
                        "--inbound-port" => parse_port(&v).map(|p| opts.inbound_port = p),
                        "--outbound-port" => parse_port(&v).map(|p| opts.outbound_port = p),
                        "--admin-port" => parse_port(&v).map(|p| opts.admin_port = p),
                        "--skip-inbound-ports" => parse_ports(&v).map(|p| opts.skip_inbound_ports.extend(p)),
                        "--skip-outbound-ports" => parse_ports(&v).map(|p| opts.skip_outbound_ports.extend(p)),
                        "--skip-subnets" => parse_subnets(&v).map(|s| opts.skip_subnets.extend(s)),
                        _ => parse_mode(&v).map(|m| opts.mode = m),
                    };
                    if let Err(want) = parsed {
                        errors.push(format!("{flag} {v:?}: expected {want}"));
                    }
                }
                other => errors.push(format!("unknown argument {other:?}")),
            }
        }
        match uid {
            Some(uid) => opts.proxy_uid = uid,
            None if opts.cleanup => {}
            None => errors.push("--proxy-uid UID is required: the proxy's own traffic must not loop".to_string()),
        }
        let ports = [
            ("--inbound-port", opts.inbound_port),
            ("--outbound-port", opts.outbound_port),
            ("--admin-port", opts.admin_port),
        ];
        for (i, (flag, port)) in ports.iter().enumerate() {
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                errors.push(format!("{other} and {flag} are both {port}"));
            }
        }
        if errors.is_empty() { Ok(opts) } else { Err(errors.join("\n")) }
    }
}

fn parse_port(s: &str) -> Result<u16, &'static str> {
    s.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or("a port (1-65535)")
}

fn parse_ports(s: &str) -> Result<Vec<PortRange>, &'static str> {
    const WANT: &str = "ports or ranges, comma-separated (8080,9000-9010)";
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            let (first, last) = (parse_port(a).map_err(|_| WANT)?, parse_port(b).map_err(|_| WANT)?);
            if first > last { Err(WANT) } else { Ok(PortRange { first, last }) }
        })
        .collect()
}

fn parse_subnets(s: &str) -> Result<Vec<Subnet>, &'static str> {
    const WANT: &str = "CIDRs, comma-separated (10.0.0.0/8,fd00::/8)";
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let (ip, prefix) = c.split_once('/').unwrap_or((c, ""));
            let addr: IpAddr = ip.parse().map_err(|_| WANT)?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = if prefix.is_empty() { max } else { prefix.parse().map_err(|_| WANT)? };
            if prefix > max { Err(WANT) } else { Ok(Subnet { addr, prefix }) }
        })
        .collect()
}

fn parse_mode(s: &str) -> Result<Mode, &'static str> {
    match s {
        "auto" => Ok(Mode::Auto),
        "nft" => Ok(Mode::Nft),
        "legacy" => Ok(Mode::Legacy),
        _ => Err("auto, nft or legacy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn every_flag_of_the_contract_is_read() {
        let o = Options::parse(&args(
            "--proxy-uid 2102 --proxy-gid 2103 --inbound-port 5143 --outbound-port=5140 --admin-port 5191 \
             --skip-inbound-ports 22,9000-9010 --skip-outbound-ports 3306 \
             --skip-subnets 10.0.0.0/8,fd00::/8,192.168.1.1 --ipv6 --mode legacy --dry-run",
        ))
        .unwrap();
        assert_eq!((o.proxy_uid, o.proxy_gid, o.inbound_port, o.outbound_port), (2102, Some(2103), 5143, 5140));
        assert_eq!(o.admin_port, 5191);
        assert_eq!(o.skip_inbound_ports, [PortRange { first: 22, last: 22 }, PortRange { first: 9000, last: 9010 }]);
        assert_eq!(o.skip_outbound_ports, [PortRange { first: 3306, last: 3306 }]);
        assert_eq!(o.skip_subnets.len(), 3);
        assert_eq!(o.skip_subnets[2], Subnet { addr: "192.168.1.1".parse().unwrap(), prefix: 32 });
        assert!(o.ipv6 && o.dry_run && !o.cleanup);
        assert_eq!(o.mode, Mode::Legacy);
    }

    #[test]
    fn defaults_are_the_contracts_ports_and_auto() {
        let o = Options::parse(&args("--proxy-uid 7")).unwrap();
        assert_eq!(o, Options::new(7));
        assert_eq!((o.inbound_port, o.outbound_port, o.admin_port, o.mode), (4143, 4140, 4191, Mode::Auto));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err =
            Options::parse(&args("--skip-subnets 10.0.0.0/33 --mode fast --inbound-port 0 --bogus --admin-port 4140"))
                .unwrap_err();
        for want in [
            "--proxy-uid UID is required",
            "--skip-subnets",
            "--mode",
            "--inbound-port",
            "\"--bogus\"",
            "--outbound-port and --admin-port are both 4140",
        ] {
            assert!(err.contains(want), "{want} in {err}");
        }
    }

    #[test]
    fn cleanup_needs_no_uid() {
        assert!(Options::parse(&args("--cleanup")).unwrap().cleanup);
    }
}
