//! Test support: start real weft binaries and real backend servers on loopback.
