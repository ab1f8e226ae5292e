//! Bodies with a bound or a guard: request bodies that must keep moving, response
//! bodies that hold something until they are done.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::BoxError;

/// A body that fails when its sender goes `timeout` without sending a frame, so a
/// client trickling an upload (or stopping halfway) cannot hold a connection, a temp
/// file or a container's request slot for ever.
pub struct ProgressBody<B> {
    inner: B,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl<B> ProgressBody<B> {
    /// Wraps `inner`; `timeout` is the longest wait for one frame.
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }
}

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct BodyStalled(pub Duration);

impl<B> Body for ProgressBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    let deadline = Instant::now() + this.timeout;
                    this.sleep.as_mut().reset(deadline);
                }
                ready!(this.sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(BodyStalled(this.timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that holds `guard` until it is dropped (which hyper does as soon as the body
/// has ended, or the connection went away): a concurrency permit, a connection's busy
/// mark, anything that must last exactly as long as the response streams.
pub struct Guarded<B, G> {
    inner: B,
    _guard: G,
}

impl<B, G> Guarded<B, G> {
    /// `inner`, holding `guard`.
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B, G> Body for Guarded<B, G>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    G: Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn a_stalled_body_fails_after_its_timeout_and_a_moving_one_does_not() {
        let (mut tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        let timeout = Duration::from_millis(400);
        let mut body = ProgressBody::new(rx, timeout);
        tokio::spawn(async move {
            // Each frame comes well within the timeout, though all three together
            // take longer than it.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                tx.send_data(Bytes::from_static(b"x")).await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tx);
        });
        for _ in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyStalled>(), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
