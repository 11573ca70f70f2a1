//! Usage limits as the CLIs report them: a subscription's window spent (Claude's five-hour and
//! weekly limits, Codex's), a quota exhausted (Gemini), premium requests used up (Copilot).
//! What each says is matched here, once, with the reset time when the message gives one.

use plugin_api::Timestamp;

/// A usage limit a CLI reported.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitHit {
    /// What it said, one line.
    pub said: String,
    /// When it said the limit resets, if it did.
    pub resets_at: Option<Timestamp>,
}

/// How long a limit is taken to last when the CLI does not say: the role's workers look again
/// then, and a limit still in force is met again without spending an attempt.
pub const UNKNOWN_RESET: std::time::Duration = std::time::Duration::from_secs(3600);

/// What the CLIs say when the account, not the task, is out (lower case).
const SIGNS: [&str; 10] = [
    "usage limit",
    "usage_limit_reached",
    "hit your limit",
    "limit reached|",
    "quota exceeded",
    "exceeded your current quota",
    "resource_exhausted",
    "exhausted your",
    "premium request",
    "out of extra usage",
];

/// Whether `text` (an error a CLI printed) says the account's usage limit or quota is spent,
/// with when it resets where the text says: an epoch (`resets_at`, `resetsAt`, Claude's
/// `limit reached|EPOCH`), seconds to go (`resets_in_seconds`), or words ("try again in 2 days
/// 3 hours", "retry in 39.5s", "reset after 1h2m").
pub fn usage_limit_in(text: &str, now: Timestamp) -> Option<LimitHit> {
    let lower = text.to_lowercase();
    SIGNS.iter().find(|sign| lower.contains(*sign))?;
    let epoch = ["resets_at\":", "resetsat\":", "limit reached|"]
        .iter()
        .find_map(|key| number_after(&lower, key))
        .and_then(|secs| Timestamp::from_second(secs as i64).ok());
    let in_seconds = number_after(&lower, "resets_in_seconds\":")
        .or_else(|| {
            ["try again in", "retry in", "reset after", "resets in"]
                .iter()
                .find_map(|key| {
                    lower
                        .find(key)
                        .and_then(|at| words_to_secs(&lower[at + key.len()..]))
                })
        })
        .and_then(|secs| {
            now.checked_add(std::time::Duration::from_secs_f64(secs))
                .ok()
        });
    // The line that says it, not whatever the CLI printed first.
    let said = text
        .lines()
        .find(|l| SIGNS.iter().any(|sign| l.to_lowercase().contains(sign)))
        .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or(text);
    Some(LimitHit {
        said: said.trim().chars().take(300).collect(),
        resets_at: epoch
            .or(in_seconds)
            .or_else(|| clock_time_after(&lower, "try again at ", now)),
    })
}

/// The local clock time after `key`, as Codex gives its reset: "5:42 pm" (today, or
/// tomorrow once past) or "dec 8th, 2026 5:42 pm", in the system's time zone, which is the
/// CLI's too.
fn clock_time_after(lower: &str, key: &str, now: Timestamp) -> Option<Timestamp> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let mut words = lower[lower.find(key)? + key.len()..].split_whitespace();
    let tz = jiff::tz::TimeZone::system();
    let mut word = words.next()?;
    let date = match MONTHS.iter().position(|m| word.starts_with(m)) {
        Some(month) => {
            let digits = |word: &str| {
                word.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .to_string()
            };
            let day: i8 = digits(words.next()?).parse().ok()?;
            let year: i16 = digits(words.next()?).parse().ok()?;
            word = words.next()?;
            Some(jiff::civil::Date::new(year, month as i8 + 1, day).ok()?)
        }
        None => None,
    };
    let (hour, minute) = word.split_once(':')?;
    let (hour, minute): (i8, i8) = (hour.parse().ok()?, minute.parse().ok()?);
    // "am." ends a sentence, "am.\",\"codex_error_info\"..." one quoted in JSON.
    let meridiem: String = words
        .next()?
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    let hour = match meridiem.as_str() {
        "am" => hour % 12,
        "pm" => hour % 12 + 12,
        _ => return None,
    };
    let today = now.to_zoned(tz.clone()).date();
    let at = date
        .unwrap_or(today)
        .at(hour, minute, 0, 0)
        .to_zoned(tz)
        .ok()?
        .timestamp();
    match date {
        None if at < now => at.checked_add(jiff::SignedDuration::from_hours(24)).ok(),
        _ => Some(at),
    }
}

/// The number right after `key` in `text` (spaces allowed between).
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = text[text.find(key)? + key.len()..].trim_start();
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().ok()
}

/// "2 days 17 hours 14 minutes", "39.5s", "1h2m3s" as seconds; `None` when no amount with a
/// unit comes first.
fn words_to_secs(text: &str) -> Option<f64> {
    let mut rest = text.trim_start();
    let mut total = 0.0;
    let mut found = false;
    loop {
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let Ok(amount) = number.parse::<f64>() else {
            break;
        };
        let after = rest[number.len()..].trim_start();
        let unit: String = after
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        let scale = match unit.as_str() {
            "d" | "day" | "days" => 86_400.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "ms" => 0.001,
            _ => break,
        };
        total += amount * scale;
        found = true;
        rest = after[unit.len()..].trim_start_matches([' ', ',']);
        rest = rest.strip_prefix("and ").unwrap_or(rest);
    }
    found.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn resets(text: &str) -> Option<i64> {
        usage_limit_in(text, now())
            .expect("a limit")
            .resets_at
            .map(|at| at.as_second() - now().as_second())
    }

    #[test]
    fn each_clis_limit_message_is_recognised_with_its_reset() {
        // Claude Code's legacy result text, and its current one (no time in it).
        assert_eq!(
            resets("Claude AI usage limit reached|1800003600"),
            Some(3600)
        );
        assert_eq!(
            resets("You've hit your limit · resets 2pm (Europe/Paris)"),
            None
        );
        // Codex, in words and as the API's JSON.
        assert_eq!(
            resets(
                "You've hit your usage limit. Upgrade to Pro or try again in 2 days 17 hours 14 minutes."
            ),
            Some(2 * 86_400 + 17 * 3600 + 14 * 60)
        );
        assert_eq!(
            resets(r#"{"error":{"type":"usage_limit_reached","resets_in_seconds":13872}}"#),
            Some(13_872)
        );
        assert_eq!(
            resets(
                r#"{"type":"usage_limit_reached","resets_at":1800000600,"resets_in_seconds":9}"#
            ),
            Some(600)
        );
        // Codex 0.171 gives a local clock time, today's or with its date.
        let local = |text: &str| {
            let at = usage_limit_in(text, now())
                .expect("a limit")
                .resets_at
                .unwrap();
            at.to_zoned(jiff::tz::TimeZone::system()).datetime()
        };
        let today = now().to_zoned(jiff::tz::TimeZone::system());
        let at = local("You’ve hit your usage limit. Upgrade to Pro or try again at 5:42 PM.");
        assert_eq!((at.hour(), at.minute()), (17, 42));
        assert!(at.date() == today.date() || at.date() == today.date().tomorrow().unwrap());
        assert_eq!(
            local("You’ve hit your usage limit. Try again at Dec 8th, 2026 12:05 AM."),
            jiff::civil::date(2026, 12, 8).at(0, 5, 0, 0)
        );
        // As codex-acp passes it on: quoted in its error's JSON.
        assert_eq!(
            local(
                r#"Internal error ({"message":"You've hit your usage limit. Try again at Dec 8th, 2026 12:36 AM.","codex_error_info":"usage_limit_exceeded"})"#
            ),
            jiff::civil::date(2026, 12, 8).at(0, 36, 0, 0)
        );
        // Gemini.
        assert_eq!(
            resets("RESOURCE_EXHAUSTED: Quota exceeded for metric. Please retry in 39.5s."),
            Some(39)
        );
        assert_eq!(
            resets("You have exhausted your daily quota; reset after 3h2m1s"),
            Some(10_921)
        );
        // Copilot.
        assert_eq!(
            resets("You have exceeded your premium request allowance."),
            None
        );
    }

    #[test]
    fn other_failures_are_not_limits() {
        for text in [
            "error: test failed: assertion `left == right`",
            "API key not valid. Please pass a valid API key.",
            "rate limited, retrying in 2s",
        ] {
            assert_eq!(usage_limit_in(text, now()), None, "{text}");
        }
    }
}
