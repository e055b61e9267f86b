use eda_core::{CodecError, EnvelopeError, StoreError};
use eda_dispatch::{PublishError, SubscribeError};

/// Any eda error. Each crate's typed error converts into it with `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Subscribing failed.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// An envelope or CloudEvents document is invalid.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A payload did not encode or decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
