//! The watches the loop waits for: one set polled by the loop itself, not a task per
//! watch. An agent keeps about five watches per service for as long as the service
//! exists; as spawned tasks they cost a task's allocation each (about 400 bytes,
//! 2 MB with a thousand services), as entries here little more than the watch itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::FuturesUnordered;
use futures_util::Stream;
use pop_core::zk::WatchEvent;

use super::ports::WatchFuture;

/// A watch and the epoch of the session that set it.
struct Tagged {
    epoch: u64,
    watch: WatchFuture,
}

impl Future for Tagged {
    type Output = (u64, Option<WatchEvent>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let epoch = self.epoch;
        self.watch.as_mut().poll(cx).map(|event| (epoch, event))
    }
}

/// Watches not fired yet; yields `(epoch, event)` as each fires (`None` for one that
/// ended with its session).
#[derive(Default)]
pub(super) struct Watches(FuturesUnordered<Tagged>);

impl Watches {
    pub fn push(&mut self, epoch: u64, watch: WatchFuture) {
        self.0.push(Tagged { epoch, watch });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Stream for Watches {
    type Item = (u64, Option<WatchEvent>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}
