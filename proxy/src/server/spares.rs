//! The buffers of HTTP/1.1 client connections that wait between requests. A connection holds
//! its read buffer, write buffer and recycled header map only while bytes are arriving or an
//! answer is going out; while it waits for its next request they go to this worker thread's
//! spares, and the next connection that has bytes to read takes them back. An idle
//! connection then costs its task and socket, not 8 KiB of read buffer, and a busy one pays
//! a push and a pop per request instead of an allocation.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderMap;

use crate::http::h1::READ_SIZE;

/// The write buffer's initial size: a usual head and a small body. (Growing it step by step
/// from empty cost about 2k instructions per connection.)
pub(super) const OUT_SIZE: usize = 512;
/// A write buffer grown beyond this (a large head or chunked body) is not kept.
pub(super) const MAX_KEPT_OUT: usize = 32 * 1024;
/// A read buffer grown beyond this (a long head that went to hyper) is not kept.
const MAX_KEPT_READ: usize = 2 * READ_SIZE;
/// A header map with room for more fields than this is not kept.
const MAX_KEPT_FIELDS: usize = 64;
/// Sets kept per worker thread: as many as its connections reading at once, up to this.
const MAX_SPARES: usize = 16;

/// One connection's buffers.
#[derive(Default)]
pub(super) struct Buffers {
    /// Bytes read from the client and not yet taken (a pipelined request stays here).
    pub read: BytesMut,
    /// The response head being written.
    pub out: Vec<u8>,
    /// The last response's header map, cleared, for the next request's head.
    pub headers: HeaderMap,
}

thread_local! {
    static SPARES: RefCell<Vec<Buffers>> = const { RefCell::new(Vec::new()) };
}

impl Buffers {
    /// Makes sure there are buffers to read into: a spare set when this connection gave its
    /// own away, new ones when the thread has none.
    pub(super) fn ensure(&mut self) {
        if self.read.capacity() > 0 {
            return;
        }
        *self = SPARES.with(|s| s.borrow_mut().pop()).unwrap_or_else(|| Buffers {
            read: BytesMut::with_capacity(READ_SIZE),
            out: Vec::with_capacity(OUT_SIZE),
            headers: HeaderMap::new(),
        });
    }

    /// Gives the buffers to the thread's spares while the connection waits with nothing
    /// read: only when nothing else shares the read buffer's memory (a request body taken
    /// from it may still be on its way upstream) and none has grown past what is kept.
    pub(super) fn release(&mut self) {
        if !self.read.is_empty() || self.read.capacity() == 0 {
            return;
        }
        let keep = self.read.capacity() <= MAX_KEPT_READ
            && self.read.try_reclaim(READ_SIZE)
            && self.out.capacity() <= MAX_KEPT_OUT
            && self.headers.capacity() <= MAX_KEPT_FIELDS;
        let mine = std::mem::take(self);
        if keep {
            SPARES.with(|s| {
                let mut spares = s.borrow_mut();
                if spares.len() < MAX_SPARES {
                    spares.push(mine);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spares() -> usize {
        SPARES.with(|s| s.borrow().len())
    }

    #[test]
    fn a_waiting_connection_holds_no_buffer_and_the_next_reader_reuses_it() {
        let mut a = Buffers::default();
        a.ensure();
        let first = a.read.as_ptr();
        assert!(a.read.capacity() >= READ_SIZE && a.out.capacity() >= OUT_SIZE);
        a.release();
        assert_eq!((a.read.capacity(), a.out.capacity()), (0, 0), "released buffers are not held");
        assert_eq!(spares(), 1);
        let mut b = Buffers::default();
        b.ensure();
        assert_eq!(b.read.as_ptr(), first, "the spare read buffer is reused, not a new one");
        assert_eq!(spares(), 0);
    }

    #[test]
    fn a_buffer_still_shared_or_holding_bytes_is_not_a_spare() {
        let mut a = Buffers::default();
        a.ensure();
        a.read.extend_from_slice(b"GET / HTTP/1.1\r\n");
        a.release();
        assert!(!a.read.is_empty(), "bytes not yet taken stay with their connection");
        let body = a.read.split().freeze();
        a.release();
        assert_eq!(spares(), 0, "memory a request body still uses is not handed out");
        assert_eq!(a.read.capacity(), 0);
        assert_eq!(&body[..], b"GET / HTTP/1.1\r\n", "the body keeps its bytes");
    }

    #[test]
    fn grown_buffers_are_let_go_and_the_spares_are_bounded() {
        let mut a = Buffers::default();
        a.ensure();
        a.out.reserve(MAX_KEPT_OUT * 2);
        a.release();
        assert_eq!(spares(), 0);
        let mut many: Vec<Buffers> = (0..MAX_SPARES + 4).map(|_| Buffers::default()).collect();
        many.iter_mut().for_each(Buffers::ensure);
        many.iter_mut().for_each(Buffers::release);
        assert_eq!(spares(), MAX_SPARES);
        SPARES.with(|s| s.borrow_mut().clear());
    }
}
