//! Handlers, middleware and publish interceptors: the traits the engine runs.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::context::Context;
use crate::envelope::EventInfo;
use crate::id::{EventId, Timestamp};
use crate::metadata::Metadata;

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// A boxed future, as middleware and endpoints return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A handler failed. Any error converts into it with `?`.
///
/// A *retryable* error (the default) is retried per the subscription's retry policy;
/// a *permanent* one goes to the dead letters at once.
pub struct HandlerError {
    permanent: bool,
    inner: Box<dyn StdError + Send + Sync + 'static>,
}

#[derive(Debug)]
struct Message(String);
impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl StdError for Message {}

impl HandlerError {
    /// A retryable error with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            permanent: false,
            inner: Box::new(Message(message.to_string())),
        }
    }
    /// An error that retrying cannot fix (bad data, a rule violated).
    pub fn permanent(error: impl Into<HandlerError>) -> Self {
        Self {
            permanent: true,
            ..error.into()
        }
    }
    /// Whether retries are skipped.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
    /// The underlying error.
    pub fn source_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.inner
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self {
            permanent: false,
            inner: Box::new(error),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("permanent", &self.permanent)
            .field("error", &self.inner)
            .finish()
    }
}

/// An asynchronous handler of events of type `M` (`Envelope<E>` for typed subscribers,
/// [`RawEvent`](crate::RawEvent) for pattern subscribers).
///
/// Any `Fn(Arc<M>, Context) -> impl Future<Output = HandlerResult>` closure is one:
///
/// ```
/// use std::sync::Arc;
/// use eda_core::{Context, Envelope, Event, Handler, HandlerResult};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl Event for Ping { const TYPE: &'static str = "ping"; }
/// fn assert_handler<H: Handler<Envelope<Ping>>>(_: H) {}
/// assert_handler(|event: Arc<Envelope<Ping>>, ctx: Context| async move {
///     println!("{} attempt {}", event.id, ctx.attempt());
///     HandlerResult::Ok(())
/// });
/// ```
pub trait Handler<M>: Send + Sync + 'static {
    /// Handles one delivery.
    fn handle(&self, event: Arc<M>, ctx: Context) -> impl Future<Output = HandlerResult> + Send;
}

impl<M, F, Fut> Handler<M> for F
where
    M: Send + Sync + 'static,
    F: Fn(Arc<M>, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send,
{
    fn handle(&self, event: Arc<M>, ctx: Context) -> impl Future<Output = HandlerResult> + Send {
        self(event, ctx)
    }
}

/// A synchronous handler: runs inline on the publisher's thread before `publish`
/// returns; its error goes back to the publisher.
pub trait SyncHandler<M>: Send + Sync + 'static {
    /// Handles one event.
    fn handle(&self, event: &M, ctx: &Context) -> HandlerResult;
}

impl<M, F> SyncHandler<M> for F
where
    F: Fn(&M, &Context) -> HandlerResult + Send + Sync + 'static,
{
    fn handle(&self, event: &M, ctx: &Context) -> HandlerResult {
        self(event, ctx)
    }
}

/// The rest of a middleware chain, ending in the subscription's lifecycle
/// (retry → timeout → handler).
pub struct Next<'a> {
    chain: &'a [Arc<dyn Middleware>],
    endpoint: &'a dyn Endpoint,
}

impl<'a> Next<'a> {
    /// A chain of middleware in front of an endpoint.
    pub fn new(chain: &'a [Arc<dyn Middleware>], endpoint: &'a dyn Endpoint) -> Self {
        Self { chain, endpoint }
    }

    /// Runs the rest of the chain.
    pub fn run(self, event: &'a dyn EventInfo, ctx: &'a Context) -> BoxFuture<'a, HandlerResult> {
        match self.chain.split_first() {
            Some((first, rest)) => first.handle(
                event,
                ctx,
                Next {
                    chain: rest,
                    endpoint: self.endpoint,
                },
            ),
            None => self.endpoint.call(ctx),
        }
    }
}

/// What a middleware chain ends in. Implemented by the engine.
pub trait Endpoint: Send + Sync {
    /// Runs the delivery (all its attempts).
    fn call<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, HandlerResult>;
}

/// Code around every delivery of a subscription: tracing, metrics, dedup, auth, ...
///
/// Middleware runs outside the retry loop (order: your middleware → retry → timeout →
/// handler), so it sees each delivery once and its result after all attempts.
///
/// ```
/// use eda_core::{BoxFuture, Context, EventInfo, HandlerResult, Middleware, Next};
///
/// struct LogTypes;
/// impl Middleware for LogTypes {
///     fn handle<'a>(&'a self, event: &'a dyn EventInfo, ctx: &'a Context, next: Next<'a>)
///         -> BoxFuture<'a, HandlerResult>
///     {
///         Box::pin(async move {
///             let result = next.run(event, ctx).await;
///             println!("{} -> {}: {:?}", event.event_type(), ctx.subscription(), result.is_ok());
///             result
///         })
///     }
/// }
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Handles a delivery, usually by calling `next.run(event, ctx)`.
    fn handle<'a>(
        &'a self,
        event: &'a dyn EventInfo,
        ctx: &'a Context,
        next: Next<'a>,
    ) -> BoxFuture<'a, HandlerResult>;
}

/// The attributes of an event being published, as interceptors see them.
pub struct PublishAttributes<'a> {
    /// CloudEvents `type` (fixed).
    pub event_type: &'a str,
    /// CloudEvents `id` (fixed).
    pub id: EventId,
    /// CloudEvents `time`.
    pub time: &'a mut Timestamp,
    /// CloudEvents `source`.
    pub source: &'a mut Arc<str>,
    /// Extensions and headers.
    pub metadata: &'a mut Metadata,
}

/// Stamps every envelope on publish (source, trace context, tenant, ...), before any
/// subscriber sees it.
pub trait Interceptor: Send + Sync + 'static {
    /// Adjusts the attributes of an event being published.
    fn on_publish(&self, attributes: &mut PublishAttributes<'_>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_and_keep_permanence() {
        fn fails() -> HandlerResult {
            let n: u32 = "x".parse()?;
            let _ = n;
            Ok(())
        }
        let e = fails().unwrap_err();
        assert!(!e.is_permanent());
        assert!(e.to_string().contains("invalid digit"));
        let p = HandlerError::permanent(HandlerError::msg("bad order"));
        assert!(p.is_permanent());
        assert_eq!(p.to_string(), "bad order");
    }
}
