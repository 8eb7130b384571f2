//! A read buffer between rustls and the socket of a protocol-4 connection.
//!
//! Why: rustls asks its transport for one record at a time (at most about 16 KiB, and 4 KiB
//! at first), so an upload through a bare `TcpStream` costs one `recvfrom` per record: 65,536
//! system calls per GiB, each with its wake-up. Reading whatever the socket holds, up to
//! [`CAPACITY`], and serving rustls from memory turns that into a few thousand calls for
//! the price of one copy out of a buffer that is still in cache.
//!
//! Memory: the buffer exists only while the peer is sending more than control frames. It
//! is taken on the first read and given back when it is empty, the socket has nothing
//! more, and the last fill was small (a control frame rather than a stream of data), so an
//! idle connection holds none of it.
//!
//! A streaming upload often drains the socket and pauses after a small fill, so it gives
//! its buffer back and takes one again many times a second. Given-back buffers therefore
//! wait in a small shared pool ([`SPARE`]) instead of going back to the allocator: a fresh
//! 256 KiB is zeroed (no `unsafe` for uninitialised reads) and, on this VM, faulted in
//! page by page, which `bench/profile.sh v4` showed as about a tenth of the server's CPU.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most read from the socket at once.
pub const CAPACITY: usize = 256 << 10;

/// A fill smaller than this is taken for control traffic: once consumed, and the socket
/// empty, the buffer is released.
const SMALL_FILL: usize = 16 << 10;

/// Buffers given back, for the next connection that streams: at most [`SPARE_MAX`], so
/// the pool holds 4 MiB at most whatever the number of connections.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The most buffers [`SPARE`] keeps.
const SPARE_MAX: usize = 16;

/// A buffer of [`CAPACITY`]: a spare one, or a fresh one.
fn take_buffer() -> Vec<u8> {
    let spare = SPARE.lock().unwrap_or_else(|e| e.into_inner()).pop();
    spare.unwrap_or_else(|| vec![0; CAPACITY])
}

/// Gives `buf` back: to the pool while it has room, else to the allocator.
fn give_back(buf: &mut Vec<u8>) {
    let buf = std::mem::take(buf);
    if buf.len() == CAPACITY {
        let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_MAX {
            spare.push(buf);
        }
    }
}

/// `S` with reads buffered up to [`CAPACITY`]; writes pass straight through.
pub struct ReadAhead<S> {
    inner: S,
    /// [`CAPACITY`] bytes while held (from [`take_buffer`]), empty when given back.
    buf: Vec<u8>,
    /// `buf[pos..filled]` is read from the socket and not yet handed on.
    pos: usize,
    filled: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead { inner, buf: Vec::new(), pos: 0, filled: 0 }
    }

    /// Bytes held: what an idle connection keeps (0 once released).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.len()
    }
}

impl<S> Drop for ReadAhead<S> {
    fn drop(&mut self) {
        give_back(&mut self.buf);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.filled {
            // A caller that asks for as much as the buffer holds gains nothing from it.
            if out.remaining() >= CAPACITY {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let last_fill = this.filled;
            this.pos = 0;
            this.filled = 0;
            if this.buf.is_empty() {
                this.buf = take_buffer();
            }
            let mut fill = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut fill) {
                Poll::Ready(Ok(())) => this.filled = fill.filled().len(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if last_fill < SMALL_FILL {
                        give_back(&mut this.buf);
                    }
                    return Poll::Pending;
                }
            }
            if this.filled == 0 {
                // The peer closed: nothing more to buffer.
                give_back(&mut this.buf);
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(this.filled - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let data = pattern(3 * CAPACITY + 12_345);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(70_001) {
                tx.write_all(piece).await.unwrap();
            }
        });
        let mut ahead = ReadAhead::new(rx);
        let mut got = Vec::new();
        let mut piece = [0u8; 4096];
        loop {
            let n = ahead.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes read differ from the bytes written");
        assert_eq!(ahead.held(), 0, "the buffer is given back at the end of the stream");
    }

    #[tokio::test]
    async fn one_read_takes_what_the_socket_has_up_to_the_capacity() {
        let (mut tx, rx) = tokio::io::duplex(4 * CAPACITY);
        tx.write_all(&pattern(2 * CAPACITY)).await.unwrap();
        // Counts the reads that reach the transport.
        let mut ahead = ReadAhead::new(Counted { inner: rx, reads: 0 });
        let mut piece = vec![0u8; 16 << 10];
        let mut total = 0;
        while total < CAPACITY {
            total += ahead.read(&mut piece).await.unwrap();
        }
        assert_eq!(total, CAPACITY);
        assert_eq!(ahead.inner.reads, 1, "16 reads of 16 KiB cost one read of the socket");
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer_after_a_small_message() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut ahead = ReadAhead::new(rx);
        tx.write_all(b"a control frame").await.unwrap();
        let mut piece = [0u8; 64];
        let n = ahead.read(&mut piece).await.unwrap();
        assert_eq!(&piece[..n], b"a control frame");
        // Nothing more has arrived: the next read waits, and gives the buffer back.
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), ahead.read(&mut piece));
        assert!(waited.await.is_err(), "a read with nothing sent must wait");
        assert_eq!(ahead.held(), 0);
    }

    #[tokio::test]
    async fn a_read_as_large_as_the_buffer_goes_straight_to_the_socket() {
        let (mut tx, rx) = tokio::io::duplex(2 * CAPACITY);
        tx.write_all(&pattern(CAPACITY)).await.unwrap();
        let mut ahead = ReadAhead::new(rx);
        let mut big = vec![0u8; CAPACITY];
        let n = ahead.read(&mut big).await.unwrap();
        assert!(n > 0);
        assert_eq!(ahead.held(), 0, "no buffer is made for a read that needs none");
    }

    #[test]
    fn given_back_buffers_are_taken_again_and_the_pool_stays_bounded() {
        let mut bufs: Vec<Vec<u8>> = (0..SPARE_MAX + 8).map(|_| take_buffer()).collect();
        for buf in bufs.iter_mut() {
            assert_eq!(buf.len(), CAPACITY);
            give_back(buf);
            assert!(buf.is_empty(), "a buffer given back is no longer held");
        }
        assert!(SPARE.lock().unwrap().len() <= SPARE_MAX, "the pool is bounded");
        // Other tests in this process may give back or take buffers at the same moment,
        // so one of a few tries is enough: a buffer given back (marked here; a fresh one
        // is zeroed) is the next one taken.
        let reused = (0..10u8).any(|i| {
            let mut buf = take_buffer();
            buf[..4].copy_from_slice(&[0xa5, 0x5a, i, 1]);
            give_back(&mut buf);
            take_buffer()[..4] == [0xa5, 0x5a, i, 1]
        });
        assert!(reused, "a buffer given back is taken again rather than allocated");
    }

    struct Counted<S> {
        inner: S,
        reads: usize,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }
}
