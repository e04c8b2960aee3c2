//! `weft` binary entry point.

fn main() {
    println!("weft");
}
