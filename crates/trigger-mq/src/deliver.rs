//! One message's way through a trigger: delivered to the function as a CloudEvent, retried
//! by the platform's rules, then acknowledged only once its outcome is safe somewhere (the
//! function succeeded and its response, if wanted, was published; or its failure reached the
//! error topic or the dead-letter store). Anything else leaves it for the broker to redeliver.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gust_executor::body::read_response;
use gust_executor::{Clock, Enqueue, store_request};
use gust_executor::{Invocation, InvokeError, Invoker, Payload, RequestId, TriggerKind};
use gust_model::{
    AsyncInvocation, AsyncSource, DeadReason, InvocationState, MqTrigger, StoredResponse, Verdict,
    classify_status, retry_wait,
};
use http::{HeaderName, HeaderValue};
use rand::RngExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::MqMetrics;
use crate::broker::{Outgoing, Publisher, Received, Settle};
use crate::cloudevent::{EventAttributes, event_headers};
use crate::status::StatusCell;

/// How often a message being worked on is reported in progress to its broker.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(4);
/// Largest function response forwarded to a response topic, as one message.
const MAX_RESPONSE_MESSAGE_BYTES: usize = 6 * 1024 * 1024;
/// How long a message whose outcome could not be recorded waits before it is redelivered.
const RELEASE_DELAY: Duration = Duration::from_secs(2);
/// How often a trigger whose function is missing tries again.
const FUNCTION_POLL: Duration = Duration::from_secs(1);

/// What every message of one trigger needs.
pub(crate) struct TriggerContext {
    pub trigger: MqTrigger,
    /// `ce-source` and `ce-type` of every message.
    pub event_source: String,
    pub event_type: String,
    pub invoker: Arc<dyn Invoker>,
    pub dead_letters: Arc<dyn Enqueue>,
    pub clock: Arc<dyn Clock>,
    pub status: Arc<StatusCell>,
    pub metrics: MqMetrics,
    /// This node's id in a cluster (see [`crate::MqTriggers::in_cluster`]).
    pub member: Option<String>,
}

/// The message as the function sees it: a CloudEvent in binary mode.
struct Event {
    id: String,
    subject: String,
    time_ms: u64,
    content_type: Option<String>,
    payload: Bytes,
}

enum Outcome {
    Succeeded(http::Response<Bytes>),
    Failed(Failure),
    /// Gust is stopping: the message goes back to the broker untouched.
    Abandoned,
}

struct Failure {
    reason: DeadReason,
    attempts: u32,
    first_attempt_ms: u64,
    last_status: Option<u16>,
    last_error: String,
    response: Option<StoredResponse>,
}

impl TriggerContext {
    /// Delivers one message once one of the `workers` is free, and settles it.
    pub async fn deliver(
        self: Arc<Self>,
        publisher: Arc<dyn Publisher>,
        received: Received,
        workers: Arc<Semaphore>,
        stop: CancellationToken,
    ) {
        let Received {
            id,
            subject,
            time_ms,
            content_type,
            payload,
            settle,
        } = received;
        let event = Event {
            id,
            subject,
            time_ms: time_ms.unwrap_or_else(|| self.clock.now_ms()),
            content_type: self.trigger.content_type.clone().or(content_type),
            payload,
        };
        let request_id = RequestId::generate();
        // The broker hears that the message is alive while it waits for a worker too. The
        // worker is held until the message is settled, so that with one worker a response
        // is published before the next message runs.
        let (_worker, outcome) = reporting_progress(
            async {
                let worker = tokio::select! {
                    _ = stop.cancelled() => return (None, Outcome::Abandoned),
                    worker = workers.acquire_owned() => worker.expect("the semaphore is never closed"),
                };
                (Some(worker), self.attempts(&event, &request_id, &stop).await)
            },
            settle.as_ref(),
        )
        .await;
        let recorded = match &outcome {
            Outcome::Abandoned => {
                settle.release(Duration::ZERO).await;
                return;
            }
            Outcome::Succeeded(response) => {
                self.publish_response(&*publisher, &event, &request_id, response)
                    .await
            }
            Outcome::Failed(failure) => {
                self.record_failure(&*publisher, &event, &request_id, failure)
                    .await
            }
        };
        let succeeded = matches!(outcome, Outcome::Succeeded(_));
        match recorded {
            Ok(()) => match settle.ack().await {
                Ok(()) => {
                    self.status.count(succeeded);
                    self.metrics.count(
                        &self.trigger,
                        if succeeded { "succeeded" } else { "failed" },
                    );
                }
                // Redelivered later: at least once, never lost.
                Err(err) => self.report(&format!("cannot acknowledge message {}: {err}", event.id)),
            },
            Err(err) => {
                self.report(&err);
                self.metrics.count(&self.trigger, "released");
                settle.release(RELEASE_DELAY).await;
            }
        }
    }

    fn report(&self, error: &str) {
        tracing::warn!(trigger = %self.trigger.name, "{error}");
        self.status.error(error, self.clock.now_ms());
    }

    /// Attempts the message until it succeeds, fails for good or Gust stops.
    async fn attempts(&self, event: &Event, id: &RequestId, stop: &CancellationToken) -> Outcome {
        let max_attempts = self.trigger.max_retries + 1;
        let first_attempt_ms = self.clock.now_ms();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self
                .invoker
                .invoke(Invocation {
                    id: id.clone(),
                    namespace: self.trigger.namespace.clone(),
                    function: self.trigger.function.clone(),
                    trigger: TriggerKind::Mq,
                    attempt,
                    request: self.request(event, id, attempt).map(Payload::Ready),
                })
                .await
            {
                // A response goes on as one message, so it is read whole.
                Ok(response) => {
                    read_response(
                        response,
                        self.trigger.function.as_str(),
                        MAX_RESPONSE_MESSAGE_BYTES,
                    )
                    .await
                }
                Err(err) => Err(err),
            };
            if !matches!(result, Err(InvokeError::FunctionNotFound { .. })) {
                self.status.leave_waiting();
            }
            let (last_status, last_error, response, retry_after) = match result {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = gust_executor::retry_after(&response);
                    let stored = StoredResponse::new(status, response.body());
                    match classify_status(status) {
                        Verdict::Succeeded => return Outcome::Succeeded(response),
                        Verdict::Final => {
                            return Outcome::Failed(Failure {
                                reason: DeadReason::FinalStatus,
                                attempts: attempt,
                                first_attempt_ms,
                                last_status: Some(status),
                                last_error: format!("the function answered {status}"),
                                response: Some(stored),
                            });
                        }
                        Verdict::Retry => (
                            Some(status),
                            format!("the function answered {status}"),
                            Some(stored),
                            retry_after,
                        ),
                    }
                }
                // Refused before reaching the function: not an attempt.
                Err(InvokeError::OverCapacity { retry_after, .. }) => {
                    attempt -= 1;
                    if !pause(stop, retry_after).await {
                        return Outcome::Abandoned;
                    }
                    continue;
                }
                // The message waits, unacknowledged, for its function to exist again.
                Err(InvokeError::FunctionNotFound { .. }) => {
                    attempt -= 1;
                    if self.status.enter_waiting() {
                        self.report(&format!(
                            "function {:?} not found; messages wait unacknowledged until it exists",
                            self.trigger.function.as_str()
                        ));
                    }
                    if !pause(stop, FUNCTION_POLL).await {
                        return Outcome::Abandoned;
                    }
                    continue;
                }
                Err(error) => (
                    Some(error.status()),
                    format!("{}: {error}", error.reason()),
                    None,
                    Duration::ZERO,
                ),
            };
            if attempt >= max_attempts {
                return Outcome::Failed(Failure {
                    reason: DeadReason::AttemptsExhausted,
                    attempts: attempt,
                    first_attempt_ms,
                    last_status,
                    last_error,
                    response,
                });
            }
            let wait = retry_wait(attempt, retry_after, rand::rng().random::<f64>());
            if !pause(stop, wait).await {
                return Outcome::Abandoned;
            }
        }
    }

    /// The message's CloudEvents attributes.
    fn attributes<'a>(&'a self, event: &'a Event) -> EventAttributes<'a> {
        EventAttributes {
            id: &event.id,
            source: &self.event_source,
            event_type: &self.event_type,
            time_ms: event.time_ms,
            subject: &event.subject,
            content_type: event.content_type.as_deref(),
        }
    }

    /// The HTTP request the function receives for attempt `attempt`.
    fn request(&self, event: &Event, id: &RequestId, attempt: u32) -> http::Request<Bytes> {
        let mut request = http::Request::new(event.payload.clone());
        *request.method_mut() = http::Method::POST;
        let headers = request.headers_mut();
        headers.reserve(10);
        for (name, value) in event_headers(&self.attributes(event)) {
            headers.insert(name, value);
        }
        insert(headers, X_GUST_REQUEST_ID, id.to_string());
        insert(headers, X_GUST_ATTEMPT, attempt.to_string());
        insert(headers, X_GUST_TRIGGER, self.trigger.name.to_string());
        request
    }

    async fn publish_response(
        &self,
        publisher: &dyn Publisher,
        event: &Event,
        id: &RequestId,
        response: &http::Response<Bytes>,
    ) -> Result<(), String> {
        let Some(topic) = &self.trigger.resp_topic else {
            return Ok(());
        };
        // 204 No Content: the function has nothing to say about this message (an alert
        // function with a normal reading), so nothing is published.
        if response.status() == http::StatusCode::NO_CONTENT {
            return Ok(());
        }
        let message = Outgoing {
            headers: vec![
                ("x-gust-source-id".into(), event.id.clone()),
                ("x-gust-request-id".into(), id.to_string()),
                (
                    "x-gust-status".into(),
                    response.status().as_u16().to_string(),
                ),
            ],
            content_type: response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            payload: response.body().clone(),
        };
        publisher.publish(topic, message).await.map_err(|err| {
            format!(
                "message {} succeeded but its response could not be published to {topic:?} ({err}); it will be delivered again",
                event.id
            )
        })
    }

    /// Writes a failed message to the error topic, or to the dead-letter store when the
    /// trigger has none. Only when this returns `Ok` may the message be acknowledged.
    async fn record_failure(
        &self,
        publisher: &dyn Publisher,
        event: &Event,
        id: &RequestId,
        failure: &Failure,
    ) -> Result<(), String> {
        let error = format!("{}: {}", failure.reason.as_str(), failure.last_error);
        if let Some(topic) = &self.trigger.error_topic {
            let mut headers: Vec<(String, String)> = event_headers(&self.attributes(event))
                .into_iter()
                .filter(|(name, _)| *name != http::header::CONTENT_TYPE)
                .map(|(name, value)| {
                    let value = value.to_str().expect("attributes are encoded as ASCII");
                    (name.as_str().to_owned(), value.to_owned())
                })
                .collect();
            headers.push(("x-gust-error".into(), error));
            headers.push(("x-gust-attempts".into(), failure.attempts.to_string()));
            headers.push(("x-gust-request-id".into(), id.to_string()));
            if let Some(status) = failure.last_status {
                headers.push(("x-gust-status".into(), status.to_string()));
            }
            let message = Outgoing {
                headers,
                content_type: event.content_type.clone(),
                payload: event.payload.clone(),
            };
            return publisher.publish(topic, message).await.map_err(|err| {
                format!(
                    "message {} failed ({}) and could not be written to the error topic {topic:?} ({err}); it stays unacknowledged",
                    event.id, failure.reason.as_str()
                )
            });
        }
        let now = self.clock.now_ms();
        let invocation = AsyncInvocation {
            state: InvocationState::Dead,
            reason: Some(failure.reason),
            attempts: failure.attempts,
            updated_at_ms: now,
            next_attempt_at_ms: None,
            finished_at_ms: Some(now),
            last_status: failure.last_status,
            last_error: Some(failure.last_error.clone()),
            response: failure.response.clone(),
            ..AsyncInvocation::accepted(
                id.to_string(),
                self.trigger.namespace.clone(),
                self.trigger.function.clone(),
                AsyncSource::Mq {
                    trigger: self.trigger.name.clone(),
                    message_id: event.id.clone(),
                },
                failure.first_attempt_ms,
            )
        };
        let request = store_request(&self.request(event, id, failure.attempts));
        self.dead_letters
            .store_dead_letter(invocation, request)
            .await
            .map_err(|err| {
                format!(
                    "message {} failed ({}) and could not be stored as a dead letter ({err}); it stays unacknowledged",
                    event.id, failure.reason.as_str()
                )
            })
    }
}

// Header names built once: parsing them for every message showed in profiles.
const X_GUST_REQUEST_ID: HeaderName = HeaderName::from_static("x-gust-request-id");
const X_GUST_ATTEMPT: HeaderName = HeaderName::from_static("x-gust-attempt");
const X_GUST_TRIGGER: HeaderName = HeaderName::from_static("x-gust-trigger");

/// Sets a header; a value that is not a valid header value (a broker's message id with a
/// control character, say) is left out rather than failing the delivery.
fn insert(headers: &mut http::HeaderMap, name: HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

/// Sleeps for `wait`; `false` when Gust began stopping first.
async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Runs `work`, telling the broker every [`PROGRESS_EVERY`] that the message is still alive.
async fn reporting_progress<T>(work: impl Future<Output = T>, settle: &dyn Settle) -> T {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => settle.in_progress().await,
        }
    }
}
