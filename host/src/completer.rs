//! The completer: records the outcomes of a worker's slots and claims their next tasks in
//! batches, one transaction (and, in a durable queue, one flush) for whatever the slots hand
//! in while the previous batch is being written. River's batching completer, without its
//! timer: the slot that finds no write under way writes at once, for itself and for every slot
//! that arrived meanwhile, so a lone slot never waits for company.
//!
//! Execution stays at-least-once: an outcome not yet written when the worker dies is lost with
//! it, and its task runs again once its lease runs out.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use queue::{Claim, Lease, Outcome, QueueStore, StoreError, Task};

/// What a slot hands in: how its task ended, if it ran one, and whether it wants another.
pub struct Request {
    /// The lease and outcome of the attempt that ended.
    pub outcome: Option<(Lease, Outcome)>,
    /// Whether the slot takes a next task.
    pub claim: bool,
}

/// What a slot gets back.
pub struct Response {
    /// The recorded task, or why the outcome was refused; `None` when it handed in none.
    pub done: Option<Result<Task, StoreError>>,
    /// Its next task, if it asked for one and one was claimable.
    pub next: Result<Option<Claim>, StoreError>,
}

/// Batches the slots' writes of one worker.
pub struct Completer {
    store: Arc<dyn QueueStore>,
    worker: String,
    /// The types claimed: the role's, and while the roles it stands in for are out of quota,
    /// theirs too.
    types: Mutex<Vec<String>>,
    state: Mutex<State>,
    written: Condvar,
}

/// Ends a write that panicked: another slot may write next.
struct Unwinding<'c>(&'c Completer);

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        let mut state = self
            .0
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.writing = false;
        self.0.written.notify_all();
    }
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    waiting: Vec<(u64, Request)>,
    writing: bool,
    answers: HashMap<u64, Response>,
}

impl Completer {
    /// A completer for `worker`, claiming tasks of `types`.
    pub fn new(store: Arc<dyn QueueStore>, worker: String, types: Vec<String>) -> Completer {
        Completer {
            store,
            worker,
            types: Mutex::new(types),
            state: Mutex::new(State::default()),
            written: Condvar::new(),
        }
    }

    /// Claims tasks of `types` from the next write on.
    pub fn claim_types(&self, types: Vec<String>) {
        *self.types.lock().expect("types lock") = types;
    }

    /// Hands `request` in and waits until it is written, with the writes of whatever other
    /// slots handed in meanwhile.
    pub fn submit(&self, request: Request) -> Response {
        let mut state = self.state.lock().expect("completer lock");
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push((ticket, request));
        loop {
            if let Some(answer) = state.answers.remove(&ticket) {
                return answer;
            }
            if state.writing {
                state = self.written.wait(state).expect("completer lock");
                continue;
            }
            let batch = std::mem::take(&mut state.waiting);
            if batch.is_empty() {
                // This request went with a write that panicked: nothing is known of it.
                let lost = || StoreError::InvalidTask("the write of this outcome failed".into());
                return Response {
                    done: Some(Err(lost())),
                    next: Err(lost()),
                };
            }
            state.writing = true;
            drop(state);
            // Should the write panic, the next slot may still write: the others must not wait
            // for ever.
            let unwinding = Unwinding(self);
            let answers = self.write(batch);
            std::mem::forget(unwinding);
            state = self.state.lock().expect("completer lock");
            state.writing = false;
            state.answers.extend(answers);
            self.written.notify_all();
        }
    }

    /// Writes one batch: its outcomes recorded and as many tasks claimed as its slots want, in
    /// one transaction. When that fails as a whole, each request is written on its own, so
    /// that each gets the error that is its own.
    fn write(&self, batch: Vec<(u64, Request)>) -> Vec<(u64, Response)> {
        let outcomes: Vec<(Lease, Outcome)> = batch
            .iter()
            .filter_map(|(_, request)| request.outcome.clone())
            .collect();
        let wanting = batch.iter().filter(|(_, request)| request.claim).count();
        let types = self.types.lock().expect("types lock").clone();
        let written = self
            .store
            .finish_and_claim(&outcomes, &self.worker, &types, wanting);
        let (done, claims) = match written {
            Ok(written) => written,
            Err(err) if batch.len() == 1 => {
                let (ticket, request) = batch.into_iter().next().expect("one request");
                let answer = match request.outcome {
                    Some(_) => Response {
                        done: Some(Err(err)),
                        next: Ok(None),
                    },
                    None => Response {
                        done: None,
                        next: Err(err),
                    },
                };
                return vec![(ticket, answer)];
            }
            Err(_) => {
                return batch
                    .into_iter()
                    .flat_map(|one| self.write(vec![one]))
                    .collect();
            }
        };
        let mut done = done.into_iter();
        // The claim's error goes to the first slot that wanted a task; the others find none
        // and look again when work is announced.
        let (mut claims, mut claim_error) = match claims {
            Ok(claims) => (claims.into_iter(), None),
            Err(err) => (Vec::new().into_iter(), Some(err)),
        };
        batch
            .into_iter()
            .map(|(ticket, request)| {
                let next = if !request.claim {
                    Ok(None)
                } else if let Some(err) = claim_error.take() {
                    Err(err)
                } else {
                    Ok(claims.next())
                };
                let done = request.outcome.map(|_| {
                    done.next()
                        .unwrap_or_else(|| Err(StoreError::InvalidTask("no result".into())))
                });
                (ticket, Response { done, next })
            })
            .collect()
    }
}
