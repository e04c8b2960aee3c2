//! The command lines of `weft` and `weft-proxy`: `weft proxy` and `weft-proxy` are one
//! definition (the same flags in any order, the same help, the same refusals), `WEFT_*`
//! variables set the flags a container sets (a flag on the command line wins), usage errors
//! exit 2 naming what was wrong, and `weft completion` writes scripts that know the commands.

use std::process::{Command, Stdio};
use std::time::Duration;

use weft_integration::client::must;
use weft_integration::{Backend, ControlPlane, Launch, Proxy, ProxyConfig, Req, bin, service};

/// Runs a binary to its end: (exit code, stdout, stderr).
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin(program))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8 output");
    (out.status.code().expect("an exit code, not a signal"), text(out.stdout), text(out.stderr))
}

/// `weft-proxy ARGS…` and `weft proxy ARGS…`, with the program's name made the same in both.
fn both_ways(args: &[&str], env: &[(&str, &str)]) -> [(i32, String, String); 2] {
    let sub: Vec<&str> = std::iter::once("proxy").chain(args.iter().copied()).collect();
    let same_name = |(code, out, err): (i32, String, String)| {
        (code, out.replace("weft proxy", "weft-proxy"), err.replace("weft proxy", "weft-proxy"))
    };
    [same_name(run("weft-proxy", args, env)), same_name(run("weft", &sub, env))]
}

#[test]
fn weft_proxy_and_weft_proxy_subcommand_print_the_same_help() {
    for args in [&["--help"][..], &["-h"], &["init", "--help"], &["await", "--help"], &["help", "init"]] {
        let [binary, subcommand] = both_ways(args, &[]);
        assert_eq!(binary, subcommand, "help for {args:?}");
        let (code, help, _) = binary;
        assert_eq!(code, 0, "{args:?}");
        assert!(help.contains("Usage: weft-proxy"), "{args:?}: {help}");
    }
    let (_, help, _) = run("weft-proxy", &["--help"], &[]);
    for flag in ["--config <FILE>", "--workers <N>", "[env: WEFT_PROXY_CONFIG=]", "[env: WEFT_PROXY_WORKERS=]"] {
        assert!(help.contains(flag), "{flag} in\n{help}");
    }
}

#[test]
fn both_ways_refuse_a_bad_command_line_alike_with_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--config", "p.yaml", "--workers", "0"], "invalid value '0' for '--workers <N>': expected a count above 0"),
        (&["--workers", "2"], "the following required arguments were not provided:\n  --config <FILE>"),
        (&["--config", "p.yaml", "--bogus"], "unexpected argument '--bogus' found"),
        (&["--config"], "a value is required for '--config <FILE>'"),
        (&["init", "--proxy-uid", "1", "--mode", "fast"], "invalid value 'fast' for '--mode <MODE>'"),
        (&["init", "--inbound-port", "70000", "--proxy-uid", "1"], "invalid value '70000' for '--inbound-port <PORT>'"),
        (&["init", "--dry-run"], "--proxy-uid <UID>"),
        (&["await", "--timeout", "soon"], "invalid value 'soon' for '--timeout <DURATION>'"),
        (&["await", "--admin", "localhost"], "expected an IP:PORT address like 127.0.0.1:4191"),
    ];
    for (args, message) in cases {
        let [binary, subcommand] = both_ways(args, &[]);
        assert_eq!(binary, subcommand, "{args:?}");
        let (code, out, err) = binary;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.starts_with("error: ") && err.contains(message), "{message:?} for {args:?} in\n{err}");
        assert!(err.ends_with("For more information, try '--help'.\n"), "{args:?}: where to look next\n{err}");
    }
    // Nothing at all is a usage error too, answered with the help.
    let [binary, subcommand] = both_ways(&[], &[]);
    assert_eq!(binary, subcommand);
    assert_eq!(binary.0, 2);
    assert!(binary.2.contains("--config <FILE>"), "{}", binary.2);
}

#[test]
fn every_weft_subcommand_refuses_an_unknown_flag_with_exit_2() {
    for command in ["ca init", "ca issue", "check", "completion", "crds", "demo", "inject", "serve", "status", "stat"] {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--bogus");
        let (code, out, err) = run("weft", &args, &[]);
        assert_eq!(code, 2, "weft {command} --bogus: {err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("unexpected argument '--bogus' found"), "weft {command}: {err}");
        assert!(err.contains(&format!("Usage: weft {command}")), "weft {command}: {err}");
    }
    let (code, _, err) = run("weft", &["srve"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("unrecognized subcommand 'srve'"), "{err}");
    let (code, _, err) = run("weft", &["status", "-o", "yaml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("[possible values: table, json]"), "{err}");
    let (code, _, err) = run("weft", &[], &[]);
    assert_eq!(code, 2, "no command: the help, as a usage error");
    assert!(err.contains("Usage: weft <COMMAND>") && err.contains("serve"), "{err}");
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    let (code, help, _) = run("weft", &["--help"], &[]);
    assert_eq!(code, 0);
    for command in ["ca", "check", "completion", "crds", "demo", "inject", "proxy", "serve", "status", "stat"] {
        assert!(help.contains(&format!("\n  {command} ")), "{command} listed in\n{help}");
    }
    let version = format!("{}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(run("weft", &["--version"], &[]), (0, format!("weft {version}"), String::new()));
    assert_eq!(run("weft-proxy", &["--version"], &[]), (0, format!("weft-proxy {version}"), String::new()));
    let (code, help, _) = run("weft", &["serve", "--help"], &[]);
    assert_eq!(code, 0);
    for env in ["WEFT_SERVE_POLICY", "WEFT_SERVE_LISTEN", "WEFT_SERVE_ADMIN", "WEFT_SERVE_CA", "WEFT_SERVE_KUBERNETES"]
    {
        assert!(help.contains(&format!("[env: {env}=]")), "{env} in\n{help}");
    }
}

#[test]
fn an_environment_variable_is_checked_like_its_flag_and_the_flag_wins() {
    let [binary, subcommand] = both_ways(&["--config", "/nonexistent/proxy.yaml"], &[("WEFT_PROXY_WORKERS", "0")]);
    assert_eq!(binary, subcommand);
    assert_eq!(binary.0, 2, "{}", binary.2);
    assert!(binary.2.contains("invalid value '0' for '--workers <N>'"), "{}", binary.2);
    // With the flag given, the variable is not read: the config's problem is what stops it.
    let args = ["--config", "/nonexistent/proxy.yaml", "--workers", "1"];
    let (code, _, err) = run("weft-proxy", &args, &[("WEFT_PROXY_WORKERS", "0")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/proxy.yaml is not a valid config"), "{err}");
    // The config file from the environment alone.
    let (code, _, err) = run("weft-proxy", &[], &[("WEFT_PROXY_CONFIG", "/nonexistent/proxy.yaml")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/proxy.yaml is not a valid config"), "{err}");
    let (code, _, err) = run("weft", &["serve"], &[("WEFT_SERVE_ADMIN", "localhost")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'localhost' for '--admin <ADDR>'"), "{err}");
    let (code, _, err) = run("weft", &["serve"], &[("WEFT_SERVE_CA", "/ca")]);
    assert_eq!(code, 2, "--ca from the environment still needs its tokens: {err}");
    assert!(err.contains("--join-token-file <FILE>"), "{err}");
    let (code, _, err) = run("weft", &["serve"], &[("WEFT_SERVE_KUBERNETES", "yes")]);
    assert_eq!(code, 2, "a switch's variable is `true` or `false`: {err}");
    assert!(err.contains("[possible values: true, false]"), "{err}");
}

/// Starts the proxy `launch` says with `args` and `env`, forwarding `api` to `backend`; checks
/// one request goes through and returns the worker count it logged at start.
async fn serve_one_request(launch: Launch, args: &[&str], env: &[(&str, &str)], backend: &Backend) -> String {
    let proxy = Proxy::start(ProxyConfig {
        policy: service("api", "http", &[backend.addr()]),
        launch,
        args: args.iter().map(|a| a.to_string()).collect(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    })
    .await;
    let resp = must(proxy.outbound(), &Req::get("/hello").host("api")).await;
    assert_eq!(resp.status, 200, "{launch:?}: {}", proxy.log_tail(20));
    let logs = proxy.logs();
    let workers = logs.split_whitespace().find_map(|w| w.strip_prefix("workers=")).map(String::from);
    workers.unwrap_or_else(|| panic!("{launch:?}: a start line with workers=N in\n{logs}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_of_starting_the_proxy_runs_it_with_the_flags_given() {
    let api = Backend::start("api").await;
    // `--workers` before `--config`: the order `weft proxy` used to refuse.
    assert_eq!(serve_one_request(Launch::Binary, &["--workers", "2"], &[], &api).await, "2");
    assert_eq!(serve_one_request(Launch::Subcommand, &["--workers", "2"], &[], &api).await, "2");
    let env = [("WEFT_PROXY_WORKERS", "3")];
    assert_eq!(serve_one_request(Launch::Environment, &[], &env, &api).await, "3");
    assert_eq!(serve_one_request(Launch::Subcommand, &["--workers", "1"], &env, &api).await, "1", "the flag wins");
    assert_eq!(api.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_serve_takes_its_folder_and_listeners_from_the_environment() {
    let policy = service("payments", "http", &["127.0.0.1:9".parse().unwrap()]);
    let cp = ControlPlane::start_from_env(&policy).await;
    // Ready on the admin address from WEFT_SERVE_ADMIN; the policy from WEFT_SERVE_POLICY.
    let status = cp.status().await;
    assert_eq!(status["policyValid"], true, "{status}");
    let services = status["services"].as_array().expect("services").iter();
    assert!(services.clone().any(|s| s["service"].as_str().is_some_and(|n| n.starts_with("payments"))), "{status}");
    // Discovery on the address from WEFT_SERVE_LISTEN.
    let connect = tokio::net::TcpStream::connect(cp.listen());
    tokio::time::timeout(Duration::from_secs(5), connect).await.expect("connect in time").expect("discovery listens");
}

#[test]
fn each_completion_script_names_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, err) = run("weft", &["completion", shell], &[]);
        assert_eq!(code, 0, "{shell}: {err}");
        for word in ["serve", "check", "inject", "proxy", "status", "stat", "completion", "policy", "config", "workers"]
        {
            assert!(script.contains(word), "{shell} script names {word}");
        }
    }
    let (code, _, err) = run("weft", &["completion", "tcsh"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("[possible values: bash, zsh, fish]"), "{err}");
}

#[test]
fn bash_accepts_the_bash_completion_script() {
    if Command::new("bash").arg("--version").output().is_err() {
        eprintln!("skipped: no bash");
        return;
    }
    let (_, script, _) = run("weft", &["completion", "bash"], &[]);
    let dir = weft_integration::TempDir::new("completion");
    let file = dir.path().join("weft.bash");
    std::fs::write(&file, &script).unwrap();
    let out = Command::new("bash").arg("-n").arg(&file).output().expect("run bash -n");
    assert!(out.status.success(), "bash -n: {}", String::from_utf8_lossy(&out.stderr));
    // Sourced, it registers a completion for `weft`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p weft", file.display()))
        .output()
        .expect("run bash");
    assert!(String::from_utf8_lossy(&out.stdout).contains("weft"), "{}", String::from_utf8_lossy(&out.stderr));
}
