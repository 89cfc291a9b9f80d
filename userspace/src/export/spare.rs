//! Span chunks the export worker has emptied, handed back to the submitting side for its next
//! chunk. Without them every chunk was a new allocation that grew span by span (376 bytes each)
//! as the linker released into it, on fresh pages: the reallocations, their copies and page
//! faults were ~6 % of the daemon's CPU at nginx's 100k requests/s. A spare keeps the capacity
//! its chunk reached, is allocated and freed by the same threads, and never blocks either side.

use std::sync::Mutex;

use crate::model::Span;

/// Most spare chunks kept.
const MAX_SPARE: usize = 4;
/// Largest chunk kept (in spans, ~1.5 MiB): a burst's chunk is freed, so at most
/// `MAX_SPARE * MAX_SPANS` spans of room stay allocated.
const MAX_SPANS: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct SpareChunks(Mutex<Vec<Vec<Span>>>);

impl SpareChunks {
    /// Keeps `chunk`'s room for a later [`SpareChunks::take`] (its spans, if any, are dropped),
    /// unless enough is kept already or the other side holds the lock.
    pub(crate) fn put(&self, mut chunk: Vec<Span>) {
        if chunk.capacity() == 0 || chunk.capacity() > MAX_SPANS {
            return;
        }
        chunk.clear();
        if let Ok(mut spare) = self.0.try_lock()
            && spare.len() < MAX_SPARE
        {
            spare.push(chunk);
        }
    }

    /// An empty chunk: a spare one, or a new one with room for `spans`.
    pub(crate) fn take(&self, spans: usize) -> Vec<Span> {
        let spare = self.0.try_lock().ok().and_then(|mut s| s.pop());
        spare.unwrap_or_else(|| Vec::with_capacity(spans))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::server_span as span;

    #[test]
    fn an_emptied_chunk_comes_back_with_its_room() {
        let spare = SpareChunks::default();
        let mut chunk = spare.take(2);
        assert!(chunk.capacity() >= 2);
        chunk.extend((0..100).map(|_| span()));
        let (ptr, cap) = (chunk.as_ptr(), chunk.capacity());
        spare.put(chunk);
        let again = spare.take(2);
        assert!(again.is_empty());
        assert_eq!((again.as_ptr(), again.capacity()), (ptr, cap));
        // Nothing spare left: a new one.
        let fresh = spare.take(2);
        assert_eq!(fresh.capacity(), 2);
        assert_ne!(fresh.as_ptr(), again.as_ptr());
    }

    #[test]
    fn spares_are_bounded_in_number_and_size() {
        let spare = SpareChunks::default();
        for _ in 0..MAX_SPARE + 3 {
            spare.put(Vec::with_capacity(8));
        }
        spare.put(Vec::with_capacity(MAX_SPANS + 1));
        spare.put(Vec::new());
        let kept: Vec<_> = (0..MAX_SPARE + 1)
            .map(|_| spare.take(1).capacity())
            .collect();
        assert!(kept[..MAX_SPARE].iter().all(|&c| c == 8), "{kept:?}");
        assert_eq!(kept[MAX_SPARE], 1, "a new chunk once the spares are taken");
    }
}
