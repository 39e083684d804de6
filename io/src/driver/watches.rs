//! The watches the loop waits for: one set polled by the loop itself, not a task per
//! watch. An agent keeps about five watches per service for as long as the service
//! exists; as spawned tasks they cost a task's allocation each (about 400 bytes,
//! 2 MB with a thousand services), as entries here little more than the watch itself.
//! A persistent watch is an entry waiting for its next event, put back after each.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamFuture};
use futures_util::{Stream, StreamExt};
use pop_core::zk::WatchEvent;

use super::ports::{WatchFuture, WatchStream};

enum Watch {
    Once(WatchFuture),
    /// A persistent watch, waiting for its next event.
    Every(StreamFuture<WatchStream>),
}

/// A watch and the epoch of the session that set it.
struct Tagged {
    epoch: u64,
    watch: Watch,
}

impl Future for Tagged {
    /// The event, and a persistent watch to wait on again.
    type Output = (u64, Option<WatchEvent>, Option<WatchStream>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let epoch = self.epoch;
        match &mut self.watch {
            Watch::Once(watch) => watch.as_mut().poll(cx).map(|event| (epoch, event, None)),
            Watch::Every(next) => Pin::new(next).poll(cx).map(|(event, stream)| {
                // Ended (with its session): not waited on again.
                let again = event.is_some().then_some(stream);
                (epoch, event, again)
            }),
        }
    }
}

/// Watches not fired yet; yields `(epoch, event)` as each fires (`None` for one that
/// ended with its session).
#[derive(Default)]
pub(super) struct Watches(FuturesUnordered<Tagged>);

impl Watches {
    pub fn push(&mut self, epoch: u64, watch: WatchFuture) {
        let watch = Watch::Once(watch);
        self.0.push(Tagged { epoch, watch });
    }

    pub fn push_every(&mut self, epoch: u64, stream: WatchStream) {
        let watch = Watch::Every(stream.into_future());
        self.0.push(Tagged { epoch, watch });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Stream for Watches {
    type Item = (u64, Option<WatchEvent>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx).map(|fired| {
            fired.map(|(epoch, event, again)| {
                if let Some(stream) = again {
                    self.push_every(epoch, stream);
                }
                (epoch, event)
            })
        })
    }
}
