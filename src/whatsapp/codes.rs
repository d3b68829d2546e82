//! Meta's error codes, and what each leads to: docs/delivery.md's "What Meta's answers lead to"
//! table as code, the one place in the crate that names them. Meta's `error.code` decides the
//! [`Class`]; the HTTP status only decides for codes the table does not list (Meta sends the
//! same code under 400, 403, 429 and 500). The job handler acts on the class, never on a code:
//! it retries, paces ([`super::pacing`]: the number's pause, the recipient's backoff), holds the
//! number ([`super::numbers`]), opens its circuit, or fails the job.

/// Meta's "spam rate limit hit": a quality signal, not a transient. The number is held in the
/// database (every runner) until an operator resumes it (docs/numbers.md); the only code of
/// [`Class::PauseNumber`].
pub const SPAM_HOLD: i64 = 131048;
/// How a hold for [`SPAM_HOLD`] names it (`"lastError"`, the hold's reason, the log).
pub const SPAM_HOLD_NAME: &str = "spam rate limit";

/// What an answer asks of us. The labels are the `class` values of
/// `outbound_runner_whatsapp_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Transient: retry this job with backoff.
    Retry,
    /// Too fast for the phone number: pause the whole number, then retry (no attempt spent).
    SlowNumber,
    /// Too fast for this recipient (pair rate limit): back off 4^x s for that recipient only.
    SlowRecipient,
    /// Something is wrong with the account, the token or the number: stop sending for the
    /// number (circuit open) and alert.
    Halt,
    /// A halt that outlives the runner: hold the number (every runner, in the database) until
    /// resumed by hand ([`SPAM_HOLD`]).
    PauseNumber,
    /// This message cannot be delivered: fail the job.
    Fail,
    /// Meta may or may not have accepted the message.
    Unknown,
}

impl Class {
    pub fn label(self) -> &'static str {
        match self {
            Class::Retry => "retry",
            Class::SlowNumber => "slow_number",
            Class::SlowRecipient => "slow_recipient",
            // Counted with the halts (docs/metrics.md).
            Class::Halt | Class::PauseNumber => "halt",
            Class::Fail => "fail",
            Class::Unknown => "unknown",
        }
    }
}

/// The class of a listed `error.code`, `None` for codes docs/delivery.md's table does not name.
pub fn class_of_code(code: i64) -> Option<Class> {
    Some(match code {
        // Temporary: API unknown / service unavailable / something went wrong / service
        // unavailable / media download error.
        1 | 2 | 131000 | 131016 | 131053 => Class::Retry,
        // Throughput and rate limits of the number, the WABA or the app; maintenance mode.
        4 | 80007 | 130429 | 131057 => Class::SlowNumber,
        // Pair rate limit: too many messages to this recipient.
        131056 => Class::SlowRecipient,
        // Spam rate limit: the number is held until resumed.
        SPAM_HOLD => Class::PauseNumber,
        // Auth, permissions, a restricted or blocked account, payment, registration.
        0 | 3 | 10 | 190 | 200..=299 | 368 | 131005 | 131031 | 131042 | 131045 | 133010 => {
            Class::Halt
        }
        // This message: invalid parameter, unsupported, not on WhatsApp, re-engagement window,
        // templates, ...
        100
        | 131008
        | 131009
        | 131021
        | 131026
        | 131047
        | 131049..=131051
        | 132000..=132016
        | 135000 => Class::Fail,
        _ => return None,
    })
}

/// The class of an answer: a listed code wins; otherwise 5xx is transient, 429 slows the number,
/// any other 4xx fails the job. A 2xx that is not a clean acceptance is ambiguous.
pub fn classify(status: u16, code: Option<i64>) -> Class {
    if let Some(class) = code.and_then(class_of_code) {
        return class;
    }
    match status {
        200..=299 => Class::Unknown,
        429 => Class::SlowNumber,
        400..=499 => Class::Fail,
        _ => Class::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_code_has_its_design_class() {
        let table: &[(Class, &[i64])] = &[
            (Class::Retry, &[1, 2, 131000, 131016, 131053]),
            (Class::SlowNumber, &[4, 80007, 130429, 131057]),
            (Class::SlowRecipient, &[131056]),
            (Class::PauseNumber, &[SPAM_HOLD]),
            (
                Class::Halt,
                &[
                    0, 3, 10, 190, 200, 250, 299, 368, 131005, 131031, 131042, 131045, 133010,
                ],
            ),
            (
                Class::Fail,
                &[
                    100, 131008, 131009, 131021, 131026, 131047, 131049, 131050, 131051, 132000,
                    132007, 132016, 135000,
                ],
            ),
        ];
        for (class, codes) in table {
            for code in *codes {
                assert_eq!(class_of_code(*code), Some(*class), "code {code}");
                // The same code under any HTTP status keeps its class.
                for status in [400, 401, 403, 429, 500, 503] {
                    assert_eq!(
                        classify(status, Some(*code)),
                        *class,
                        "{code} under {status}"
                    );
                }
            }
        }
        for unlisted in [5, 300, 131001, 131052, 132017, 999999] {
            assert_eq!(class_of_code(unlisted), None, "{unlisted}");
        }
    }

    #[test]
    fn unlisted_codes_fall_back_to_the_status() {
        assert_eq!(classify(400, Some(999)), Class::Fail);
        assert_eq!(classify(404, None), Class::Fail);
        assert_eq!(classify(429, Some(999)), Class::SlowNumber);
        assert_eq!(classify(500, Some(999)), Class::Retry);
        assert_eq!(classify(503, None), Class::Retry);
        assert_eq!(classify(200, None), Class::Unknown);
    }
}
