//! `weft-proxy` binary entry point.

fn main() {
    println!("weft-proxy");
}
