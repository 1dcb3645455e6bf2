//! Stores that refuse a whole request for one bad event, and say which (ClickHouse's
//! `(at row N)`, Splunk HEC's `invalid-event-number`), store nothing of it: the request is sent
//! again at once without that event, which goes to the dead-letter file. What comes back is one
//! [`Outcome`] for the batch, with per-event results when some were refused.

use std::future::Future;

use crate::event::Event;
use crate::sink::Outcome;

/// What one request came to.
#[derive(Debug)]
pub enum Attempt {
    /// The request's outcome, as it is.
    Done(Outcome),
    /// Nothing was stored because of the event at this index (into the events sent), refused
    /// for good.
    RefuseOne {
        index: usize,
        status: String,
        reason: String,
    },
}

/// Sends `events` with `attempt`, leaving out each event refused on its own, until the rest is
/// stored or fails otherwise. At most one request per event.
pub async fn send_isolating<'e, F, Fut>(events: &[&'e Event], mut attempt: F) -> Outcome
where
    F: FnMut(Vec<&'e Event>) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut pending: Vec<usize> = (0..events.len()).collect();
    let mut rejected: Vec<(usize, String)> = Vec::new();
    let mut refused_status = String::new();
    loop {
        let subset: Vec<&Event> = pending.iter().map(|&i| events[i]).collect();
        match attempt(subset).await {
            Attempt::RefuseOne {
                index,
                status,
                reason,
            } if index < pending.len() => {
                rejected.push((pending.remove(index), reason));
                refused_status = status;
                if pending.is_empty() {
                    return Outcome::Partial {
                        bytes: 0,
                        status: refused_status,
                        retry: Vec::new(),
                        rejected,
                        after: None,
                    };
                }
            }
            // An index outside the request: refuse the request as a whole.
            Attempt::RefuseOne { status, reason, .. } => {
                return merge(
                    Outcome::Rejected { status, reason },
                    &pending,
                    rejected,
                    &refused_status,
                );
            }
            Attempt::Done(outcome) => return merge(outcome, &pending, rejected, &refused_status),
        }
    }
}

/// The outcome for the batch: `outcome` concerns the events `pending` (indices into the batch),
/// `rejected` were refused on their own before.
fn merge(
    outcome: Outcome,
    pending: &[usize],
    mut rejected: Vec<(usize, String)>,
    refused_status: &str,
) -> Outcome {
    if rejected.is_empty() {
        return outcome;
    }
    let status = refused_status.to_owned();
    match outcome {
        Outcome::Delivered { bytes } => Outcome::Partial {
            bytes,
            status,
            retry: Vec::new(),
            rejected,
            after: None,
        },
        Outcome::Retry { after, .. } => Outcome::Partial {
            bytes: 0,
            status,
            retry: pending.to_vec(),
            rejected,
            after,
        },
        Outcome::Rejected { status, reason } => {
            rejected.extend(pending.iter().map(|&i| (i, reason.clone())));
            Outcome::Partial {
                bytes: 0,
                status,
                retry: Vec::new(),
                rejected,
                after: None,
            }
        }
        Outcome::Partial {
            bytes,
            status: s,
            retry,
            rejected: more,
            after,
        } => {
            rejected.extend(
                more.into_iter()
                    .filter_map(|(i, r)| pending.get(i).map(|&j| (j, r))),
            );
            Outcome::Partial {
                bytes,
                status: s,
                retry: retry
                    .iter()
                    .filter_map(|&i| pending.get(i).copied())
                    .collect(),
                rejected,
                after,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn events(n: usize) -> Vec<Event> {
        (0..n).map(|i| Event::new(format!("e{i}"))).collect()
    }

    /// A store that refuses any request holding a message in `bad`, naming the first one.
    async fn run(all: &[Event], bad: &[&str], then: Outcome) -> (Outcome, Vec<Vec<String>>) {
        let refs: Vec<&Event> = all.iter().collect();
        let sent = RefCell::new(Vec::new());
        let outcome = send_isolating(&refs, |subset| {
            let messages: Vec<String> = subset.iter().map(|e| e.message.clone()).collect();
            sent.borrow_mut().push(messages.clone());
            let then = then.clone();
            async move {
                match messages.iter().position(|m| bad.contains(&m.as_str())) {
                    Some(index) => Attempt::RefuseOne {
                        index,
                        status: "400".into(),
                        reason: format!("bad {}", messages[index]),
                    },
                    None => Attempt::Done(then),
                }
            }
        })
        .await;
        (outcome, sent.into_inner())
    }

    #[tokio::test]
    async fn the_refused_events_are_left_out_and_the_rest_sent_again() {
        let all = events(5);
        let (outcome, sent) = run(&all, &["e1", "e3"], Outcome::Delivered { bytes: 9 }).await;
        assert_eq!(
            outcome,
            Outcome::Partial {
                bytes: 9,
                status: "400".into(),
                retry: vec![],
                rejected: vec![(1, "bad e1".into()), (3, "bad e3".into())],
                after: None,
            }
        );
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[2], ["e0", "e2", "e4"]);
    }

    #[tokio::test]
    async fn a_failure_after_a_refusal_retries_the_rest_only() {
        let all = events(3);
        let retry = Outcome::Retry {
            status: "503".into(),
            reason: "busy".into(),
            after: None,
        };
        let (outcome, _) = run(&all, &["e0"], retry).await;
        assert_eq!(
            outcome,
            Outcome::Partial {
                bytes: 0,
                status: "400".into(),
                retry: vec![1, 2],
                rejected: vec![(0, "bad e0".into())],
                after: None,
            }
        );
    }

    #[tokio::test]
    async fn without_refusals_the_outcome_is_the_stores() {
        let all = events(2);
        let (outcome, sent) = run(&all, &[], Outcome::Delivered { bytes: 4 }).await;
        assert_eq!(outcome, Outcome::Delivered { bytes: 4 });
        assert_eq!(sent.len(), 1);
        let (outcome, _) = run(&all, &["e0", "e1"], Outcome::Delivered { bytes: 4 }).await;
        assert!(
            matches!(outcome, Outcome::Partial { ref retry, ref rejected, .. } if retry.is_empty() && rejected.len() == 2)
        );
    }
}
