//! Buffers kept from one document for the next (see [`super::Scratch`]).

/// Buffers larger than this are freed after a document rather than kept.
const KEEP_BYTES: usize = 1 << 20;

/// A buffer emptied for the next document, or freed when one large document grew it past
/// [`KEEP_BYTES`].
pub(super) trait Reuse {
    fn reuse(&mut self);
}

impl<T> Reuse for Vec<T> {
    fn reuse(&mut self) {
        if self.capacity() * std::mem::size_of::<T>() > KEEP_BYTES {
            *self = Vec::new();
        } else {
            self.clear();
        }
    }
}

impl Reuse for String {
    fn reuse(&mut self) {
        if self.capacity() > KEEP_BYTES {
            *self = String::new();
        } else {
            self.clear();
        }
    }
}
