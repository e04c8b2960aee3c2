//! An unmodified "app" for the network-namespace test, run inside a namespace with
//! `ip netns exec`: plain HTTP and TCP servers and clients that know nothing of Weft.
//!
//! - `http ADDR NAME`: answers every request with 200, body NAME, and `x-seen-client-id` set to
//!   the `weft-client-id` the request carried (`-` when none), then closes the connection.
//! - `echo ADDR`: writes back every byte it reads.
//! - `get ADDR PATH`: one plain HTTP/1.1 GET; prints the whole response.
//! - `tcp ADDR MSG`: sends MSG, half-closes, prints what came back.
//!
//! Clients give up after 10 s, so a test never hangs on them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    // Leaked: the servers' threads borrow the arguments for the life of the process.
    let args: &'static [String] = Vec::leak(std::env::args().skip(1).collect());
    let args: Vec<&'static str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["http", addr, name] => serve(addr, |s| http_answer(s, name)),
        ["echo", addr] => serve(addr, echo),
        ["get", addr, path] => get(addr, path, addr),
        ["get", addr, path, host] => get(addr, path, host),
        ["tcp", addr, msg] => tcp(addr, msg),
        _ => Err("usage: netns_app http ADDR NAME | echo ADDR | get ADDR PATH [HOST] | tcp ADDR MSG".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netns_app: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(addr: &str, handle: impl Fn(TcpStream) -> std::io::Result<()> + Send + Copy + 'static) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
            let _ = handle(stream);
        });
    }
    Ok(())
}

fn http_answer(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut client_id = "-".to_string();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "weft-client-id" => client_id = v.trim().to_string(),
                "content-length" => content_length = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-seen-client-id: {client_id}\r\nconnection: close\r\n\r\n{name}",
        name.len()
    )?;
    stream.flush()
}

fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let mut reader = stream.try_clone()?;
    std::io::copy(&mut reader, &mut stream)?;
    stream.shutdown(Shutdown::Write)
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let sock = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let stream = TcpStream::connect_timeout(&sock, CLIENT_TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(|e| e.to_string())?;
    Ok(stream)
}

fn get(addr: &str, path: &str, host: &str) -> Result<(), String> {
    let mut stream = connect(addr)?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    stream.read_to_string(&mut out).map_err(|e| format!("read from {addr}: {e}"))?;
    print!("{out}");
    Ok(())
}

fn tcp(addr: &str, msg: &str) -> Result<(), String> {
    let mut stream = connect(addr)?;
    stream.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
    stream.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut out = String::new();
    stream.read_to_string(&mut out).map_err(|e| format!("read from {addr}: {e}"))?;
    print!("{out}");
    Ok(())
}
