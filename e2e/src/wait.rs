//! Bounded waits: poll a check until it is satisfied or a deadline passes,
//! and on timeout say what was awaited and what was seen last.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a wait polls.
pub const POLL: Duration = Duration::from_secs(2);

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check<T> {
    /// The awaited state, with what the caller wants from it.
    Done(T),
    /// Not there yet, with what was seen (for the timeout message).
    Waiting(String),
}

/// Polls `check` every [`POLL`] until it returns [`Check::Done`], for at
/// most `timeout`. Fails when the check fails (an API error, or a state the
/// awaited one can no longer follow) or on timeout, naming `what` and the
/// last state seen. Prints each new state as it is seen, so a long wait
/// shows its progress.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Check<T>>>,
{
    let started = Instant::now();
    let mut last = String::from("nothing yet");
    loop {
        match check().await? {
            Check::Done(value) => {
                println!("[{:>4}s] {what}: done", started.elapsed().as_secs());
                return Ok(value);
            }
            Check::Waiting(seen) => {
                if seen != last {
                    println!("[{:>4}s] {what}: {seen}", started.elapsed().as_secs());
                    last = seen;
                }
            }
        }
        if started.elapsed() >= timeout {
            anyhow::bail!(
                "timed out after {}s waiting for {what}; last seen: {last}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Minutes, for readable timeouts.
pub const fn minutes(count: u64) -> Duration {
    Duration::from_secs(count * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_returns_what_the_check_found() {
        let mut polls = 0;
        let found = until("the third poll", minutes(1), || {
            polls += 1;
            let seen = polls;
            async move {
                Ok(if seen == 3 {
                    Check::Done(seen)
                } else {
                    Check::Waiting(format!("poll {seen}"))
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(found, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_names_what_was_awaited_and_the_last_state() {
        let error = until(
            "a state that never comes",
            Duration::from_secs(5),
            || async { Ok(Check::<()>::Waiting("still waiting".to_owned())) },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("a state that never comes"), "{error}");
        assert!(error.contains("last seen: still waiting"), "{error}");
    }
}
